"""Image files and folders that fight back (issue 32): every PIL mode decoded by its own range or refused by
name, symbolic links that loop, break or lead outside the folder, and two `lightning-xai explain` runs on one
output folder at the same time (a lock, unique temporary names, a killed holder taken over)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_xai.callbacks.folder_lock import FolderLock
from lightning_xai.callbacks.writer import ExplanationWriter, atomic_write
from lightning_xai.cli import main
from lightning_xai.data import ImageFolderDataset
from lightning_xai.data.folder import UnsupportedImageError, pil_to_rgb

ARGS = ["explain", "--model", "small_resnet", "--image_size", "24", "--batch_size", "4"]
ARGS += ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--metrics", "[deletion]"]


def _png(path: Path, seed: int = 0, size: tuple[int, int] = (12, 12)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _decoded(image: Image.Image, fmt: str | None, tmp_path: Path) -> np.ndarray:
    """``image`` as ImageFolderDataset gives it (H, W, 3), after a round trip through a ``fmt`` file; in memory
    (pil_to_rgb) for the modes no file format stores."""
    if fmt is None:
        return pil_to_rgb(image)
    root = tmp_path / "mode"
    root.mkdir()
    path = root / f"image.{fmt.lower()}"
    image.save(path, format=fmt)
    with Image.open(path) as reopened:
        assert reopened.mode == image.mode, "the file must come back in the mode under test"
    item = ImageFolderDataset(root, image_size=None)[0]
    return item["image"].permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------------------- pixel modes


def test_a_16_bit_ramp_keeps_its_mean(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (16, 1))
    Image.fromarray(ramp).save(root / "ramp16.png")
    with Image.open(root / "ramp16.png") as image:
        assert image.mode in (
            "I;16",
            "I",
        )  # 16-bit grey, as PIL decodes it (convert("RGB") clips it to white)
    expected = ramp.mean() / 65535
    for size in (None, 24):
        image = ImageFolderDataset(root, image_size=size)[0]["image"]
        assert image.shape[0] == 3 and float(image.mean()) == pytest.approx(expected, rel=0.01)
        assert float(image.max()) <= 1.0 and float((image > 0.98).float().mean()) < 0.05


GREY = np.array([[0, 51, 102], [153, 204, 255]], np.uint8)
COLOUR = np.array(
    [[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[10, 20, 30], [200, 100, 50], [255, 255, 255]]], np.uint8
)
ALPHA = np.array([[0, 128, 255], [255, 1, 77]], np.uint8)  # dropped: the colour is kept as stored
PALETTE = [255, 0, 0, 0, 128, 255, 12, 34, 56] + [0] * (253 * 3)


def _palette(mode: str) -> Image.Image:
    image = Image.fromarray(np.array([[0, 1, 2], [2, 1, 0]], np.uint8), mode="L").convert("P")
    image.putpalette(PALETTE)
    image = image.convert("P")  # not re-quantised: indices and palette as given
    if mode == "PA":
        image = image.convert("PA")
        image.putalpha(Image.fromarray(ALPHA))
    return image


def _grey(values: np.ndarray, scale: float) -> np.ndarray:
    return np.repeat(values[:, :, None].astype(np.float32) / scale, 3, axis=2)


PALETTE_RGB = np.array(PALETTE[:9], np.float32).reshape(3, 3)[np.array([[0, 1, 2], [2, 1, 0]])] / 255
CASES = {
    # mode: (build the image, file format or None (in memory), expected (H, W, 3), tolerance)
    "1": (lambda: Image.fromarray(GREY > 100), "PNG", _grey((GREY > 100).astype(np.uint8), 1), 0),
    "L": (lambda: Image.fromarray(GREY, mode="L"), "PNG", _grey(GREY, 255), 0),
    "LA": (lambda: Image.fromarray(np.dstack([GREY, ALPHA]), mode="LA"), "PNG", _grey(GREY, 255), 0),
    "P": (lambda: _palette("P"), "PNG", PALETTE_RGB, 0),
    "PA": (lambda: _palette("PA"), "TIFF", PALETTE_RGB, 0),
    "RGB": (lambda: Image.fromarray(COLOUR, mode="RGB"), "PNG", COLOUR / 255, 0),
    "RGBA": (lambda: Image.fromarray(np.dstack([COLOUR, ALPHA]), mode="RGBA"), "PNG", COLOUR / 255, 0),
    "RGBX": (lambda: Image.fromarray(np.dstack([COLOUR, ALPHA]), mode="RGBX"), None, COLOUR / 255, 0),
    # pure inks, white and black: where every CMYK -> RGB formula agrees
    "CMYK": (
        lambda: Image.fromarray(
            np.array(
                [
                    [[255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 255, 0]],
                    [[0, 0, 0, 0], [0, 0, 0, 255], [255, 255, 255, 0]],
                ],
                np.uint8,
            ),
            mode="CMYK",
        ),
        "TIFF",
        np.array([[[0, 1, 1], [1, 0, 1], [1, 1, 0]], [[1, 1, 1], [0, 0, 0], [0, 0, 0]]], np.float32),
        0,
    ),
    "YCbCr": (
        lambda: Image.fromarray(
            np.dstack([GREY, np.full_like(GREY, 128), np.full_like(GREY, 128)]), mode="YCbCr"
        ),
        "TIFF",
        _grey(GREY, 255),
        1.5 / 255,
    ),
    "LAB": (  # lightness 0 and 100 with a = b = 0: black and white
        lambda: Image.fromarray(np.array([[[0, 0, 0], [255, 0, 0]]], np.uint8), mode="LAB"),
        "TIFF",
        np.array([[[0, 0, 0], [1, 1, 1]]], np.float32),
        2 / 255,
    ),
    "HSV": (
        lambda: Image.fromarray(
            np.array([[[0, 255, 255], [85, 255, 255], [0, 0, 200]]], np.uint8), mode="HSV"
        ),
        None,
        np.array([[[1, 0, 0], [0, 1, 0], [200 / 255, 200 / 255, 200 / 255]]], np.float32),
        1 / 255,
    ),
    "La": (  # premultiplied: grey 100 at alpha 128 is grey 199 once un-premultiplied
        lambda: Image.frombytes("La", (1, 1), bytes([100, 128])),
        None,
        np.full((1, 1, 3), 199 / 255, np.float32),
        1 / 255,
    ),
    "RGBa": (
        lambda: Image.frombytes("RGBa", (1, 1), bytes([100, 50, 20, 128])),
        None,
        np.array([[[199, 99, 39]]], np.float32) / 255,
        1 / 255,
    ),
}
RAMP16 = np.array([[0, 1000, 32768], [40000, 65534, 65535]], np.uint16)
for _mode, _fmt in (("I;16", "PNG"), ("I;16B", "TIFF"), ("I;16L", None), ("I;16N", None)):
    CASES[_mode] = (
        lambda m=_mode: Image.frombytes(m, (3, 2), RAMP16.astype(">u2" if m == "I;16B" else "<u2").tobytes()),
        _fmt,
        _grey(RAMP16, 65535),
        1e-6,
    )
CASES["I"] = (lambda: Image.fromarray(RAMP16.astype(np.int32), mode="I"), "TIFF", _grey(RAMP16, 65535), 1e-6)
FLOATS = np.array([[0.0, 0.25, 0.5], [0.75, 0.999, 1.0]], np.float32)
CASES["F"] = (lambda: Image.fromarray(FLOATS, mode="F"), "TIFF", _grey(FLOATS, 1), 0)


@pytest.mark.parametrize("mode", sorted(CASES))
def test_each_mode_round_trips_to_the_right_values(mode, tmp_path):
    build, fmt, expected, tolerance = CASES[mode]
    image = build()
    assert image.mode == mode
    values = _decoded(image, fmt, tmp_path)
    assert values.dtype == np.float32 and values.shape == (*image.size[::-1], 3)
    np.testing.assert_allclose(values, expected, atol=tolerance + 1e-7)


def test_every_pil_mode_is_decoded_or_refused_by_name():
    for mode in Image.MODES:  # whatever this Pillow has: never an unchecked conversion
        image = Image.new(mode, (2, 2))
        try:
            values = pil_to_rgb(image)
        except UnsupportedImageError as error:
            assert mode in str(error)
        else:
            assert values.shape == (2, 2, 3) and 0 <= values.min() <= values.max() <= 1


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("negative.tif", lambda: Image.fromarray(np.array([[-5, 10]], np.int32), mode="I"), "0..65535"),
        ("big.tif", lambda: Image.fromarray(np.array([[0, 70000]], np.int32), mode="I"), "from 0 to 70000"),
        ("f255.tif", lambda: Image.fromarray(np.array([[0, 255.0]], np.float32), mode="F"), "[0, 1]"),
        ("fnan.tif", lambda: Image.fromarray(np.array([[0, np.nan]], np.float32), mode="F"), "NaN"),
    ],
)
def test_values_without_a_known_range_are_skipped_by_name(tmp_path, name, make, message):
    root = tmp_path / "images"
    root.mkdir()
    make().save(root / name)
    _png(root / "ok.png")
    dataset = ImageFolderDataset(root, image_size=8)
    assert [dataset[i]["name"] for i in range(len(dataset))] == ["ok.png"]
    assert [u[0] for u in dataset.unreadable] == [name] and message in dataset.unreadable[0][1]


# ----------------------------------------------------------------------------------------- symbolic links


def _reasons(dataset: ImageFolderDataset) -> dict[str, str]:
    return dict(dataset.unreadable)


def _names(dataset: ImageFolderDataset) -> list[str]:
    return [dataset[i]["name"] for i in range(len(dataset))]


def test_looping_and_broken_links_are_reported(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    _png(root / "real.png")
    os.symlink("self.png", root / "self.png")  # a link to itself
    os.symlink("b.png", root / "a.png")
    os.symlink("a.png", root / "b.png")  # a -> b -> a
    os.symlink("gone.png", root / "broken.png")
    os.symlink("no_folder", root / "broken_folder")
    dataset = ImageFolderDataset(root, image_size=8)
    assert _names(dataset) == ["real.png"]
    reasons = _reasons(dataset)
    assert sorted(reasons) == ["a.png", "b.png", "broken.png", "broken_folder", "self.png"]
    assert all("loop" in reasons[n] for n in ("a.png", "b.png", "self.png"))
    assert "broken symbolic link" in reasons["broken.png"] and "'gone.png'" in reasons["broken.png"]


def test_links_outside_the_folder_are_read_only_when_asked(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "elsewhere"
    root.mkdir()
    (outside / "deep").mkdir(parents=True)
    _png(root / "mine.png")
    _png(outside / "secret.png", 1)
    _png(outside / "deep" / "far.png", 2)
    os.symlink(outside / "secret.png", root / "secret.png")
    os.symlink(outside / "deep", root / "deep_link")
    os.symlink(outside, outside / "deep" / "back_up")  # a folder-link cycle outside the folder

    dataset = ImageFolderDataset(root, image_size=8)
    assert _names(dataset) == ["mine.png"]
    reasons = _reasons(dataset)
    assert sorted(reasons) == ["deep_link", "secret.png"]
    assert all("outside the image folder" in r and "follow_links" in r for r in reasons.values())

    followed = ImageFolderDataset(root, image_size=8, follow_links=True)
    names = _names(followed)
    # deep_link/back_up leads to `elsewhere`, whose secret.png is the link secret.png's file: read once
    assert names == ["deep_link/far.png", "mine.png", "secret.png"]
    reasons = _reasons(followed)
    assert "already read" in reasons["deep_link/back_up/deep"]
    assert "the same file as 'secret.png'" in reasons["deep_link/back_up/secret.png"]
    assert followed[2]["image"].shape == (3, 8, 8)
    with pytest.raises(TypeError, match="`follow_links` must be True or False, got 'yes'"):
        ImageFolderDataset(root, follow_links="yes")


def test_links_inside_the_folder_count_each_file_once(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    _png(root / "sub" / "cat.png")
    _png(root / "dog.png", 1)
    os.symlink("sub/cat.png", root / "alias.png")  # a second name for a file inside
    os.symlink("..", root / "sub" / "up")  # a folder-link cycle: rglob-style walks never end or count twice
    os.symlink("sub", root / "sub_again")
    dataset = ImageFolderDataset(root, image_size=8)
    assert _names(dataset) == ["dog.png", "sub/cat.png"]
    reasons = _reasons(dataset)
    assert sorted(reasons) == ["alias.png", "sub/up", "sub_again"]
    assert "same file as 'sub/cat.png'" in reasons["alias.png"]
    assert "inside the image folder: not followed" in reasons["sub/up"] and "'sub'" in reasons["sub_again"]


def test_explain_follows_links_only_with_the_flag(tmp_path, capsys):
    root, outside = tmp_path / "images", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    _png(root / "mine.png")
    _png(outside / "theirs.png", 1)
    os.symlink(outside / "theirs.png", root / "theirs.png")
    out = tmp_path / "out"
    assert main([*ARGS, "--images", str(root), "--out", str(out)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert [r["name"] for r in summary["samples"]] == ["mine.png"]
    (unreadable,) = summary["unreadable"]
    assert unreadable["name"] == "theirs.png" and "--follow_links true" in unreadable["reason"]
    assert "skipped theirs.png: symbolic link" in capsys.readouterr().err

    assert main([*ARGS, "--images", str(root), "--out", str(out), "--follow_links", "true"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert [r["name"] for r in summary["samples"]] == [
        "mine.png",
        "theirs.png",
    ] and "unreadable" not in summary
    assert "1 explained now, 1 already done" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*ARGS, "--images", str(root), "--out", str(out), "--follow_links", "maybe"])
    assert "follow_links" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- one output folder


def _dead_pid() -> int:
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(process.stdout)


def test_temporary_names_are_unique_and_only_those_of_dead_processes_are_cleared(tmp_path):
    names = []
    for _ in range(2):
        atomic_write(
            tmp_path / "a.json", lambda handle: names.append(Path(handle.name).name) or handle.write(b"{}")
        )
    assert names[0] != names[1] and all(".tmp-" in n and f"-{os.getpid()}-" in n for n in names)
    this_host = names[0][len("a.json") :].rsplit("-", 2)[0]  # .tmp-<host>
    out = tmp_path / "out"
    writer = ExplanationWriter(out)
    writer.prepare()  # the folder's run.json: its temporaries are this writer's concern
    (out / "records").mkdir()
    live = out / "records" / f"x.json{this_host}-{os.getpid()}-0123abcd"
    dead = out / "records" / f"y.json{this_host}-{_dead_pid()}-0123abcd"
    other_host = out / "records" / f"z.json.tmp-elsewhere.example-{_dead_pid()}-0123abcd"
    legacy = out / "maps" / "w.npy.tmp0"
    legacy.parent.mkdir()
    for path in (live, dead, other_host, legacy):
        path.write_bytes(b"partial")
    writer.setup(None, None, "predict")
    assert live.exists() and other_host.exists()  # a running process's, and one this host cannot check
    assert not dead.exists() and not legacy.exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    pid = _dead_pid()
    left = {
        "pid": pid,
        "host": socket.gethostname(),
        "started": "2020-01-01T00:00:00+00:00",
        "command": "x y",
    }
    (folder / "explain.lock").write_text(json.dumps(left))
    with FolderLock(folder, command="mine") as lock:
        err = capsys.readouterr().err
        assert "taking over" in err and f"pid {pid} on host" in err and "no longer running" in err
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert (folder / "explain.lock").read_text() == ""  # released cleanly: nothing to take over next time
    with FolderLock(folder):
        assert "taking over" not in capsys.readouterr().err


def test_wait_gives_up_after_its_timeout_and_bad_values_are_refused(tmp_path, capsys):
    root = tmp_path / "images"
    root.mkdir()
    _png(root / "a.png")
    out = tmp_path / "out"
    base = [*ARGS, "--images", str(root), "--out", str(out)]
    with FolderLock(out, command="lightning-xai explain --the-holder"):
        with pytest.raises(SystemExit):
            main(base)
        err = capsys.readouterr().err
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in err and "--the-holder" in err
        assert "in use by another run" in err and "--wait true" in err
        started = time.monotonic()
        with pytest.raises(SystemExit):
            main([*base, "--wait", "true", "--wait_timeout", "0.5"])
        assert time.monotonic() - started < 60
        err = capsys.readouterr().err
        assert "waiting for the run" in err and "waited 0.5 s" in err
    for bad, message in [
        (["--wait", "true", "--wait_timeout", "-1"], "--wait_timeout takes a positive number"),
        (["--wait_timeout", "5"], "with --wait true"),
        (["--wait", "maybe"], "wait"),
    ]:
        with pytest.raises(SystemExit):
            main([*base, *bad])
        assert message in capsys.readouterr().err
    assert not (out / "metrics.json").exists()
    with pytest.raises(ValueError, match="`timeout` must be a positive number"):
        FolderLock(out).acquire(timeout=0)


# A real `lightning-xai explain` process that, once it holds the folder, waits for the test's go before it
# writes its first batch: the test decides when it ends (or kills it) instead of racing a timer.
GATED = """
import pathlib, sys, time
from lightning_xai.callbacks.writer import ExplanationWriter
gate, write = pathlib.Path(sys.argv[1]), ExplanationWriter.write_on_batch_end
def gated(self, *args, **kwargs):
    while not gate.exists():
        time.sleep(0.05)
    return write(self, *args, **kwargs)
ExplanationWriter.write_on_batch_end = gated
from lightning_xai.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _start_gated(gate: Path, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", GATED, str(gate), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until(condition, process: subprocess.Popen, what: str, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {process.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def _holds(lock: Path, pid: int) -> bool:
    try:
        return json.loads(lock.read_text())["pid"] == pid
    except (OSError, ValueError, KeyError):
        return False


def _command(images: Path, out: Path) -> list[str]:
    return [*ARGS, "--images", str(images), "--out", str(out)]


def _holding_run(tmp_path: Path, count: int, gate: Path) -> tuple[Path, Path, subprocess.Popen]:
    """A folder of ``count`` images, and a gated run on it that holds its output folder."""
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    for i in range(count):
        _png(images / f"img{i}.png", i, (24, 24))
    run = _start_gated(gate, _command(images, out))
    _wait_until(lambda: _holds(out / "explain.lock", run.pid), run, "the first run holds the folder")
    return images, out, run


def _check_each_once(out: Path, count: int) -> None:
    summary = json.loads((out / "metrics.json").read_text())
    assert sorted(r["name"] for r in summary["samples"]) == [f"img{i}.png" for i in range(count)]
    written = (out / "manifest-rank0.txt").read_text().split()
    assert sorted(map(int, written)) == list(range(count))  # over every run: each file exactly once
    assert len(list((out / "records").glob("*.json"))) == count and not list(out.rglob("*.tmp*"))


@pytest.mark.timeout(600)
def test_a_second_run_on_the_folder_refuses_or_waits(tmp_path, capsys):
    gate = tmp_path / "go"
    images, out, first = _holding_run(tmp_path, 6, gate)

    try:  # this test's process is the second run
        main(_command(images, out))
    except SystemExit:
        err = capsys.readouterr().err
    else:
        ended = first.poll() is not None
        pytest.fail(f"not refused; the first run {'ended: ' + first.communicate()[1] if ended else 'runs'}")
    assert f"is in use by another run: pid {first.pid} on host {socket.gethostname()}, started 20" in err
    assert "command: lightning-xai explain --model small_resnet" in err and f"--out {out}" in err
    assert first.poll() is None and not (out / "metrics.json").exists()

    waiting_err = tmp_path / "waiting.err"
    with waiting_err.open("w") as err:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "lightning_xai.cli", *_command(images, out), "--wait", "true"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        _wait_until(lambda: "waiting for the run" in waiting_err.read_text(), waiting, "the second run waits")
        assert f"pid {first.pid}" in waiting_err.read_text() and first.poll() is None
        gate.touch()
        first_out, first_err = first.communicate(timeout=300)
        waiting_out = waiting.communicate(timeout=300)[0]
    assert first.returncode == 0, first_err[-3000:]
    assert waiting.returncode == 0, waiting_err.read_text()[-3000:]
    assert "6 explained now, 0 already done" in first_out
    assert "0 explained now, 6 already done" in waiting_out  # not "6 explained now" twice
    _check_each_once(out, 6)


@pytest.mark.timeout(600)
def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, capsys):
    images, out, killed = _holding_run(tmp_path, 3, tmp_path / "never")
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert main(_command(images, out)) == 0  # this test's process is the next run
    captured = capsys.readouterr()
    assert "taking over" in captured.err and f"pid {killed.pid} on host" in captured.err
    assert "no longer running" in captured.err and "3 explained now" in captured.out
    _check_each_once(out, 3)
    assert (out / "explain.lock").read_text() == ""
