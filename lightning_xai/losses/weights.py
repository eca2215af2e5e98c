"""Sample weights from per-sample scores, for reweighted losses."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["consistency_weights"]


def consistency_weights(
    v: Tensor,
    clip: tuple[float, float] = (0.1, 5.0),
    mean: Tensor | float | None = None,
    *,
    informative: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample weights from inconsistencies ``v = 1 − E``: ``w = clip(v / c, *clip)`` with the scale ``c`` that
    makes the mean weight 1.

    Only ``informative`` samples (default: all) are reweighted; the others (a degenerate map, whose consistency
    says nothing) get weight 1 and count in no mean. ``c`` starts at the mean of the informative ``v`` (or
    ``mean``), which gives mean 1 when nothing is clipped; when the clip bounds bite, ``c`` is found by bisection
    so that the clipped weights still average 1, and the loss keeps its scale (on the CPU: a few hundred tiny
    steps, no device synchronisation). All weights are 1 when the mean ``v`` is below 1e-6. Returns the float32 weights and the fraction of the informative samples clipped at ``v / mean``.

    Example:
        >>> w, clipped = consistency_weights(torch.tensor([0.1, 0.3, 0.0, 0.0]))
        >>> w, float(clipped)
        (tensor([0.9500, 2.8500, 0.1000, 0.1000]), 0.5)
        >>> consistency_weights(torch.tensor([0.1, 0.3, 1.0]), informative=torch.tensor([True, True, False]))[0]
        tensor([0.5000, 1.5000, 1.0000])
    """
    v64 = v.to(torch.float64)
    keep = (
        torch.ones_like(v64, dtype=torch.bool) if informative is None else informative.to(v64.device).bool()
    )
    lo, hi = clip
    values = v64[keep].cpu()
    weights = torch.ones_like(v64)
    if mean is None:
        mean = values.mean() if values.numel() else 0.0
    mean_t = torch.as_tensor(mean, dtype=torch.float64).cpu()
    if not values.numel() or float(mean_t) < 1e-6:
        return weights.to(torch.float32), v64.new_zeros((), dtype=torch.float32)
    clipped = ((values / mean_t < lo) | (values / mean_t > hi)).to(torch.float64).mean()

    def mean_weight(scale: Tensor) -> float:
        return float((values / scale).clamp(lo, hi).mean())

    scale = mean_t
    if float(clipped) and lo <= 1.0 <= hi:
        # The mean weight falls as the scale grows: bracket 1 between a scale whose mean is >= 1 and one whose
        # mean is < 1, then bisect. Samples with v = 0 stay at `lo` for any scale, so a mean of 1 can be out of
        # reach: the smallest scale tried then gives the largest mean there is.
        low, high = mean_t.clone(), mean_t.clone()
        for _ in range(64):
            if mean_weight(low) >= 1.0:
                break
            low = low / 2
        for _ in range(64):
            if mean_weight(high) < 1.0:
                break
            high = high * 2
        for _ in range(40):  # 2^-40 of the bracket
            middle = (low + high) / 2
            low, high = (middle, high) if mean_weight(middle) >= 1.0 else (low, middle)
        scale = low
    weights[keep] = (values / scale).clamp(lo, hi).to(v64.device)
    return weights.to(torch.float32), clipped.to(device=v64.device, dtype=torch.float32)
