"""Checkpoints of modules trained with MultiHeadExplainer load into fresh modules, resume, and explain."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from lightning_xai.callbacks import MultiHeadExplainer
from lightning_xai.cli import main
from lightning_xai.data import ShapesDataModule
from lightning_xai.heads import find_mhex, load_mhex_checkpoint
from lightning_xai.modules import ImageClassifier

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

STAGES = ["layer1", "layer2", "layer3", "layer4"]


def classifier(seed: int) -> ImageClassifier:
    torch.manual_seed(seed)
    return ImageClassifier("resnet18", num_classes=4)


def trainer(**kwargs) -> L.Trainer:
    settings = dict(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    settings.update(enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    return L.Trainer(**{**settings, **kwargs})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A module trained two steps with the callback, its checkpoint, an input and the expected outputs."""
    data = ShapesDataModule(batch_size=4, image_size=32, train_size=8, val_size=4, test_size=4, seed=0)
    module = classifier(0)
    run = trainer(callbacks=[MultiHeadExplainer(gate_rank=8)])
    run.fit(module, data)
    path = tmp_path_factory.mktemp("mhex") / "mhex.ckpt"
    run.save_checkpoint(path)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    module.eval()
    with torch.no_grad():
        expected = module(x)
    heads = {k: v.clone() for k, v in find_mhex(module.model).head_logits.items()}
    return {"path": path, "data": data, "x": x, "expected": expected, "heads": heads}


def _same_outputs(module, trained) -> None:
    module.eval()
    with torch.no_grad():
        assert torch.equal(module(trained["x"]), trained["expected"])
    logits = find_mhex(module.model).head_logits
    assert all(torch.equal(logits[k], v) for k, v in trained["heads"].items())


def test_the_checkpoint_records_the_heads(trained):
    entry = torch.load(trained["path"], weights_only=True)["mhex"]
    assert entry["model_path"] == "model" and entry["stages"] == STAGES
    assert entry["options"]["gate_rank"] == 8 and entry["options"]["num_classes"] == 4


def test_load_into_a_fresh_module_or_class(trained):
    module = load_mhex_checkpoint(ImageClassifier, trained["path"])
    assert sorted(module.model.mhex_heads.branches) == STAGES
    _same_outputs(module, trained)
    fresh = load_mhex_checkpoint(classifier(5), trained["path"])
    _same_outputs(fresh, trained)


def test_resume_with_ckpt_path_and_the_load_hook(trained):
    resumed, callback = classifier(1), MultiHeadExplainer(gate_rank=8)
    trainer(callbacks=[callback]).fit(resumed, trained["data"], ckpt_path=trained["path"])
    _same_outputs(resumed, trained)
    # the hook alone (no setup before it) attaches the recorded heads before the weights load
    bare, hook = classifier(2), MultiHeadExplainer(gate_rank=8)
    checkpoint = torch.load(trained["path"], weights_only=True)
    hook.on_load_checkpoint(None, bare, checkpoint)
    assert hook.heads is find_mhex(bare.model)
    bare.load_state_dict(checkpoint["state_dict"])
    _same_outputs(bare, trained)


def test_explain_a_mhex_checkpoint(trained, tmp_path):
    out = tmp_path / "out"
    args = ["explain", "--checkpoint", str(trained["path"]), "--num_samples", "3", "--image_size", "32"]
    args += ["--out", str(out), "--metrics", "[deletion]", "--trainer.accelerator", "cpu"]
    assert main([*args, "--trainer.enable_progress_bar", "false"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["num_samples"] == 3 and summary["method"] == "gradcam"


def test_an_old_checkpoint_without_the_record_says_what_to_do(trained, tmp_path, capsys):
    checkpoint = torch.load(trained["path"], weights_only=True)
    del checkpoint["mhex"]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    with pytest.raises(RuntimeError, match=r"does not record how they were made.*\.attach\(module\)"):
        load_mhex_checkpoint(ImageClassifier, old)
    with pytest.raises(SystemExit):
        main(["explain", "--checkpoint", str(old), "--num_samples", "2", "--out", str(tmp_path / "o")])
    assert "MultiHeadExplainer(<the same arguments>).attach(module)" in capsys.readouterr().err
