"""Sample weights from per-sample scores, for reweighted losses."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["consistency_weights"]


def consistency_weights(
    v: Tensor, clip: tuple[float, float] = (0.1, 5.0), mean: Tensor | float | None = None
) -> tuple[Tensor, Tensor]:
    """Sample weights from inconsistencies ``v = 1 − E``: ``w = clip(v / mean v, *clip)`` .

    ``mean`` defaults to the mean of ``v``; pass another (e.g. over the global batch in DDP) to normalise by it.
    All weights are 1 when the mean is below 1e-6. There is no renormalisation after clipping, so the mean is
    exactly 1 only when nothing is clipped. Returns the float32 weights and the fraction that was clipped.

    Example:
        >>> w, clipped = consistency_weights(torch.tensor([0.1, 0.3, 0.0, 0.0]))
        >>> w, float(clipped)
        (tensor([1.0000, 3.0000, 0.1000, 0.1000]), 0.5)
    """
    v64 = v.to(torch.float64)
    lo, hi = clip
    if mean is None:
        mean = v64.mean() if v64.numel() else v64.new_zeros(())
    mean_t = torch.as_tensor(mean, dtype=torch.float64, device=v64.device)
    if not v64.numel() or float(mean_t) < 1e-6:
        return torch.ones_like(v64, dtype=torch.float32), v64.new_zeros((), dtype=torch.float32)
    ratio = v64 / mean_t
    clipped = ((ratio < lo) | (ratio > hi)).to(torch.float32).mean()
    return ratio.clamp(lo, hi).to(torch.float32), clipped
