"""Distributed helpers of the XNN (no-ops in one process)."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor, nn


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(tensor: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    if _world_size() > 1:
        dist.all_reduce(tensor, op=op)
    return tensor


def _broadcast_from_rank_zero(module: nn.Module) -> None:
    if _world_size() > 1:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)
