import json
import subprocess
import sys

import pytest
from PIL import Image

from lightning_xai.cli import main
from lightning_xai.demo import DemoConfig


def test_help_lists_the_demo(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "lightning_xai.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--out" in result.stdout and "--quick" in result.stdout


def test_demo_quick_writes_overlays_and_metrics(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--no-progress", "--out", str(out), "--num-overlays", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert 0.0 <= metrics["gradcam_pointing_game"] <= 1.0
    assert metrics["num_test_images"] == DemoConfig.quick().test_size
    assert metrics["config"]["num_overlays"] == 3
    image = Image.open(out / "overlays.png")
    assert image.size[0] > 200 and image.size[1] > 100
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # a picture, not a blank canvas
    assert "wrote" in capsys.readouterr().out


def test_demo_rejects_bad_settings(tmp_path):
    with pytest.raises(SystemExit):
        main(["demo", "--quick", "--epochs", "0", "--out", str(tmp_path)])
