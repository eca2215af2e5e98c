"""Importing the library leaves the user's matplotlib backend alone (a library must not switch it)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_viz_modules_keeps_the_chosen_backend():
    code = (
        "import matplotlib; matplotlib.use('svg'); "
        "import lightning_xai, lightning_xai.viz, lightning_xai.viz.sag, lightning_xai.viz.concepts, "
        "lightning_xai.demo; print(matplotlib.get_backend())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().lower() == "svg"
