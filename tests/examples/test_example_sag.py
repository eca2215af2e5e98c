"""The structured attention graph example runs end to end in its smoke mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_structured_attention_graph_example_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "structured_attention_graph.py"),
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
    pngs = sorted(tmp_path.glob("sag_*.png"))
    assert len(pngs) == 4 and all(p.stat().st_size > 1000 for p in pngs)
    assert result.stdout.count("graph nodes") == 4
    assert "wrote 4 graphs" in result.stdout
