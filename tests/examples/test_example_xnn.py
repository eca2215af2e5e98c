"""The XNN concepts example runs end to end in its smoke mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_xnn_concepts_example_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "xnn_concepts.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    png = tmp_path / "xnn_concepts.png"
    assert png.exists() and png.stat().st_size > 1000
    assert "faithfulness R²" in result.stdout and "attempt 0" in result.stdout
