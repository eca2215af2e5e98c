"""Shared test fixtures: small thread counts for a 2-core machine, a CPU DDP launcher, and an example runner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

torch.set_num_threads(min(2, torch.get_num_threads()))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes; return each rank's result.

    ``fn`` runs in forked processes (a module-level function, so that a test also reads well).
    """
    with tempfile.TemporaryDirectory() as out_dir:
        # forked workers inherit the imported modules (spawned ones re-import torch, Lightning and the package:
        # seconds per test); each worker runs one thread, so no OpenMP pool crosses the fork
        mp.start_processes(
            _worker,
            args=(world_size, _free_port(), fn, args, out_dir),
            nprocs=world_size,
            join=True,
            start_method="fork",
        )
        return [
            torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)
        ]


@pytest.fixture
def ddp() -> Callable[..., list[Any]]:
    """``ddp(fn, *args, world_size=2)`` runs ``fn(rank, world_size, *args)`` under a CPU gloo process group."""
    return run_distributed


# ------------------------------------------------------------------------------------------------ examples

ROOT = Path(__file__).resolve().parents[1]


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
