"""Hostile and careless inputs: a crafted checkpoint runs no code, and degenerate explanations do not pass as
real ones."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import lightning as L
import pytest
import torch

import lightning_xai
from lightning_xai.cli import main
from lightning_xai.heads import load_mhex_checkpoint
from lightning_xai.models import UnsafeCheckpointError, safe_load, small_resnet
from lightning_xai.modules import ComprehensiveAttribution, ImageClassifier

PACKAGE = Path(lightning_xai.__file__).parent


# -- 1. a checkpoint never runs code ------------------------------------------------------------------------------


class _WritesAFile:
    """Unpickling this creates the marker file: what a crafted checkpoint would do with any callable."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    module = ImageClassifier("small_resnet", num_classes=4)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(module)
    path = tmp_path_factory.mktemp("ckpt") / "plain.ckpt"
    trainer.save_checkpoint(path)
    return path


def _crafted(checkpoint: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The plain checkpoint with a payload in its hyperparameters, and the marker the payload would create."""
    marker = tmp_path / "marker"
    content = safe_load(checkpoint)
    content["hyper_parameters"]["model"] = _WritesAFile(marker)
    path = tmp_path / "crafted.ckpt"
    torch.save(content, path)
    return path, marker


def test_a_plain_checkpoint_still_loads(checkpoint):
    module = load_mhex_checkpoint(ImageClassifier, checkpoint)
    assert module.hparams.model == "small_resnet"


def test_a_crafted_checkpoint_runs_nothing_through_the_loader(checkpoint, tmp_path):
    path, marker = _crafted(checkpoint, tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="not allowed in a weights-only load") as raised:
        load_mhex_checkpoint(ImageClassifier, path)
    assert not marker.exists()
    # the refused object is named, and nothing suggests the unsafe form
    assert "open" in str(raised.value) and "weights_only=False" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_a_crafted_checkpoint_runs_nothing_through_explain(checkpoint, tmp_path, capsys):
    path, marker = _crafted(checkpoint, tmp_path)
    argv = ["explain", "--checkpoint", str(path), "--num_samples", "2", "--image_size", "16"]
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path / "out"), "--trainer.accelerator", "cpu"])
    err = capsys.readouterr().err
    assert not marker.exists()
    assert "not allowed in a weights-only load" in err and "weights_only=False" not in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_crafted_weights_file_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "selector.pt"
    torch.save({"weight": _WritesAFile(marker)}, path)
    with pytest.raises(UnsafeCheckpointError):
        ComprehensiveAttribution(
            predictor=small_resnet(4, width=4), use_detector=False, selector_weights=str(path)
        )
    assert not marker.exists()


def test_the_lightning_cli_reads_ckpt_path_weights_only(monkeypatch, capsys):
    """`lightning-xai test --ckpt_path` hands `--weights_only=true` to LightningCLI unless the command says
    otherwise, and Lightning's subcommands take that flag."""
    import lightning.pytorch.cli as lightning_cli

    seen = []
    monkeypatch.setattr(lightning_cli, "LightningCLI", lambda **kwargs: seen.append(kwargs["args"]))
    main(["test", "--config", "c.yaml", "--ckpt_path", "last"])
    main(["fit", "--config", "c.yaml", "--weights_only", "false"])
    assert seen == [
        ["test", "--config", "c.yaml", "--ckpt_path", "last", "--weights_only=true"],
        ["fit", "--config", "c.yaml", "--weights_only", "false"],
    ]
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        main(["test", "--help"])
    assert "--weights_only" in capsys.readouterr().out


def test_no_unsafe_load_anywhere_in_the_package():
    """Every `torch.load` call in the package says `weights_only=True` (through `safe_load`), and no source text
    recommends the unsafe form."""
    calls = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load":
                owner = node.func.value
                if isinstance(owner, ast.Name) and owner.id == "torch":
                    keywords = {k.arg: k.value for k in node.keywords}
                    safe = (
                        isinstance(keywords.get("weights_only"), ast.Constant)
                        and keywords["weights_only"].value is True
                    )
                    calls.append((os.path.relpath(path, PACKAGE), safe))
    assert calls == [("models/safe_load.py", True)]
