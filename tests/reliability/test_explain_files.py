"""`lightning-xai explain` on a messy folder: every bad file is reported by name and skipped, the good ones are
explained; a run killed with SIGKILL and rerun explains each image exactly once and leaves only complete files."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lightning_xai.cli import main
from lightning_xai.data import ImageFolderDataset

ARGS = ["--model", "small_resnet", "--image_size", "24", "--trainer.accelerator", "cpu"]
ARGS += ["--trainer.enable_progress_bar", "false", "--metrics", "[deletion]"]


def _messy_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 18, 3), dtype=np.uint8)).save(root / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(root / "grey.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8), mode="RGBA").save(root / "rgba.png")
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(root / "one_pixel.png")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    (root / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("not an image\n")
    return root


def test_bad_files_are_reported_by_name_and_skipped(tmp_path, capsys):
    images = _messy_folder(tmp_path / "images")
    dataset = ImageFolderDataset(images, image_size=24)
    assert sorted(name for name, _ in dataset.unreadable) == ["empty.jpg", "text.png", "truncated.png"]
    assert len(dataset) == 4 and all(dataset[i]["image"].shape == (3, 24, 24) for i in range(4))

    out = tmp_path / "out"
    assert main(["explain", *ARGS, "--images", str(images), "--out", str(out)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert sorted(r["name"] for r in summary["samples"]) == [
        "grey.png",
        "one_pixel.png",
        "rgb.png",
        "rgba.png",
    ]
    assert sorted(u["name"] for u in summary["unreadable"]) == ["empty.jpg", "text.png", "truncated.png"]
    assert all(u["reason"] for u in summary["unreadable"])
    err = capsys.readouterr().err
    assert all(f"skipped {name}" in err for name in ("empty.jpg", "text.png", "truncated.png"))


def test_a_folder_of_only_bad_files_is_a_clear_error(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.png").write_text("nope")
    try:
        ImageFolderDataset(root)
    except ValueError as error:
        assert "a.png" in str(error) and "none of the 1 image files" in str(error)
    else:  # pragma: no cover - the assertion above is the test
        raise AssertionError("expected a ValueError")


def test_a_killed_run_resumes_and_writes_each_image_once(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(images / f"img{i:02d}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lightning_xai.cli", "explain", *ARGS, "--images", str(images)]
    command += ["--out", str(out), "--batch_size", "1", "--method", "igos"]
    command += ["--attribute_args", '{"mask_size": 4, "n_iterations": 3, "n_steps": 2}']
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = out / "records"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(records.glob("*.json"))) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed_at = len(list(records.glob("*.json")))
    assert 0 < killed_at < 12, "the run must be killed part-way"

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=500)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads((out / "metrics.json").read_text())
    names = [r["name"] for r in summary["samples"]]
    assert sorted(names) == [f"img{i:02d}.png" for i in range(12)]  # each image exactly once
    for path in records.glob("*.json"):
        json.loads(path.read_text())
    for path in (out / "maps").glob("*.npy"):
        assert np.load(path).shape == (24, 24)
    for path in (out / "heatmaps").glob("*.png"):
        Image.open(path).load()
    assert not list(out.rglob("*.tmp*"))  # a file being written when the run was killed is cleared
