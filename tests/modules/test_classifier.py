"""ImageClassifier: checkpoints rebuild the network they were saved from."""

from __future__ import annotations

import lightning as L
import torch

from lightning_xai.modules import ImageClassifier


def _save(module: ImageClassifier, path) -> None:
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)


def test_checkpoint_rebuilds_a_model_given_by_name(tmp_path):
    module = ImageClassifier("resnet18", num_classes=3)
    _save(module, tmp_path / "m.ckpt")
    reloaded = ImageClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    assert reloaded.hparams.model == "resnet18" and reloaded.model.default_cfg["architecture"] == "resnet18"
    for name, value in module.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[name])


def test_a_model_given_as_a_module_is_not_saved_in_the_hyper_parameters():
    module = ImageClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3)), num_classes=3)
    assert "model" not in module.hparams
