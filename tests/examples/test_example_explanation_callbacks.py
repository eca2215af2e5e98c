"""The explanation-callbacks example runs end to end in its smoke mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_explanation_callbacks_example_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "explanation_callbacks.py"),
            "--smoke",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log_dir = tmp_path / "lightning_logs" / "version_0"
    assert (log_dir / "saliency" / "epoch=0.png").stat().st_size > 1000
    assert (log_dir / "saliency_ig" / "epoch=0.png").stat().st_size > 1000
    assert "epoch 0: deletion" in result.stdout
