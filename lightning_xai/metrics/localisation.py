"""Localisation metrics as torchmetrics ``Metric``s: pointing game, energy pointing game, IoU-AUC and PxAP.

Every state is a count or a sum reduced with ``sum``, so ``compute()`` under DDP equals one process on the
same data. The math is in :mod:`lightning_xai.metrics.functional.localisation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from .._checks import check_in_choices
from ._common import ChannelReduction, mean_compute, warn_all_skipped
from .functional.localisation import (
    Average,
    UnitNormalize,
    _check_iou_auc_args,
    _check_pointing_game_args,
    _energy_pointing_game_update,
    _iou_auc_compute,
    _iou_auc_update,
    _pointing_game_compute,
    _pointing_game_update,
)
from .functional.pxap import (
    _check_pxap_args,
    _format_thresholds,
    _pixel_average_precision_compute,
    _pixel_average_precision_update,
)

__all__ = ["EnergyPointingGame", "IoUAUC", "PixelAveragePrecision", "PointingGame"]

_REDUCTIONS = ("sum", "sum_abs", "max_abs")


def _count_state() -> Tensor:
    return torch.tensor(0, dtype=torch.long)


class PointingGame(Metric):
    """Pointing game accuracy (Zhang et al., arXiv 1608.00507), following TorchRay's protocol.

    Each row of ``update`` is one (image, class) pair. Its map is resized to the mask size; the row is a
    hit when a maximiser of the map lies in the mask or within Euclidean distance < ``tolerance`` pixels of
    a foreground pixel (a batched disk dilation of the masks). With ties every maximiser counts, where
    TorchRay takes the first; both agree without ties. ``tolerance=0`` is Quantus' ``PointingGame``.
    Rows with an empty mask, and rows whose map is constant (every pixel ties for the maximum, as the all-zero
    Grad-CAM of an untrained model does: such a map points nowhere), are skipped and counted in ``n_skipped``
    (``compute()`` is NaN, with a warning, when every row was skipped); leave out pairs whose objects are
    all "difficult" before calling ``update``.

    Args:
        tolerance: in pixels at the mask's resolution (TorchRay's 15 by default).
        num_classes: keep hits and misses per class (K = num_classes); ``update`` then needs ``class_ids``.
        average: ``"micro"`` = hits / rows; ``"macro"`` = mean per-class accuracy over the classes with at
            least one row (TorchRay counts absent classes as 0; they are excluded here).
        channel_reduction: how C > 1 attribution channels become one map: ``"sum"``, ``"sum_abs"``,
            ``"max_abs"``.

    States: ``hits`` (K,), ``misses`` (K,), ``n_skipped``, all summed across processes. ``compute()``
    returns NaN when no row was counted.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics import PointingGame
        >>> maps = torch.zeros(3, 16, 16)
        >>> maps[0, 4, 4] = 1.0    # on the object
        >>> maps[1, 4, 9] = 1.0    # 3 px right of the object: a hit within the tolerance
        >>> maps[2, 15, 15] = 1.0  # far away
        >>> masks = torch.zeros(3, 16, 16, dtype=torch.bool)
        >>> masks[:, 2:7, 2:7] = True
        >>> metric = PointingGame(tolerance=4)
        >>> metric.update(maps, masks)
        >>> metric.compute()
        tensor(0.6667)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    hits: Tensor
    misses: Tensor
    n_skipped: Tensor

    def __init__(
        self,
        tolerance: float = 15,
        num_classes: int | None = None,
        average: Average = "micro",
        channel_reduction: ChannelReduction = "sum",
        **kwargs: Any,
    ) -> None:
        _check_pointing_game_args(tolerance, num_classes, average)
        check_in_choices("channel_reduction", channel_reduction, _REDUCTIONS)
        super().__init__(**kwargs)
        self.tolerance = tolerance
        self.num_classes = num_classes
        self.average = average
        self.channel_reduction = channel_reduction
        size = num_classes or 1
        self.add_state("hits", torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("misses", torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_skipped", _count_state(), dist_reduce_fx="sum")

    def update(
        self, attributions: Tensor, masks: Tensor, class_ids: Tensor | Sequence[int] | int | None = None
    ) -> None:
        """Count the rows of a batch: (B,…) maps, (B,H,W) masks and, with ``num_classes``, (B,) class ids."""
        hits, misses, skipped = _pointing_game_update(
            attributions,
            masks,
            class_ids,
            tolerance=self.tolerance,
            num_classes=self.num_classes,
            channel_reduction=self.channel_reduction,
        )
        self.hits += hits
        self.misses += misses
        self.n_skipped += skipped

    def compute(self) -> Tensor:
        warn_all_skipped(type(self).__name__, self.n_skipped, self.hits.sum() + self.misses.sum())
        return _pointing_game_compute(self.hits, self.misses, self.average)


class EnergyPointingGame(Metric):
    """Energy-based pointing game (Score-CAM, arXiv 1910.01279).

    Per row, ``Σ_{u ∈ fg} S⁺(u) / Σ_u S⁺(u)`` with ``S⁺ = max(S, 0)`` at the mask's resolution; there is no
    min-max normalisation because shifting a map changes the ratio. The foreground is a segmentation mask or
    the union of the object boxes drawn as a mask. Rows with an empty one, and rows whose positive part is
    constant (no positive value, as an all-zero map; or a constant map, whose ratio would only be the mask's
    share of the image), are skipped and counted in ``n_skipped``.

    Args:
        channel_reduction: ``"sum"``, ``"sum_abs"`` or ``"max_abs"`` for C > 1 attribution channels.

    States: ``score_sum``, ``count``, ``n_skipped``. ``compute()`` returns the mean over rows (NaN when none
    was counted, with a warning when every row was skipped).

    Example:
        >>> import torch
        >>> from lightning_xai.metrics import EnergyPointingGame
        >>> maps = torch.tensor([[[3.0, 1.0], [0.0, -2.0]], [[1.0, 1.0], [1.0, 1.0]]])
        >>> masks = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [0, 0]]])
        >>> metric = EnergyPointingGame()
        >>> metric.update(maps, masks)
        >>> metric.compute(), metric.n_skipped  # 3/4; the constant map is skipped
        (tensor(0.7500), tensor(1))
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    score_sum: Tensor
    count: Tensor
    n_skipped: Tensor

    def __init__(self, channel_reduction: ChannelReduction = "sum", **kwargs: Any) -> None:
        check_in_choices("channel_reduction", channel_reduction, _REDUCTIONS)
        super().__init__(**kwargs)
        self.channel_reduction = channel_reduction
        self.add_state("score_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", _count_state(), dist_reduce_fx="sum")
        self.add_state("n_skipped", _count_state(), dist_reduce_fx="sum")

    def update(self, attributions: Tensor, masks: Tensor) -> None:
        """Score the rows of a batch: (B,…) maps and (B,H,W) or (B,1,H,W) binary foreground masks."""
        total, count, skipped = _energy_pointing_game_update(
            attributions, masks, channel_reduction=self.channel_reduction
        )
        self.score_sum += total.to(self.score_sum.dtype)
        self.count += count
        self.n_skipped += skipped

    def compute(self) -> Tensor:
        warn_all_skipped(type(self).__name__, self.n_skipped, self.count)
        return mean_compute(self.score_sum, self.count)


class IoUAUC(Metric):
    """Area under the IoU-threshold curve, as evaluated in COMET (``Zood123/COMET``).

    Maps in [0, 1] are binarised at ``threshold`` (``S > τ_b``) at the mask's resolution and compared with
    the masks by IoU. ``C(t)`` is the fraction of rows with ``IoU ≥ t`` for ``t ∈ {0, Δ, …, 1}``
    (Δ = ``iou_step``, 21 points by default), and the result is its trapezoid integral. Because
    ``∫₀¹ P(IoU ≥ t) dt = E[IoU]``, it lies within Δ/2 of the mean IoU, which ``compute()`` also returns when
    ``return_mean_iou=True``. Rows with an empty mask, and rows whose map is constant after ``normalize`` (it
    is then all on or all off, wherever the object is), are skipped and counted in ``n_skipped``;
    ``compute()`` is NaN when no row was counted (with a warning when every row was skipped).

    Args:
        threshold: binarisation level τ_b (0.6; the reference sweeps 0.1–0.95 in some paths).
        iou_step: Δ; 1/Δ must be a whole number.
        normalize: ``"none"`` (a map outside [0, 1] is an error), ``"minmax"`` or ``"max"``, per sample.
        channel_reduction: ``"sum"``, ``"sum_abs"`` or ``"max_abs"`` for C > 1 attribution channels.
        return_mean_iou: ``compute()`` returns ``{"iou_auc": auc, "mean_iou": mean}`` instead of the AUC
            alone (keep it False to log the metric object with ``LightningModule.log``).

    States: ``ge_counts`` (1/Δ + 1,), ``iou_sum``, ``count``, ``n_skipped``.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics import IoUAUC
        >>> masks = torch.zeros(2, 4, 4)
        >>> masks[:, :2] = 1  # 8 foreground pixels
        >>> maps = masks.clone()
        >>> maps[1, 2, :] = 0.9  # 4 false positives: IoU = 8/12
        >>> metric = IoUAUC(return_mean_iou=True)
        >>> metric.update(maps, masks)
        >>> {k: round(v.item(), 4) for k, v in metric.compute().items()}
        {'iou_auc': 0.8375, 'mean_iou': 0.8333}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    ge_counts: Tensor
    iou_sum: Tensor
    count: Tensor
    n_skipped: Tensor

    def __init__(
        self,
        threshold: float = 0.6,
        iou_step: float = 0.05,
        normalize: UnitNormalize = "none",
        channel_reduction: ChannelReduction = "sum",
        return_mean_iou: bool = False,
        **kwargs: Any,
    ) -> None:
        num_points = _check_iou_auc_args(threshold, iou_step, normalize)
        check_in_choices("channel_reduction", channel_reduction, _REDUCTIONS)
        super().__init__(**kwargs)
        self.threshold = threshold
        self.iou_step = iou_step
        self.num_points = num_points
        self.normalize = normalize
        self.channel_reduction = channel_reduction
        self.return_mean_iou = return_mean_iou
        self.add_state("ge_counts", torch.zeros(num_points, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("iou_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", _count_state(), dist_reduce_fx="sum")
        self.add_state("n_skipped", _count_state(), dist_reduce_fx="sum")

    def update(self, attributions: Tensor, masks: Tensor) -> None:
        """Score the rows of a batch: (B,…) maps in [0, 1] and (B,H,W) or (B,1,H,W) binary masks."""
        ge_counts, iou_sum, count, skipped = _iou_auc_update(
            attributions,
            masks,
            threshold=self.threshold,
            num_points=self.num_points,
            normalize=self.normalize,
            channel_reduction=self.channel_reduction,
        )
        self.ge_counts += ge_counts
        self.iou_sum += iou_sum.to(self.iou_sum.dtype)
        self.count += count
        self.n_skipped += skipped

    def compute(self) -> Tensor | dict[str, Tensor]:
        warn_all_skipped(type(self).__name__, self.n_skipped, self.count)
        auc, mean_iou = _iou_auc_compute(self.ge_counts, self.iou_sum, self.count)
        return {"iou_auc": auc, "mean_iou": mean_iou} if self.return_mean_iou else auc


class PixelAveragePrecision(Metric):
    """Pixel average precision (PxAP; Choe et al., arXiv 2001.07437), as adapted in COMET.

    Over the whole dataset, ``TP(t)`` / ``FP(t)`` count foreground / background pixels with ``S ≥ t`` (maps
    in [0, 1] at the mask's resolution) and ``N_fg`` counts all foreground pixels. With ``P = TP/(TP+FP)``
    (thresholds where ``TP+FP = 0`` are left out) and ``R = TP/N_fg``::

        PxAP = Σ_{j=1..T} P(t_j) · (R(t_j) − R(t_{j+1})),    R(t_{T+1}) := 0

    The states are two int64 histograms over (−∞,t_1), [t_1,t_2), …, [t_T,∞); TP and FP are their
    cumulative sums from the top, so the result is exact and independent of how the data were split into
    batches or processes. A constant map (after ``normalize``) ranks no pixel above another: its pixels are
    left out and the row is counted in ``n_skipped``. Rows with an empty mask are kept (their pixels are
    background).

    ``compat="comet"`` reproduces the COMET reference: pixels below t_1 are left out of both histograms'
    sums and of ``N_fg``, and a pseudo-point (TP=1, FP=0, FN=10000) is put before the highest threshold,
    so that ``R(t_{T+1}) := 1/10001``. The reference reports this value × 100.

    Args:
        thresholds: increasing levels in [0, 1]; an int n gives n evenly spaced levels in (0, 1); default
            {0.05, 0.10, …, 0.95} (T = 19).
        compat: None or ``"comet"``.
        normalize: ``"none"`` (a map outside [0, 1] is an error), ``"minmax"`` or ``"max"``, per sample.
        channel_reduction: ``"sum"``, ``"sum_abs"`` or ``"max_abs"`` for C > 1 attribution channels.

    States: ``fg_hist`` (T+1,), ``bg_hist`` (T+1,), int64, and ``n_skipped``. ``compute()`` is NaN without
    foreground pixels (before any update, or when every row was skipped: then with a warning).

    Example:
        >>> import torch
        >>> from lightning_xai.metrics import PixelAveragePrecision
        >>> masks = torch.tensor([[[1, 1], [0, 0]]])
        >>> maps = torch.tensor([[[0.9, 0.3], [0.5, 0.0]]])
        >>> metric = PixelAveragePrecision(thresholds=[0.25, 0.75])
        >>> metric.update(maps, masks)
        >>> metric.compute()  # P(0.75)=1, R=1/2; P(0.25)=2/3, R=1
        tensor(0.8333)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    fg_hist: Tensor
    bg_hist: Tensor
    n_skipped: Tensor

    def __init__(
        self,
        thresholds: int | Sequence[float] | Tensor | None = None,
        compat: Literal["comet"] | None = None,
        normalize: UnitNormalize = "none",
        channel_reduction: ChannelReduction = "sum",
        **kwargs: Any,
    ) -> None:
        _check_pxap_args(compat, normalize)
        check_in_choices("channel_reduction", channel_reduction, _REDUCTIONS)
        levels = _format_thresholds(thresholds)
        super().__init__(**kwargs)
        self.compat = compat
        self.normalize = normalize
        self.channel_reduction = channel_reduction
        # A plain attribute, not a buffer: module dtype casts (e.g. .half()) must not round the levels.
        self.thresholds = levels
        size = levels.numel() + 1
        self.add_state("fg_hist", torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("bg_hist", torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_skipped", _count_state(), dist_reduce_fx="sum")

    def update(self, attributions: Tensor, masks: Tensor) -> None:
        """Add the pixels of a batch: (B,…) maps in [0, 1] and (B,H,W) or (B,1,H,W) binary masks."""
        fg_hist, bg_hist, skipped = _pixel_average_precision_update(
            attributions,
            masks,
            self.thresholds,
            normalize=self.normalize,
            channel_reduction=self.channel_reduction,
        )
        self.fg_hist += fg_hist
        self.bg_hist += bg_hist
        self.n_skipped += skipped

    def compute(self) -> Tensor:
        warn_all_skipped(type(self).__name__, self.n_skipped, self.fg_hist.sum() + self.bg_hist.sum())
        return _pixel_average_precision_compute(self.fg_hist, self.bg_hist, self.compat)
