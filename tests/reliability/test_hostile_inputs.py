"""Hostile and careless inputs: a crafted checkpoint runs no code (case 1), and degenerate explanations do not
pass as real ones (case 5). The other cases of the same review stand beside this file: image files, symbolic links
and concurrent `explain` runs (2-4) in test_hostile_files.py, XNN dtypes and MHEX backbones (6) in
test_hostile_xnn.py, sample indices without an `index` key (7) in tests/callbacks/test_consistency_indices.py, and
callbacks that refuse before training (8) in tests/callbacks/test_callback_setup_checks.py."""

from __future__ import annotations

import ast
import json
import os
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import lightning_xai
from lightning_xai.attr import IGOS, StructuredAttentionGraph
from lightning_xai.attr.registry import explain_batch
from lightning_xai.cli import main
from lightning_xai.explain import UninformativeExplanationWarning
from lightning_xai.heads import load_mhex_checkpoint
from lightning_xai.metrics import DeletionAUC, InsertionAUC
from lightning_xai.metrics.functional import deletion_auc, insertion_auc
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


# -- 5. degenerate explanations are named, never passed off as real ones -----------------------------------------


class IgnoresItsInput(nn.Module):
    """A classifier whose logits do not depend on the image (its layers still run)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_resnet(4, width=4)
        self.bias = nn.Parameter(torch.tensor([0.1, 0.5, 0.2, 0.0]))

    def forward(self, x):
        return self.net(x) * 0 + self.bias


FAST_ARGS = {
    "igos": {"mask_size": 4, "n_iterations": 2},
    "igos++": {"mask_size": 4, "n_iterations": 2},
    "sag": {"grid_size": 4},
}
IMAGE_METHODS = ["gradcam", "integrated_gradients", "saliency", "igos", "igos++", "advise", "sag"]


def _uninformative(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, UninformativeExplanationWarning)]


# Saliency and Integrated Gradients of an all-zero image are not degenerate (the gradient differs by pixel).
CASES = [(m, "model ignores its input") for m in IMAGE_METHODS]
CASES += [(m, "all-zero input") for m in IMAGE_METHODS if m not in ("integrated_gradients", "saliency")]


@pytest.mark.parametrize(("method", "case"), CASES)
def test_every_method_names_the_images_it_cannot_explain(method, case):
    torch.manual_seed(0)
    if case == "model ignores its input":
        model, x = IgnoresItsInput().eval(), torch.rand(2, 3, 32, 32)
    else:
        model, x = small_resnet(4, width=4).eval(), torch.zeros(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explain_batch(model, x, torch.tensor([1, 1]), method, attribute_args=FAST_ARGS.get(method, {}))
    messages = _uninformative(caught)
    assert len(messages) == 1, messages
    assert "image(s) [0, 1]" in messages[0] and "2 of 2" in messages[0]


def test_sag_does_not_search_an_image_whose_baseline_is_already_sufficient():
    torch.manual_seed(0)
    model, x = IgnoresItsInput().eval(), torch.rand(2, 3, 32, 32)
    sag = StructuredAttentionGraph(model)
    with pytest.warns(UninformativeExplanationWarning, match=r"image\(s\) \[0, 1\]"):
        results = sag.explain(x, grid_size=4)
    assert all(r.roots == [] and r.stats["uninformative"] and r.stats["depth"] == 0 for r in results)
    with pytest.warns(UninformativeExplanationWarning):
        maps = sag.attribute(x, grid_size=4)
    assert maps.abs().max() == 0  # no "root" of background patches is shown as an explanation


def test_an_informative_batch_gives_no_warning():
    torch.manual_seed(0)
    model, x = small_resnet(4, width=4).eval(), torch.rand(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explain_batch(model, x, torch.tensor([1, 1]), "saliency")
        explain_batch(model, x, torch.tensor([1, 1]), "igos", attribute_args=FAST_ARGS["igos"])
    assert _uninformative(caught) == []


def test_deletion_and_insertion_skip_constant_maps():
    torch.manual_seed(0)
    model, x = small_resnet(4, width=4).eval(), torch.rand(3, 3, 16, 16)
    maps = torch.rand(3, 16, 16)
    maps[1] = 0.0  # the all-zero map of a degenerate explanation
    for metric_class, functional in ((DeletionAUC, deletion_auc), (InsertionAUC, insertion_auc)):
        metric = metric_class(model, resolution=4, return_curves=True)
        metric.update(x, maps, target=0)
        scored = metric_class(model, resolution=4)
        scored.update(x[[0, 2]], maps[[0, 2]], target=0)
        assert int(metric.n_skipped) == 1 and int(metric.count) == 2
        assert metric.compute()["auc"] == scored.compute() and metric.compute()["curves"].shape[0] == 2
        with pytest.warns(UserWarning, match=r"1 of 3 maps are constant \(rows \[1\]\)"):
            per_sample = functional(model, x, maps, 0, resolution=4, reduction="none")
        assert per_sample[1].isnan() and not per_sample[[0, 2]].isnan().any()
        only_constant = metric_class(model, resolution=4)
        only_constant.update(x[:1], torch.zeros(1, 16, 16), target=0)
        with pytest.warns(UserWarning, match="all 1 rows were skipped"):
            assert only_constant.compute().isnan()


def test_an_igos_mask_finer_than_the_image_is_an_error():
    model = small_resnet(4, width=4).eval()
    with pytest.raises(ValueError, match=r"`mask_size` \(28, 28\) is finer than the 8×8 inputs"):
        IGOS(model).attribute(torch.rand(1, 3, 8, 8), target=0)


def test_explain_records_constant_maps_as_unscored_and_names_their_files(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("black0.png", "black1.png"):  # an all-zero image: Grad-CAM of it is a constant map
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(images / name)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / "noise.png")
    args = ["explain", "--model", "small_resnet", "--images", str(images), "--image_size", "24"]
    with pytest.warns(UninformativeExplanationWarning):
        main([*args, "--out", str(tmp_path / "out"), "--trainer.accelerator", "cpu"])
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())  # strict JSON: no NaN
    scores = {r["name"]: r["scores"] for r in summary["samples"]}
    assert scores["black0.png"] == scores["black1.png"] == {"deletion": None, "insertion": None}
    assert summary["n_skipped"] == {"deletion": 2, "insertion": 2}
    assert summary["means"]["deletion"] == pytest.approx(scores["noise.png"]["deletion"])
    assert "2 explanation(s) are constant maps" in capsys.readouterr().err
