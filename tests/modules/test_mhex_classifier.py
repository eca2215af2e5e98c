"""MHEXClassifier: the deep-supervision loss, logs, explanations for images and tokens, checkpoints."""

from __future__ import annotations

import lightning as L
import pytest
import timm
import torch
import torch.nn.functional as F

from lightning_xai.callbacks import LossTap
from lightning_xai.data import ShapesDataModule, TokensDataModule
from lightning_xai.modules.mhex import MHEXClassifier

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def trainer(**kwargs) -> L.Trainer:
    settings = {
        "max_epochs": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return L.Trainer(**{**settings, **kwargs})


def test_loss_is_cross_entropy_plus_weighted_head_losses():
    torch.manual_seed(0)
    module = MHEXClassifier("resnet18", num_classes=4, lambdas=[0.1, 0.2, 0.3, 0.4])
    with torch.no_grad():
        for p in module.heads.parameters():
            p.add_(0.05)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([3, 2, 1, 0])
    module.eval()
    loss = module.training_step((x, y), 0)
    logits = module(x)
    heads = module.mhex.head_logits
    expected = F.cross_entropy(logits, y) + sum(
        lam * F.cross_entropy(z, y) for lam, z in zip([0.1, 0.2, 0.3, 0.4], heads.values(), strict=True)
    )
    assert torch.allclose(loss, expected, atol=1e-6)


def test_sample_weights_from_a_callback_reach_the_whole_loss():
    module = MHEXClassifier("resnet18", num_classes=4)
    owner = object()
    tap = LossTap.acquire(module, owner)
    tap.open_batch(owner)
    tap.set_sample_weights(owner, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    module.eval()  # batch statistics would differ between the two forwards
    loss = module.training_step((x, y), 0)
    logits = module(x)
    heads = module.mhex.head_logits
    first = F.cross_entropy(logits[:1], y[:1]) + 0.3 * sum(
        F.cross_entropy(z[:1], y[:1]) for z in heads.values()
    )
    assert torch.allclose(loss, first / 4, atol=1e-5)
    tap.release(owner)


def test_fit_logs_heads_and_checkpoint_reloads_identically(tmp_path):
    data = ShapesDataModule(batch_size=4, image_size=32, train_size=8, val_size=4, test_size=4)
    module = MHEXClassifier("resnet18", num_classes=4, gate_rank=8)
    fit = trainer(default_root_dir=tmp_path, limit_val_batches=1)
    fit.fit(module, data)
    metrics = fit.callback_metrics
    assert {"train_loss", "train_head_layer4_loss", "train_head_layer1_acc", "val_head_layer2_acc"} <= set(
        metrics
    )
    path = tmp_path / "mhex.ckpt"
    fit.save_checkpoint(path)
    x = torch.rand(2, 3, 32, 32)
    module.eval()
    loaded = MHEXClassifier.load_from_checkpoint(path).eval()
    assert torch.equal(loaded(x), module(x))
    assert torch.equal(loaded.explain(x), module.explain(x))
    assert all(torch.equal(loaded.mhex.head_logits[k], v) for k, v in module.mhex.head_logits.items())


def test_checkpoint_of_a_module_model_needs_the_model_again(tmp_path):
    torch.manual_seed(0)
    module = MHEXClassifier(timm.create_model("resnet18", pretrained=False, num_classes=3), stages=[-2, -1])
    assert "model" not in module.hparams
    path = tmp_path / "m.ckpt"
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    torch.save(checkpoint, path)
    fresh = timm.create_model("resnet18", pretrained=False, num_classes=3)
    loaded = MHEXClassifier.load_from_checkpoint(path, model=fresh).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), module.eval()(x))


def test_explain_images_and_tokens():
    module = MHEXClassifier("resnet18", num_classes=4).eval()
    maps = module.explain(torch.rand(3, 3, 32, 32), target=[0, 1, 2])
    assert maps.shape == (3, 1, 32, 32) and bool((maps >= 0).all()) and bool((maps <= 1).all())

    from transformers import BertConfig, BertForSequenceClassification

    data = TokensDataModule(batch_size=4, seq_len=16, train_size=8, val_size=4, test_size=4)
    config = BertConfig(
        vocab_size=data.vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=4,
        max_position_embeddings=32,
    )
    text = MHEXClassifier(BertForSequenceClassification(config), special_token_ids=[0, 1, 2, 3])
    trainer(max_steps=1, limit_val_batches=0, enable_checkpointing=False).fit(text, data)
    batch = next(iter(data.test_dataloader()))
    text.eval()
    scores = text.explain(batch["input_ids"], None, batch["attention_mask"], token_smoothing_sigma=1.0)
    assert scores.shape == (4, 16)
    special = (batch["input_ids"] <= 3) | (batch["attention_mask"] == 0)
    assert torch.equal(scores[special], torch.zeros(int(special.sum())))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        MHEXClassifier(timm.create_model("resnet18", pretrained=False, num_classes=3), num_classes=4)
    with pytest.raises(ValueError, match="lr"):
        MHEXClassifier("resnet18", lr=0)
    with pytest.raises(ValueError, match="lambdas"):
        MHEXClassifier("resnet18", lambdas=[0.3, -1.0, 0.3, 0.3])
    with pytest.raises(ValueError, match="layer_weights"):
        MHEXClassifier("resnet18", layer_weights=[1.0, 2.0])
    with pytest.raises(TypeError, match="model"):
        MHEXClassifier(3)
