"""Run an example script in its smoke mode, in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, out: Path, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--smoke", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture
def run_example() -> Callable[..., subprocess.CompletedProcess]:
    """``run_example("script.py", out_dir, *extra_args)``: run ``examples/script.py --smoke --out out_dir``,
    fail with its stderr when it fails, and return the completed process (``.stdout`` to check)."""
    return _run
