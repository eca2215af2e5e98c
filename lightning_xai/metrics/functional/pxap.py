"""Pixel average precision (PxAP, Choe et al., CVPR 2020): the area under the precision-recall curve of the
pixels of the maps against the ground-truth masks, accumulated as exact histograms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ..._checks import check_in_choices, check_tensor, describe
from .._common import ChannelReduction, resize_maps, warn_all_skipped
from .localisation import UnitNormalize, _count_values, _informative, _maps_and_masks, _unit_maps

__all__ = ["pixel_average_precision"]

#: The (TP=1, FP=0, FN=10000) point that the COMET reference puts before the highest threshold.
_COMET_PSEUDO_RECALL = 1.0 / (1.0 + 10000.0)


def _format_thresholds(thresholds: int | Sequence[float] | Tensor | None) -> Tensor:
    """Strictly increasing float64 thresholds (T,); the default is {0.05, 0.10, …, 0.95}."""
    if thresholds is None:
        return torch.arange(1, 20, dtype=torch.float64) / 20
    if isinstance(thresholds, bool):
        raise TypeError(
            f"`thresholds` must be an int, a sequence of floats or a tensor, got {describe(thresholds)}"
        )
    if isinstance(thresholds, int):
        if thresholds < 1:
            raise ValueError(f"`thresholds` as an int must be at least 1, got {thresholds}")
        # n evenly spaced levels strictly inside (0, 1), like the default for n = 19.
        return torch.arange(1, thresholds + 1, dtype=torch.float64) / (thresholds + 1)
    if isinstance(thresholds, Tensor):
        values = thresholds.detach().to("cpu", torch.float64)
    elif isinstance(thresholds, Sequence) and not isinstance(thresholds, str):
        values = torch.tensor([float(t) for t in thresholds], dtype=torch.float64)
    else:
        raise TypeError(
            f"`thresholds` must be an int, a sequence of floats or a tensor, got {describe(thresholds)}"
        )
    check_tensor("thresholds", values, ndim=1)
    if values.numel() == 0 or (values.numel() > 1 and not bool((values[1:] > values[:-1]).all())):
        raise ValueError(
            f"`thresholds` must be a non-empty, strictly increasing sequence, got {values.tolist()}"
        )
    if bool((values < 0).any()) or bool((values > 1).any()):
        raise ValueError(f"`thresholds` must lie in [0, 1] (maps do), got {values.tolist()}")
    return values


def _check_pxap_args(compat: str | None, normalize: str) -> None:
    check_in_choices("compat", compat, (None, "comet"))
    check_in_choices("normalize", normalize, ("none", "minmax", "max"))


def _pixel_average_precision_update(
    attributions: Tensor,
    masks: Tensor,
    thresholds: Tensor,
    *,
    normalize: UnitNormalize = "none",
    channel_reduction: ChannelReduction = "sum",
) -> tuple[Tensor, Tensor, Tensor]:
    """Foreground and background pixel counts (T+1,) int64 over (−∞,t_1), [t_1,t_2), …, [t_T,∞), and the
    number of rows skipped: a constant map (after ``normalize``) ranks no pixel above another, so its pixels
    are left out of both histograms. An empty mask is not skipped: its pixels are all background."""
    maps, masks = _maps_and_masks(attributions, masks, channel_reduction)
    maps = resize_maps(_unit_maps(maps, normalize), tuple(masks.shape[-2:]))
    keep = _informative(maps)
    maps, masks = maps[keep], masks[keep]
    # Thresholds in the map's own dtype, so that a stored 0.05 counts as ≥ 0.05.
    levels = thresholds.to(device=maps.device, dtype=maps.dtype)
    bins = torch.bucketize(maps.contiguous(), levels, right=True)
    size = levels.numel() + 1
    counts = _count_values((bins + size * masks.long()).flatten(), 2 * size)
    return counts[size:], counts[:size], (~keep).sum()


def _pixel_average_precision_compute(fg_hist: Tensor, bg_hist: Tensor, compat: str | None = None) -> Tensor:
    """``Σ_j P(t_j)(R(t_j) − R(t_{j+1}))`` from the histograms; NaN without any foreground pixel (also before
    any update, and when every row was skipped).

    ``compat="comet"`` leaves pixels below t_1 out of N_fg and replaces R(t_{T+1}) = 0 by the recall
    1/10001 of the reference's pseudo-point (TP=1, FP=0, FN=10000). When every foreground pixel lies below
    t_1 there, nothing was found at any threshold and the result is 0 (not 0/0).
    """
    dtype = torch.float32 if fg_hist.device.type == "mps" else torch.float64
    if int(fg_hist.sum()) == 0:
        return torch.tensor(float("nan"), device=fg_hist.device)
    # Cumulative sums from the top in int64 are exact; drop the (−∞, t_1) bin to get TP(t_j), FP(t_j).
    tp = fg_hist.flip(0).cumsum(0).flip(0)[1:]
    fp = bg_hist.flip(0).cumsum(0).flip(0)[1:]
    n_fg = tp[0] if compat == "comet" else fg_hist.sum()
    tp, fp = tp.to(dtype), fp.to(dtype)
    # A foreground that no threshold reaches scores 0.
    recall = tp / n_fg.clamp_min(1).to(dtype)
    predicted = tp + fp
    precision = tp / predicted.clamp_min(1)
    end = torch.full(
        (1,), _COMET_PSEUDO_RECALL if compat == "comet" else 0.0, dtype=dtype, device=recall.device
    )
    gain = recall - torch.cat([recall[1:], end])
    # Thresholds with no predicted pixel have no precision; they are left out of the sum.
    terms = torch.where(predicted > 0, precision * gain, 0.0)
    return terms.sum().float()


def pixel_average_precision(
    attributions: Tensor,
    masks: Tensor,
    *,
    thresholds: int | Sequence[float] | Tensor | None = None,
    compat: Literal["comet"] | None = None,
    normalize: UnitNormalize = "none",
    channel_reduction: ChannelReduction = "sum",
) -> Tensor:
    """Pixel average precision (PxAP; Choe et al., arXiv 2001.07437) over every pixel of the batch.

    ``TP(t)`` and ``FP(t)`` count foreground and background pixels with ``S ≥ t``, pooled over all images;
    ``P = TP/(TP+FP)``, ``R = TP/N_fg`` and ``PxAP = Σ_j P(t_j)(R(t_j) − R(t_{j+1}))`` with ``R(t_{T+1}) = 0``.

    Args:
        attributions: (B,H,W), (B,1,H,W) or (B,C,H,W) maps in [0, 1] (after ``normalize``).
        masks: (B,H,W) or (B,1,H,W) binary masks; they set the resolution.
        thresholds: increasing levels t_1 < … < t_T; an int n gives n evenly spaced levels in (0, 1);
            default {0.05, …, 0.95}.
        compat: ``"comet"`` reproduces the COMET reference (see the class ``PixelAveragePrecision``); its
            reported number is this value × 100.
        normalize: ``"none"`` (maps outside [0, 1] are an error), ``"minmax"`` or ``"max"``, per sample.
        channel_reduction: ``"sum"``, ``"sum_abs"`` or ``"max_abs"``.

    Constant maps are skipped (their pixels left out); NaN without foreground pixels, with a warning when
    that is because every map was skipped.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics.functional import pixel_average_precision
        >>> masks = torch.zeros(2, 4, 4)
        >>> masks[:, 1:3, 1:3] = 1
        >>> pixel_average_precision(masks.clone(), masks)
        tensor(1.)
    """
    _check_pxap_args(compat, normalize)
    levels = _format_thresholds(thresholds)
    fg_hist, bg_hist, skipped = _pixel_average_precision_update(
        attributions, masks, levels, normalize=normalize, channel_reduction=channel_reduction
    )
    warn_all_skipped("pixel_average_precision", skipped, fg_hist.sum() + bg_hist.sum())
    return _pixel_average_precision_compute(fg_hist, bg_hist, compat)
