"""`lightning-xai explain` resumes by file identity and run settings, never by position, and writes every file
through a temporary name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_xai.cli import main

ARGS = ["explain", "--model", "small_resnet", "--image_size", "24", "--batch_size", "4"]
ARGS += ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--metrics", "[deletion]"]


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)


def _folder(root: Path, count: int = 6) -> Path:
    root.mkdir()
    for i in range(count):
        _image(root / f"img{i:02d}.png", i)
    return root


def _explain(images: Path, out: Path, *extra: str) -> dict:
    assert main([*ARGS, "--images", str(images), "--out", str(out), *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def _records(out: Path) -> dict[str, dict]:
    return {r["name"]: r for r in (json.loads(p.read_text()) for p in (out / "records").glob("*.json"))}


def _check_complete(out: Path, names: list[str], method: str) -> None:
    summary = json.loads((out / "metrics.json").read_text())
    assert [r["name"] for r in summary["samples"]] == sorted(names)  # each file once
    assert summary["method"] == method and summary["num_samples"] == len(names)
    records = _records(out)
    assert sorted(records) == sorted(names) and {r["method"] for r in records.values()} == {method}
    for record in records.values():
        assert np.load(out / record["map"]).shape == (24, 24)
        Image.open(out / record["heatmap"]).load()
    assert not list(out.rglob("*.tmp*"))


def test_a_file_added_before_the_others_is_explained(tmp_path, capsys):
    images, out = _folder(tmp_path / "images"), tmp_path / "out"
    first = _explain(images, out)
    before = {name: r["scores"] for name, r in _records(out).items()}
    _image(images / "aaa_new.png", 99)  # sorts first: every index moves by one
    capsys.readouterr()
    second = _explain(images, out)
    assert "1 explained now, 6 already done" in capsys.readouterr().out
    names = ["aaa_new.png"] + [f"img{i:02d}.png" for i in range(6)]
    _check_complete(out, names, "gradcam")
    after = {r["name"]: r for r in second["samples"]}
    assert all(after[name]["scores"] == scores for name, scores in before.items())  # kept, not redone
    assert len(first["samples"]) == 6 and len(list((out / "maps").iterdir())) == 7


def test_other_settings_are_refused_and_overwrite_replaces(tmp_path, capsys):
    images, out = _folder(tmp_path / "images"), tmp_path / "out"
    _explain(images, out)
    sag = ["--method", "saliency"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*ARGS, "--images", str(images), "--out", str(out), *sag])
    err = capsys.readouterr().err
    assert "different settings" in err and '"gradcam" there, "saliency" now' in err
    assert "new output folder" in err and "--overwrite" in err
    _check_complete(out, [f"img{i:02d}.png" for i in range(6)], "gradcam")  # untouched
    with pytest.raises(SystemExit):  # any other setting too, e.g. the image size
        main([*ARGS, "--images", str(images), "--out", str(out), "--image_size", "32"])
    assert "image_size" in capsys.readouterr().err

    _explain(images, out, *sag, "--overwrite", "true")
    assert "6 explained now, 0 already done" in capsys.readouterr().out
    _check_complete(out, [f"img{i:02d}.png" for i in range(6)], "saliency")
    _explain(images, out, *sag)  # the folder now belongs to the new settings: a plain rerun resumes
    assert "0 explained now, 6 already done" in capsys.readouterr().out


def test_a_changed_file_is_explained_again(tmp_path, capsys):
    images, out = _folder(tmp_path / "images", 3), tmp_path / "out"
    _explain(images, out)
    old = _records(out)["img01.png"]
    _image(images / "img01.png", 1234)  # same name, new content
    capsys.readouterr()
    _explain(images, out)
    assert "1 explained now, 2 already done" in capsys.readouterr().out
    new = _records(out)["img01.png"]
    assert new["identity"]["sha256"] != old["identity"]["sha256"] and new["map"] == old["map"]
    _check_complete(out, [f"img{i:02d}.png" for i in range(3)], "gradcam")


def test_a_failing_map_write_leaves_no_partial_file_and_a_rerun_completes(tmp_path, monkeypatch):
    images, out = _folder(tmp_path / "images"), tmp_path / "out"
    real_save, calls = np.save, []

    def failing_save(handle, values, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # as if the process died half-way through the third map
            handle.write(b"\x93NUMPY partial")
            raise OSError("disk full")
        return real_save(handle, values, *args, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        main([*ARGS, "--images", str(images), "--out", str(out)])
    monkeypatch.setattr(np, "save", real_save)
    assert not list(out.rglob("*.tmp*"))
    maps = list((out / "maps").glob("*.npy"))
    assert len(maps) == 2 and all(np.load(p).shape == (24, 24) for p in maps)  # only complete maps
    assert len(list((out / "records").glob("*.json"))) == 2  # and a record only for those
    _explain(images, out)
    _check_complete(out, [f"img{i:02d}.png" for i in range(6)], "gradcam")
