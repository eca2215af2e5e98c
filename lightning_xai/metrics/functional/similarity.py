"""Similarities of two batches of maps, per row: the Spearman rank correlation (average ranks for ties) and SSIM
in scikit-image's conventions, as Quantus' ``MPRT`` computes them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .._common import acc_dtype

__all__ = ["average_tie_ranks", "spearman_similarity", "ssim_similarity"]

# skimage.metrics.structural_similarity defaults, as Quantus calls it.
_SSIM_WINDOW = 7
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def average_tie_ranks(values: Tensor) -> Tensor:
    """Rank every row of a (B, n) tensor, ties getting the mean of their positions (0-based, as floats).

    Example:
        >>> import torch
        >>> average_tie_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]]))
        tensor([[2.5000, 0.0000, 2.5000, 1.0000]], dtype=torch.float64)
    """
    batch, n = values.shape
    dtype = acc_dtype(values.device)
    sorted_values, order = values.sort(dim=1, stable=True)
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    # One id per run of equal values, unique over the whole batch, so one scatter averages every run at once.
    group = starts.cumsum(1) - 1 + torch.arange(batch, device=values.device)[:, None] * n
    positions = torch.arange(n, device=values.device, dtype=dtype).expand(batch, n)
    run_mean = torch.zeros(batch * n, device=values.device, dtype=dtype).scatter_reduce(
        0, group.flatten(), positions.flatten(), reduce="mean", include_self=False
    )
    return torch.empty((batch, n), device=values.device, dtype=dtype).scatter_(1, order, run_mean[group])


def _pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    denom = (a.square().sum(1) * b.square().sum(1)).sqrt()
    # A constant row has no correlation to speak of (scipy returns NaN); it counts as 0.
    return torch.where(denom > 0, (a * b).sum(1) / denom.clamp_min(torch.finfo(denom.dtype).tiny), 0.0)


def spearman_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample Spearman rank correlation of two batches of maps (B, ...): the Pearson correlation of their
    average-tie ranks over all elements, as ``scipy.stats.spearmanr``. A constant map gives 0 (scipy: NaN).

    Example:
        >>> import torch
        >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
        >>> spearman_similarity(a, a ** 3).item(), spearman_similarity(a, -a).item()
        (1.0, -1.0)
    """
    a = a.flatten(1)
    b = b.flatten(1)
    return _pearson_rows(average_tie_ranks(a), average_tie_ranks(b))


def ssim_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample SSIM of two batches of (B, H, W) maps in scikit-image's conventions (Quantus' ``ssim``).

    A 7×7 uniform window with sample covariances, K = (0.01, 0.03), the data range being max − min over both
    maps of a pair, and the mean over the windows that lie inside the image. Two identical constant maps
    (data range 0) score 1.

    Example:
        >>> import torch
        >>> a = torch.rand(2, 8, 8)
        >>> ssim_similarity(a, a)
        tensor([1., 1.], dtype=torch.float64)
    """
    if a.shape[-2] < _SSIM_WINDOW or a.shape[-1] < _SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs maps of at least {_SSIM_WINDOW}x{_SSIM_WINDOW} (its window), got {tuple(a.shape[-2:])}"
        )
    dtype = acc_dtype(a.device)
    a = a.to(dtype)
    b = b.to(dtype)
    data_range = torch.maximum(a.amax((1, 2)), b.amax((1, 2))) - torch.minimum(a.amin((1, 2)), b.amin((1, 2)))
    moments = F.avg_pool2d(torch.stack([a, b, a * a, b * b, a * b], 1), _SSIM_WINDOW, stride=1)
    mu_a, mu_b, aa, bb, ab = moments.unbind(1)
    cov_norm = _SSIM_WINDOW**2 / (_SSIM_WINDOW**2 - 1)
    var_a = cov_norm * (aa - mu_a * mu_a)
    var_b = cov_norm * (bb - mu_b * mu_b)
    cov = cov_norm * (ab - mu_a * mu_b)
    c1 = ((_SSIM_K1 * data_range) ** 2)[:, None, None]
    c2 = ((_SSIM_K2 * data_range) ** 2)[:, None, None]
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2)
    )
    score = index.mean((1, 2))
    return torch.where(data_range > 0, score, torch.ones_like(score))


_SIMILARITY_FNS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "spearman": spearman_similarity,
    "ssim": ssim_similarity,
}
