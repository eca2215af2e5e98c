"""The consistency-reweighting example runs end to end in its smoke mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_consistency_reweighting_example_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "consistency_reweighting.py"),
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
    assert "bias-conflicting accuracy" in result.stdout and "1 refresh(es)" in result.stdout
    rows = (tmp_path / "ece_weights.csv").read_text().splitlines()
    assert rows[0] == "index,label,inconsistency,weight" and len(rows) == 17
    weights = [float(row.split(",")[3]) for row in rows[1:]]
    assert all(0.1 - 1e-6 <= w <= 5.0 + 1e-6 for w in weights)
