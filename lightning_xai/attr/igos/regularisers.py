"""Regularisers of the I-GOS masks: per-sample values of (n, 1, s, s) masks, means rather than sums so that λ does
not depend on s."""

from __future__ import annotations

import torch
from torch import Tensor


def _area(mask: Tensor) -> Tensor:
    """``A(M) = mean |1 - M|`` per sample. Autograd's subgradient of |·| is 0 at M = 1, so cells still at 1
    are not pushed (writing ``1 - M`` would push them)."""
    return (1 - mask).abs().flatten(1).mean(1)


def _differences(values: Tensor) -> tuple[Tensor, Tensor]:
    return values[..., 1:, :] - values[..., :-1, :], values[..., :, 1:] - values[..., :, :-1]


def _total_variation(mask: Tensor, beta: float = 2.0) -> Tensor:
    """``TV(M) = mean |Δv M|^β + mean |Δh M|^β`` per sample."""
    vertical, horizontal = _differences(mask)
    return vertical.abs().pow(beta).flatten(1).mean(1) + horizontal.abs().pow(beta).flatten(1).mean(1)


def _edge_weights(inputs: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """Bilateral weights ``mean_c exp(-(Δ x_c)² / σ)``, vertical (n,1,H-1,W) and horizontal (n,1,H,W-1).

    The same channel average in both directions (the reference averages the vertical one differently)."""
    vertical, horizontal = _differences(inputs)
    return (
        torch.exp(-vertical.pow(2) / sigma).mean(1, keepdim=True),
        torch.exp(-horizontal.pow(2) / sigma).mean(1, keepdim=True),
    )


def _bilateral_tv(
    mask: Tensor, upsampled: Tensor, weights: tuple[Tensor, Tensor], beta: float = 2.0
) -> Tensor:
    """``BTV = ½ [TV(M) + mean w^v |Δv U|^β + mean w^h |Δh U|^β]`` per sample, with U the upsampled mask."""
    vertical, horizontal = _differences(upsampled)
    smooth_v = (weights[0] * vertical.abs().pow(beta)).flatten(1).mean(1)
    smooth_h = (weights[1] * horizontal.abs().pow(beta)).flatten(1).mean(1)
    return 0.5 * (_total_variation(mask, beta) + smooth_v + smooth_h)
