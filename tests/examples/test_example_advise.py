"""The ADVISE example runs end to end in its smoke mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_advise_example_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "advise.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    png = tmp_path / "advise_overlay.png"
    assert png.exists() and png.stat().st_size > 1000
    for line in ("chosen g=", "ADVISE    AVX", "Grad-CAM  AVX"):
        assert line in result.stdout
