"""The `lightning-xai` command: LightningCLI fit from YAML with our callbacks, and `explain` (folders, synthetic
data, checkpoints, 2 processes, resume)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_xai.cli import main
from lightning_xai.modules import ImageClassifier

FIT_YAML = """
seed_everything: 0
model:
  class_path: lightning_xai.modules.ImageClassifier
  init_args: {{model: small_resnet, num_classes: 4, lr: 0.003}}
data:
  class_path: lightning_xai.data.ShapesDataModule
  init_args: {{batch_size: 8, image_size: 24, train_size: 16, val_size: 8, test_size: 8}}
trainer:
  max_epochs: 1
  accelerator: cpu
  default_root_dir: {root}
  enable_progress_bar: false
  enable_model_summary: false
  num_sanity_val_steps: 0
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {root}}}
  callbacks:
    - class_path: lightning_xai.callbacks.SaliencyMapLogger
      init_args: {{num_samples: 4}}
    - class_path: lightning_xai.callbacks.ExplanationMetrics
      init_args:
        metrics: [deletion, pointing_game]
        method: captum.attr.Saliency
"""


def test_fit_from_yaml_with_our_callbacks(tmp_path):
    config = tmp_path / "fit.yaml"
    config.write_text(FIT_YAML.format(root=tmp_path))
    assert main(["fit", "--config", str(config)]) == 0
    log_dir = tmp_path / "lightning_logs" / "version_0"
    assert (log_dir / "saliency" / "epoch=0.png").exists()
    header = (log_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"xai/deletion", "xai/pointing_game", "val_acc"} <= set(header)
    checkpoint = next((log_dir / "checkpoints").glob("*.ckpt"))
    # the model name travels with the checkpoint, so the module rebuilds the same network
    reloaded = ImageClassifier.load_from_checkpoint(checkpoint)
    assert reloaded.hparams.model == "small_resnet" and reloaded.hparams.lr == 0.003


def _png_folder(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    for i in range(count):
        folder = root if i % 2 else root / "sub"
        Image.fromarray(rng.integers(0, 255, (20 + i, 18, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return root


def _explain(out: Path, *extra: str) -> dict:
    args = [
        "explain",
        "--model",
        "small_resnet",
        "--image_size",
        "24",
        "--batch_size",
        "3",
        "--out",
        str(out),
    ]
    assert (
        main([*args, "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", *extra]) == 0
    )
    return json.loads((out / "metrics.json").read_text())


def test_explain_a_folder_of_pngs(tmp_path):
    images = _png_folder(tmp_path / "images", 5)
    summary = _explain(tmp_path / "out", "--images", str(images), "--method", "integrated_gradients",
                       "--attribute_args", '{"n_steps": 4}')  # fmt: skip
    assert summary["num_samples"] == 5 and summary["method"] == "integrated_gradients"
    names = sorted(r["name"] for r in summary["samples"])
    assert names == sorted(["sub/img0.png", "img1.png", "sub/img2.png", "img3.png", "sub/img4.png"])
    assert summary["accuracy"] is None  # a folder has no labels
    assert set(summary["means"]) == {"deletion", "insertion"}
    for record in summary["samples"]:
        assert 0 <= record["scores"]["deletion"] <= 1
        heatmap = np.asarray(Image.open(tmp_path / "out" / record["heatmap"]))
        assert heatmap.shape == (24, 24, 3) and heatmap.std() > 1
        assert np.load(tmp_path / "out" / record["map"]).shape == (24, 24)


def test_explain_resumes_without_redoing_finished_samples(tmp_path):
    out = tmp_path / "out"
    first = _explain(out, "--num_samples", "7")
    assert (out / "manifest-rank0.txt").read_text().split() == [str(i) for i in range(7)]
    for index in (2, 5):  # as if the run had stopped before these two were written
        (out / "records" / f"{index:06d}.json").unlink()
    second = _explain(out, "--num_samples", "7")
    assert (out / "manifest-rank0.txt").read_text().split()[7:] == ["2", "5"]
    assert second["num_samples"] == 7
    assert second["means"] == pytest.approx(first["means"], abs=1e-6)


def test_explain_a_checkpoint_and_clear_errors(tmp_path, capsys):
    torch.manual_seed(0)
    module = ImageClassifier("small_resnet", num_classes=4)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    args = ["explain", "--checkpoint", str(tmp_path / "m.ckpt"), "--num_samples", "3", "--image_size", "24"]
    summary_args = [
        *args,
        "--out",
        str(tmp_path / "out"),
        "--trainer.accelerator",
        "cpu",
        "--target",
        "label",
    ]
    assert main(summary_args) == 0
    records = json.loads((tmp_path / "out" / "metrics.json").read_text())["samples"]
    assert [r["target"] for r in records] == [r["label"] for r in records]
    for bad, message in (
        (["explain", "--out", str(tmp_path / "x")], "exactly one of --checkpoint and --model"),
        (["explain", "--model", "small_resnet", "--method", "nope"], "unknown attribution method"),
        (["explain", "--model", "small_resnet", "--images", str(tmp_path / "none")], "does not exist"),
    ):
        with pytest.raises(SystemExit):
            main(bad)
        assert message in capsys.readouterr().err


@pytest.mark.timeout(600)
def test_explain_on_two_processes_writes_each_sample_once(tmp_path):
    """2 CPU processes (gloo): every sample written exactly once, and the same files as one process."""
    base = [
        sys.executable,
        "-m",
        "lightning_xai.cli",
        "explain",
        "--model",
        "small_resnet",
        "--num_samples",
        "9",
    ]
    base += [
        "--image_size",
        "24",
        "--batch_size",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--metrics",
        "[deletion]",
    ]
    base += ["--trainer.enable_progress_bar", "false"]
    one, two = tmp_path / "one", tmp_path / "two"
    # the one-process run goes alongside the two-process one (their start-up is most of the time)
    single = subprocess.Popen(
        [*base, "--out", str(one)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    result = subprocess.run(
        [*base, "--out", str(two), "--trainer.devices", "2", "--trainer.strategy", "ddp"],
        capture_output=True,
        text=True,
        timeout=500,
    )
    single_stderr = single.communicate(timeout=500)[1]
    assert single.returncode == 0, single_stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    written = [int(i) for r in (0, 1) for i in (two / f"manifest-rank{r}.txt").read_text().split()]
    assert sorted(written) == list(range(9))  # no sample twice, none missing
    assert (two / "manifest-rank1.txt").read_text().split()  # the second process did its share
    for folder in ("heatmaps", "maps", "records"):
        assert sorted(p.name for p in (one / folder).iterdir()) == sorted(
            p.name for p in (two / folder).iterdir()
        )
    for path in (one / "maps").iterdir():
        np.testing.assert_allclose(np.load(path), np.load(two / "maps" / path.name), atol=1e-5)
    summary_one = json.loads((one / "metrics.json").read_text())
    summary_two = json.loads((two / "metrics.json").read_text())
    assert summary_two["num_samples"] == 9
    assert summary_two["means"] == pytest.approx(summary_one["means"], abs=1e-5)
