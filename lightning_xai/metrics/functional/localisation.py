"""Localisation metrics against ground-truth masks: pointing game, energy pointing game, IoU-AUC and PxAP.

The math lives here once, in ``_x_update`` / ``_x_compute`` helpers that the public functions and the
``Metric`` classes of :mod:`lightning_xai.metrics.localisation` share. Maps are brought to the mask's
resolution (bilinear, align_corners=False) before anything is counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._checks import check_in_choices, check_positive, describe
from ...explain import constant_rows
from .._common import (
    ChannelReduction,
    acc_dtype,
    check_masks,
    mean_compute,
    resize_maps,
    to_maps,
    warn_all_skipped,
)

__all__ = ["energy_pointing_game", "iou_auc", "pointing_game"]

Average = Literal["micro", "macro"]
UnitNormalize = Literal["none", "minmax", "max"]


def _count_sorted(values: Tensor, size: int) -> Tensor:
    """Occurrences of 0..size-1 in a 1-D int64 tensor by sorting and searching: deterministic, O(N) memory."""
    edges = torch.arange(size + 1, device=values.device, dtype=values.dtype)
    return torch.searchsorted(values.sort().values, edges).diff()


def _count_values(values: Tensor, size: int) -> Tensor:
    """Occurrences of 0..size-1 in a 1-D int64 tensor, exact on every device."""
    # torch.bincount has no deterministic CUDA kernel, nor an MPS one.
    deterministic_cuda = values.is_cuda and torch.are_deterministic_algorithms_enabled()
    if deterministic_cuda or values.device.type not in ("cpu", "cuda"):
        return _count_sorted(values, size)
    return torch.bincount(values, minlength=size)


def _maps_and_masks(
    attributions: Tensor, masks: Tensor, channel_reduction: ChannelReduction
) -> tuple[Tensor, Tensor]:
    """Validated (B,H,W) float maps and (B,H,W) bool masks; the maps keep their own resolution."""
    if channel_reduction == "none":
        raise ValueError("`channel_reduction` must reduce channels for localisation metrics, got 'none'")
    maps = to_maps(attributions, channel_reduction)
    masks = check_masks(masks, maps.shape[0])
    if masks.device != maps.device:
        raise ValueError(f"`masks` is on {masks.device} but `attributions` is on {maps.device}")
    return maps, masks


def _unit_maps(maps: Tensor, normalize: UnitNormalize, name: str = "attributions") -> Tensor:
    """Per-sample normalisation to [0, 1] (``"minmax"`` or ``"max"``), or a check that maps already lie there."""
    check_in_choices("normalize", normalize, ("none", "minmax", "max"))
    flat = maps.flatten(1)
    if normalize == "minmax":
        low = flat.amin(1, keepdim=True)
        span = flat.amax(1, keepdim=True) - low
        # A constant map carries no ranking; it becomes all zeros rather than 0/0.
        flat = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    elif normalize == "max":
        top = flat.amax(1, keepdim=True)
        flat = torch.where(top > 0, flat / top.clamp_min(torch.finfo(flat.dtype).tiny), flat)
    if flat.numel() and (bool((flat < 0).any()) or bool((flat > 1).any())):
        hint = "" if normalize != "none" else ", or pass normalize='minmax'"
        raise ValueError(
            f"`{name}` must lie in [0, 1] after normalize={normalize!r}{hint}; got values in "
            f"[{float(flat.min()):.4g}, {float(flat.max()):.4g}]"
        )
    return flat.view_as(maps)


def _informative(maps: Tensor) -> Tensor:
    """(B,) rows whose map is not constant. A constant map (every pixel equal, as the all-zero Grad-CAM of an
    untrained model) says nothing about where the object is: every localisation metric skips it and counts it
    in ``n_skipped`` instead of scoring it."""
    return ~constant_rows(maps)


# --------------------------------------------------------------------------------------------------------------
# Pointing game
# --------------------------------------------------------------------------------------------------------------


def _disk_kernel(tolerance: float, device: torch.device) -> Tensor:
    """(1,1,k,k) indicator of the offsets d with ‖d‖₂ < tolerance, the centre always included."""
    radius = max(math.ceil(tolerance) - 1, 0)
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    dist2 = offsets[:, None] ** 2 + offsets[None, :] ** 2
    kernel = (dist2 < tolerance**2) | (dist2 == 0)
    return kernel.float()[None, None]


def _dilate(masks: Tensor, tolerance: float) -> Tensor:
    """Pixels within Euclidean distance < ``tolerance`` of a foreground pixel, for a (B,H,W) bool batch."""
    kernel = _disk_kernel(tolerance, masks.device)
    if kernel.shape[-1] == 1:
        return masks
    radius = kernel.shape[-1] // 2
    # Counts of foreground pixels under the disk are small integers, exact in float32.
    hits = F.conv2d(masks[:, None].float(), kernel, padding=radius)
    return hits[:, 0] > 0.5


def _pointing_game_hits(maps: Tensor, masks: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
    """Per-row hit (B,) and validity (B,); ``maps`` must already be at the mask size.

    A row is valid when its mask is not empty and its map is informative (see :func:`_informative`): a
    constant map has every pixel tied for the maximum, points nowhere, and must not count as a hit."""
    flat = maps.flatten(1)
    maximisers = (flat == flat.amax(1, keepdim=True)).view_as(maps)
    accepted = _dilate(masks, tolerance)
    hit = (maximisers & accepted).flatten(1).any(1)
    valid = masks.flatten(1).any(1) & _informative(maps)
    return hit, valid


def _format_class_ids(
    class_ids: object, batch_size: int, num_classes: int | None, device: torch.device
) -> Tensor:
    """(B,) long class indices of the rows; all zeros when there is a single class."""
    if class_ids is None:
        if num_classes is not None and num_classes > 1:
            raise ValueError(
                f"`class_ids` (one class index per row) is required when num_classes={num_classes}"
            )
        return torch.zeros(batch_size, dtype=torch.long, device=device)
    if num_classes is None:
        raise ValueError(
            "`class_ids` was given but `num_classes` was not; pass num_classes=K to count per class"
        )
    if isinstance(class_ids, bool):
        raise TypeError(
            f"`class_ids` must be an int, a list of ints or an integer tensor, got {describe(class_ids)}"
        )
    if isinstance(class_ids, int):
        ids = torch.full((batch_size,), class_ids, dtype=torch.long, device=device)
    elif isinstance(class_ids, (list, tuple)):
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in class_ids):
            raise TypeError(f"`class_ids` as a list must hold ints, got {class_ids!r}"[:200])
        ids = torch.tensor(list(class_ids), dtype=torch.long, device=device).reshape(-1)
    elif isinstance(class_ids, Tensor):
        if class_ids.is_floating_point() or class_ids.is_complex() or class_ids.dtype == torch.bool:
            raise TypeError(f"`class_ids` must be an integer tensor, got {describe(class_ids)}")
        ids = class_ids.to(device=device, dtype=torch.long).reshape(-1)
    else:
        raise TypeError(
            f"`class_ids` must be an int, a list of ints or an integer tensor, got {describe(class_ids)}"
        )
    if ids.numel() != batch_size:
        raise ValueError(f"`class_ids` must hold {batch_size} class indices (one per row), got {ids.numel()}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise ValueError(
            f"`class_ids` must lie in [0, {num_classes}) (num_classes={num_classes}), got values in "
            f"[{int(ids.min())}, {int(ids.max())}]"
        )
    return ids


def _check_pointing_game_args(tolerance: float, num_classes: int | None, average: str) -> None:
    check_positive("tolerance", tolerance, allow_zero=True)
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"`num_classes` must be a positive int or None, got {num_classes!r}")
    check_in_choices("average", average, ("micro", "macro"))


def _pointing_game_update(
    attributions: Tensor,
    masks: Tensor,
    class_ids: object = None,
    *,
    tolerance: float = 15,
    num_classes: int | None = None,
    channel_reduction: ChannelReduction = "sum",
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class hit and miss counts (K,) and the number of rows skipped (an empty mask or a constant map)."""
    maps, masks = _maps_and_masks(attributions, masks, channel_reduction)
    ids = _format_class_ids(class_ids, maps.shape[0], num_classes, maps.device)
    maps = resize_maps(maps, tuple(masks.shape[-2:]))
    hit, valid = _pointing_game_hits(maps, masks, tolerance)
    size = num_classes or 1
    hits = _count_values(ids[valid & hit], size)
    misses = _count_values(ids[valid & ~hit], size)
    return hits, misses, (~valid).sum()


def _pointing_game_compute(hits: Tensor, misses: Tensor, average: Average = "micro") -> Tensor:
    """Micro: hits over all rows. Macro: mean accuracy over the classes that have at least one row.

    NaN when no row was counted.
    """
    hits = hits.double() if hits.device.type != "mps" else hits.float()
    totals = hits + misses.to(hits.dtype)
    if average == "micro":
        return (hits.sum() / totals.sum()).float()
    present = totals > 0
    return (hits[present] / totals[present]).mean().float()


def pointing_game(
    attributions: Tensor,
    masks: Tensor,
    class_ids: Tensor | Sequence[int] | int | None = None,
    *,
    tolerance: float = 15,
    num_classes: int | None = None,
    average: Average = "micro",
    channel_reduction: ChannelReduction = "sum",
) -> Tensor:
    """Pointing game accuracy (Zhang et al., arXiv 1608.00507; TorchRay's protocol).

    A row (one image-class pair) is a hit when a maximiser of its map, resized to the mask size, lies in the
    mask or within Euclidean distance < ``tolerance`` pixels of a foreground pixel. Every maximiser counts
    when there are ties. Rows with an empty mask or a constant map (it points nowhere) are skipped.

    Args:
        attributions: (B,H,W), (B,1,H,W) or (B,C,H,W) maps; C > 1 is reduced by ``channel_reduction``.
        masks: (B,H,W) or (B,1,H,W) binary masks, bool or {0, 1}; they set the resolution.
        class_ids: the class of each row, needed for ``average="macro"`` with ``num_classes`` > 1.
        tolerance: in pixels at the mask's resolution; 0 requires the maximiser itself in the mask.
        num_classes: number of classes for per-class counts (None: a single class).
        average: ``"micro"`` (hits over rows) or ``"macro"`` (mean per-class accuracy over the classes
            present).
        channel_reduction: ``"sum"``, ``"sum_abs"`` or ``"max_abs"``.

    Returns:
        A scalar in [0, 1]; NaN, with a warning, when every row was skipped.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics.functional import pointing_game
        >>> maps = torch.zeros(2, 8, 8)
        >>> maps[0, 2, 2] = 1.0  # on the object
        >>> maps[1, 7, 7] = 1.0  # far from it
        >>> masks = torch.zeros(2, 8, 8, dtype=torch.bool)
        >>> masks[:, 1:4, 1:4] = True
        >>> pointing_game(maps, masks, tolerance=0)
        tensor(0.5000)
    """
    _check_pointing_game_args(tolerance, num_classes, average)
    hits, misses, skipped = _pointing_game_update(
        attributions,
        masks,
        class_ids,
        tolerance=tolerance,
        num_classes=num_classes,
        channel_reduction=channel_reduction,
    )
    warn_all_skipped("pointing_game", skipped, hits.sum() + misses.sum())
    return _pointing_game_compute(hits, misses, average)


# --------------------------------------------------------------------------------------------------------------
# Energy-based pointing game
# --------------------------------------------------------------------------------------------------------------


def _energy_pointing_game_scores(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row energy inside the mask (B,) and validity (B,), maps at the mask size.

    A row is valid when its mask is not empty and its positive part ``S⁺`` is not constant: a map without
    positive energy (0/0) or with the same energy everywhere (whose score would only be the mask's share of
    the image) points nowhere and is skipped."""
    positive = maps.to(acc_dtype(maps.device)).clamp_min(0).flatten(1)
    fg = masks.flatten(1)
    inside = (positive * fg).sum(1)
    total = positive.sum(1)
    scores = torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
    return scores, fg.any(1) & _informative(positive)


def _energy_pointing_game_update(
    attributions: Tensor, masks: Tensor, *, channel_reduction: ChannelReduction = "sum"
) -> tuple[Tensor, Tensor, Tensor]:
    """Sum of the per-row scores, number of rows scored and number skipped (an empty mask, or no positive
    energy or the same energy everywhere)."""
    maps, masks = _maps_and_masks(attributions, masks, channel_reduction)
    maps = resize_maps(maps, tuple(masks.shape[-2:]))
    scores, valid = _energy_pointing_game_scores(maps, masks)
    return scores[valid].sum(), valid.sum(), (~valid).sum()


def energy_pointing_game(
    attributions: Tensor, masks: Tensor, *, channel_reduction: ChannelReduction = "sum"
) -> Tensor:
    """Energy-based pointing game (Score-CAM, arXiv 1910.01279).

    Per row, ``Σ_{u ∈ fg} S⁺(u) / Σ_u S⁺(u)`` with ``S⁺ = max(S, 0)`` at the mask's resolution, with no
    min-max normalisation (a shift would change the ratio). A row with an empty mask is skipped, and so is a
    map whose positive part is constant (no positive value, or a constant map): it points nowhere.

    Args:
        attributions: (B,H,W), (B,1,H,W) or (B,C,H,W) maps; C > 1 is reduced by ``channel_reduction``.
        masks: (B,H,W) or (B,1,H,W) binary foreground (a segmentation mask or the union of the boxes).
        channel_reduction: ``"sum"``, ``"sum_abs"`` or ``"max_abs"``.

    Returns:
        The mean over rows, in [0, 1]; NaN, with a warning, when every row was skipped.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics.functional import energy_pointing_game
        >>> maps = torch.tensor([[[3.0, 1.0], [0.0, -2.0]]])
        >>> masks = torch.tensor([[[1, 0], [0, 0]]])
        >>> energy_pointing_game(maps, masks)
        tensor(0.7500)
    """
    total, count, skipped = _energy_pointing_game_update(
        attributions, masks, channel_reduction=channel_reduction
    )
    warn_all_skipped("energy_pointing_game", skipped, count)
    return mean_compute(total, count)


# --------------------------------------------------------------------------------------------------------------
# IoU-AUC
# --------------------------------------------------------------------------------------------------------------


def _iou_num_points(iou_step: float) -> int:
    """Number of IoU thresholds {0, Δ, …, 1}; 1/Δ must be a whole number."""
    check_positive("iou_step", iou_step)
    intervals = round(1.0 / iou_step)
    if iou_step > 1 or abs(intervals * iou_step - 1.0) > 1e-6:
        raise ValueError(
            f"`iou_step` must divide 1 into a whole number of steps (e.g. 0.05), got {iou_step!r}"
        )
    return intervals + 1


def _check_iou_auc_args(threshold: float, iou_step: float, normalize: str) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(
            f"`threshold` (the binarisation level τ_b) must be a number in [0, 1), got {threshold!r}"
        )
    check_in_choices("normalize", normalize, ("none", "minmax", "max"))
    return _iou_num_points(iou_step)


def _ious(maps: Tensor, masks: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Per-row IoU (B,) of ``maps > threshold`` with the masks, and validity (a non-empty mask and an
    informative map: a constant one is all on or all off, whatever the object)."""
    binary = (maps > threshold).flatten(1)
    truth = masks.flatten(1)
    dtype = acc_dtype(maps.device)
    inter = (binary & truth).sum(1).to(dtype)
    union = (binary | truth).sum(1).to(dtype)
    valid = truth.any(1) & _informative(maps)
    return inter / union.clamp_min(1), valid


def _iou_auc_update(
    attributions: Tensor,
    masks: Tensor,
    *,
    threshold: float = 0.6,
    num_points: int = 21,
    normalize: UnitNormalize = "none",
    channel_reduction: ChannelReduction = "sum",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Counts of rows with IoU ≥ t for each of the ``num_points`` thresholds, the IoU sum, the number of
    rows scored and the number skipped (an empty mask or a constant map)."""
    maps, masks = _maps_and_masks(attributions, masks, channel_reduction)
    maps = resize_maps(_unit_maps(maps, normalize), tuple(masks.shape[-2:]))
    ious, valid = _ious(maps, masks, threshold)
    ious = ious[valid]
    # k / (P-1) rather than k·Δ, so that an IoU of exactly 3/5 meets the threshold 0.6.
    levels = torch.arange(num_points, device=ious.device, dtype=ious.dtype) / (num_points - 1)
    ge_counts = (ious[:, None] >= levels[None, :]).sum(0)
    return ge_counts, ious.sum(), valid.sum(), (~valid).sum()


def _iou_auc_compute(ge_counts: Tensor, iou_sum: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Trapezoid area under C(t) = fraction of rows with IoU ≥ t, and the mean IoU (both NaN when empty)."""
    dtype = torch.float32 if ge_counts.device.type == "mps" else torch.float64
    curve = ge_counts.to(dtype) / count.to(dtype)
    step = 1.0 / (ge_counts.numel() - 1)
    auc = step * (curve.sum() - 0.5 * (curve[0] + curve[-1]))
    return auc.float(), mean_compute(iou_sum, count)


def iou_auc(
    attributions: Tensor,
    masks: Tensor,
    *,
    threshold: float = 0.6,
    iou_step: float = 0.05,
    normalize: UnitNormalize = "none",
    channel_reduction: ChannelReduction = "sum",
    return_mean_iou: bool = False,
) -> Tensor | dict[str, Tensor]:
    """Area under the IoU-threshold curve, as evaluated in COMET.

    Each map is binarised at ``threshold`` (``S > τ_b``), its IoU with the mask is taken, and the curve
    ``C(t) = fraction of rows with IoU ≥ t`` for ``t ∈ {0, Δ, …, 1}`` is integrated with the trapezoid rule.
    The result lies within Δ/2 of the mean IoU. Rows with an empty mask or a constant map (after
    ``normalize``: it is all on or all off, wherever the object is) are skipped; NaN, with a warning, when
    every row was.

    Args:
        attributions: (B,H,W), (B,1,H,W) or (B,C,H,W) maps in [0, 1] (after ``normalize``).
        masks: (B,H,W) or (B,1,H,W) binary masks; they set the resolution.
        threshold: binarisation level τ_b.
        iou_step: Δ, the spacing of the IoU thresholds; 1/Δ must be a whole number.
        normalize: ``"none"`` (maps outside [0, 1] are an error), ``"minmax"`` or ``"max"``, per sample.
        channel_reduction: ``"sum"``, ``"sum_abs"`` or ``"max_abs"``.
        return_mean_iou: return ``{"iou_auc": ..., "mean_iou": ...}`` instead of the AUC alone.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics.functional import iou_auc
        >>> masks = torch.zeros(2, 4, 4)
        >>> masks[:, :2] = 1
        >>> iou_auc(masks.clone(), masks)
        tensor(1.)
    """
    num_points = _check_iou_auc_args(threshold, iou_step, normalize)
    ge_counts, iou_sum, count, skipped = _iou_auc_update(
        attributions,
        masks,
        threshold=threshold,
        num_points=num_points,
        normalize=normalize,
        channel_reduction=channel_reduction,
    )
    warn_all_skipped("iou_auc", skipped, count)
    auc, mean_iou = _iou_auc_compute(ge_counts, iou_sum, count)
    return {"iou_auc": auc, "mean_iou": mean_iou} if return_mean_iou else auc
