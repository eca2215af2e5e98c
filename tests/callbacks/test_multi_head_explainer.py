"""MultiHeadExplainer on unmodified modules: injection in setup, the deep-supervision loss, logs, resume, errors."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from lightning_xai.callbacks import MultiHeadExplainer, find_loss_tap
from lightning_xai.data import ShapesDataModule, TokensDataModule
from lightning_xai.heads import find_mhex
from lightning_xai.modules import ImageClassifier
from lightning_xai.modules.mhex import MHEXClassifier

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def shapes(**kwargs) -> ShapesDataModule:
    settings = {"batch_size": 4, "image_size": 32, "train_size": 16, "val_size": 8, "test_size": 8, "seed": 0}
    return ShapesDataModule(**{**settings, **kwargs})


def trainer(**kwargs) -> L.Trainer:
    settings = {
        "max_steps": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1,
    }
    return L.Trainer(**{**settings, **kwargs})


def classifier(seed: int = 0) -> ImageClassifier:
    torch.manual_seed(seed)
    return ImageClassifier("resnet18", num_classes=4)


class RecordOptimizer(L.Callback):
    def on_fit_start(self, trainer, pl_module):
        params = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
        heads = find_mhex(pl_module.model)
        self.heads_in_optimizer = heads is not None and all(id(p) in params for p in heads.parameters())
        self.before = {n: p.detach().clone() for n, p in heads.named_parameters()}


def test_callback_trains_heads_of_an_unmodified_image_classifier():
    module = classifier()
    criterion = module.criterion
    callback, record = MultiHeadExplainer(), RecordOptimizer()
    fit = trainer(callbacks=[callback, record], max_steps=-1, max_epochs=1)
    fit.fit(module, shapes(train_size=8))
    assert record.heads_in_optimizer  # injected in setup, before configure_optimizers
    heads = find_mhex(module.model)
    changed = [n for n, p in heads.named_parameters() if not torch.equal(p, record.before[n])]
    assert any(n.endswith("gate.bias") for n in changed) and any("classifier.weight" in n for n in changed)
    metrics = fit.callback_metrics
    for key in ("layer1", "layer2", "layer3", "layer4"):
        assert f"train_head_{key}_loss" in metrics and f"train_head_{key}_acc" in metrics
        assert f"val_head_{key}_acc" in metrics
    # the criterion is the user's again, and the heads stay with the trained model
    assert module.criterion is criterion and not criterion._forward_hooks and find_loss_tap(module) is None
    assert heads is callback.heads and module.model.mhex_heads is heads


def test_callback_loss_equals_mhex_classifier_and_hand_computed():
    torch.manual_seed(0)
    network = timm.create_model("resnet18", pretrained=False, num_classes=4)
    module = ImageClassifier(copy.deepcopy(network), num_classes=4)
    callback = MultiHeadExplainer()
    callback.setup(None, module, "fit")
    reference = MHEXClassifier(copy.deepcopy(network))
    reference.heads.load_state_dict(callback.heads.state_dict())
    with torch.no_grad():
        for p in [*callback.heads.parameters(), *reference.heads.parameters()]:
            p.add_(0.05)  # away from the identity, identically in both
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 3])
    callback.on_train_batch_start(None, module, (x, y), 0)
    loss = module.criterion(module(x), y)
    heads = callback.heads.head_logits
    callback.on_train_batch_end(None, module, None, (x, y), 0)
    expected = F.cross_entropy(module(x), y) + 0.3 * sum(F.cross_entropy(z, y) for z in heads.values())
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(loss, reference.training_step((x, y), 0), atol=1e-6)
    callback.teardown(None, module, "fit")


def test_callback_guards_the_forward_the_loss_belongs_to():
    module = classifier()
    callback = MultiHeadExplainer(stages=[-1])
    callback.setup(None, module, "fit")
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    callback.on_train_batch_start(None, module, (x, y), 0)
    with pytest.raises(RuntimeError, match="without a forward"):
        module.criterion(torch.randn(4, 4), y)
    early = module(x)
    module(x[:2])
    with pytest.raises(RuntimeError, match="earlier forward"):
        module.criterion(early, y)
    with pytest.raises(RuntimeError, match="batch size"):
        module.criterion(torch.randn(4, 4), y)
    logits = module(x)
    module.criterion(logits, y)
    with pytest.warns(UserWarning, match="called twice"):
        module.criterion(logits, y)
    callback.on_train_batch_end(None, module, None, (x, y), 0)
    callback.teardown(None, module, "fit")


def test_clear_errors_for_unreachable_loss_or_model():
    class NoLoss(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = timm.create_model("resnet18", pretrained=False, num_classes=4)

    with pytest.raises(
        AttributeError, match=r"no attribute `nope`.*self\.criterion = nn\.CrossEntropyLoss\(\)"
    ):
        MultiHeadExplainer(loss_attr="nope").setup(None, NoLoss(), "fit")

    class NoModel(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
            self.criterion = nn.CrossEntropyLoss()

    with pytest.raises(AttributeError, match="model_attr"):
        MultiHeadExplainer().setup(None, NoModel(), "fit")

    class OwnLoss(ImageClassifier):
        def training_step(self, batch, batch_idx):
            logits = self(batch["image"])
            return F.cross_entropy(logits, batch["label"])

    own = OwnLoss("resnet18")
    criterion = own.criterion
    with pytest.raises(RuntimeError, match="without calling the tapped loss"):
        trainer(max_steps=1, callbacks=[MultiHeadExplainer()]).fit(own, shapes())
    # a failed fit gives the user's loss back, untapped (Lightning calls no teardown after an exception)
    assert own.criterion is criterion and not criterion._forward_hooks
    with pytest.raises(ValueError, match="lambdas"):
        MultiHeadExplainer(lambdas=0.0)
    with pytest.raises(ValueError, match="already has MHEX heads"):
        MultiHeadExplainer().setup(None, MHEXClassifier("resnet18"), "fit")


def test_resume_from_checkpoint_gives_identical_outputs(tmp_path):
    data = shapes()
    module = classifier(0)
    first = trainer(callbacks=[MultiHeadExplainer(lambdas=[0.1, 0.2, 0.3, 0.4])])
    first.fit(module, data)
    path = tmp_path / "mhex.ckpt"
    first.save_checkpoint(path)
    x = torch.rand(3, 3, 32, 32)
    module.eval()
    expected = module(x)
    expected_heads = {k: v.clone() for k, v in find_mhex(module.model).head_logits.items()}

    resumed = classifier(1)
    callback = MultiHeadExplainer(lambdas=[0.1, 0.2, 0.3, 0.4])
    trainer(callbacks=[callback]).fit(
        resumed, data, ckpt_path=path
    )  # max_steps already reached: restore only
    resumed.eval()
    assert torch.equal(resumed(x), expected)
    assert all(torch.equal(callback.heads.head_logits[k], v) for k, v in expected_heads.items())

    # outside a Trainer: attach the heads, then load the weights
    bare = classifier(2)
    MultiHeadExplainer().attach(bare)
    bare.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    assert torch.equal(bare.eval()(x), expected)


def test_state_dict_round_trip_and_mismatch_warning():
    callback = MultiHeadExplainer(gate_rank=8)
    callback.attach(classifier())
    state = callback.state_dict()
    assert state["config"]["stages"] == ["layer1", "layer2", "layer3", "layer4"]
    same = MultiHeadExplainer(gate_rank=8)
    same.attach(classifier())
    same.load_state_dict(state)
    other = MultiHeadExplainer(gate_rank=16)
    with pytest.warns(UserWarning, match="gate_rank"):
        other.load_state_dict(state)


class TextModule(L.LightningModule):
    """A plain text classifier: HF model in `self.model`, loss in `self.criterion`."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=4,
            max_position_embeddings=32,
        )
        self.model = BertForSequenceClassification(config)
        self.criterion = nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return self.criterion(out.logits, batch["label"])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_callback_on_a_plain_hugging_face_module():
    data = TokensDataModule(batch_size=4, seq_len=16, train_size=8, val_size=4, test_size=4)
    module = TextModule(data.vocab_size)
    callback = MultiHeadExplainer(special_token_ids=[0, 1, 2, 3])
    fit = trainer(callbacks=[callback], limit_val_batches=0)
    fit.fit(module, data)
    assert callback.handle.stage_names == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert "train_head_bert_encoder_layer_1_loss" in fit.callback_metrics
    assert callback.heads.pool_mask is not None  # the attention mask reached the token pooling
