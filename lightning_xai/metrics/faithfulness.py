"""Faithfulness metrics: deletion / insertion AUC, Average Drop and Increase in Confidence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from .._checks import check_in_choices, check_internal_batch_size
from ..explain.avx import _average_drop_update
from ..explain.baselines import BaselineSpec
from ..models import LogitsForward
from ..models.scoring import Score
from ._common import (
    ChannelReduction,
    mean_compute,
    warn_all_skipped,
)
from .functional.confidence import (
    ConfidenceForm,
    Normalize,
    _confidence_update,
    _increase_in_confidence_update,
    check_confidence_args,
)
from .functional.curve_settings import Integration, Preset, Resolution, curve_settings
from .functional.faithfulness import _perturbation_curve_compute, _perturbation_curve_update


class _ForwardHolder:
    """Keeps the model out of the metric's submodules (and so out of its ``state_dict`` and ``.to()``)."""

    _model_forward: LogitsForward

    def _set_forward(self, forward_func: Callable[..., Any]) -> None:
        object.__setattr__(self, "_model_forward", LogitsForward(forward_func))

    @property
    def forward_func(self) -> Callable[..., Any]:
        """The model or function the metric scores."""
        return self._model_forward.forward_func


class _PerturbationCurve(_ForwardHolder, Metric):
    is_differentiable = False
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0
    _mode: str

    auc_sum: Tensor
    count: Tensor
    n_skipped: Tensor
    curves: list[Tensor]

    def __init__(
        self,
        forward_func: Callable[..., Any],
        *,
        preset: Preset = "igos",
        resolution: Resolution = "preset",
        cells_per_step: int | None = None,
        baseline: BaselineSpec | None = None,
        blur_kernel: int | None = None,
        blur_sigma: float | None = None,
        integration: Integration | None = None,
        channel_reduction: ChannelReduction = "sum",
        score: Score = "softmax",
        force_eval: bool = True,
        internal_batch_size: int = 128,
        return_curves: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = curve_settings(
            self._mode, preset, resolution, cells_per_step, baseline, blur_kernel, blur_sigma, integration
        )
        check_in_choices("channel_reduction", channel_reduction, ("sum", "sum_abs", "max_abs"))
        check_in_choices("score", score, ("softmax", "logit"))
        check_internal_batch_size(internal_batch_size, allow_none=False)
        self._set_forward(forward_func)
        self.channel_reduction = channel_reduction
        self.score = score
        self.force_eval = bool(force_eval)
        self.internal_batch_size = internal_batch_size
        self.return_curves = bool(return_curves)
        self.add_state("auc_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("n_skipped", torch.tensor(0), dist_reduce_fx="sum")
        if self.return_curves:
            self.add_state("curves", [], dist_reduce_fx="cat")

    def update(self, inputs: Tensor, attributions: Tensor, target: object = None) -> None:
        """Score the curves of a batch.

        Args:
            inputs: (B, C, H, W) model inputs.
            attributions: (B, H, W), (B, 1, H, W) or (B, C, H, W) maps, higher = more important, any resolution.
            target: an int, a list of B ints, a (B,) tensor, or None (argmax on the clean inputs).
        """
        auc, curves, skipped = _perturbation_curve_update(
            self._model_forward,
            inputs,
            attributions,
            target,
            self.settings,
            channel_reduction=self.channel_reduction,
            score=self.score,
            force_eval=self.force_eval,
            internal_batch_size=self.internal_batch_size,
            with_start=self.return_curves,
        )
        if self.return_curves:
            if self.curves and self.curves[-1].shape[1] != curves.shape[1]:
                raise ValueError(
                    f"with `return_curves=True` every update must give curves of the same length: this batch has "
                    f"{curves.shape[1]} points, earlier ones {self.curves[-1].shape[1]} (same input size and "
                    "settings are needed)"
                )
            self.curves.append(curves[~skipped].to(self.auc_sum))
        self.auc_sum += auc[~skipped].sum().to(self.auc_sum)
        self.count += int((~skipped).sum())
        self.n_skipped += int(skipped.sum())

    def compute(self) -> Tensor | dict[str, Tensor]:
        """The mean AUC; with ``return_curves=True`` a dict ``{"auc": mean AUC, "curves": (N, J + 1)}``."""
        warn_all_skipped(type(self).__name__, self.n_skipped, self.count, reason="a constant map")
        value = _perturbation_curve_compute(self.auc_sum, self.count)
        if self.return_curves:
            curves = dim_zero_cat(self.curves) if len(self.curves) else self.auc_sum.new_zeros(0, 0)
            return {"auc": value, "curves": curves}
        return value


_CURVE_ARGS = """
    Args:
        forward_func: a model or function returning (B, K) logits (HF ``ModelOutput`` is unwrapped). It is held,
            not registered as a submodule.
        preset: ``"igos"`` (default: 28×28 grid, ``max(1, n // 50)`` cells per step, blur baseline kernel 51,
            σ = 50 for both curves, right Riemann sum without the unperturbed point) or ``"rise"`` (pixel
            ranking, one row of pixels per step, deletion to zeros, insertion from a blur with kernel 11, σ = 5,
            trapezoid from the unperturbed point).
        resolution: ranking grid, an int or (s_h, s_w); maps larger than the grid are average-pooled
            (adaptive), smaller ones bilinearly upsampled. ``None`` ranks the input's pixels (the map is
            resized bilinearly to the input). ``"preset"`` takes the preset's value.
        cells_per_step: cells added or removed per step, k; ``J = ceil(n / k)`` steps. ``None``: the preset's
            rule.
        baseline: what removed cells show: ``"blur"``, ``"zeros"``, ``"mean"``, a number, a tensor broadcastable
            to the inputs, or a callable ``inputs -> baseline``. ``None``: the preset's.
        blur_kernel: odd kernel size of the ``"blur"`` baseline (reflect borders). ``None``: the preset's.
        blur_sigma: σ of the ``"blur"`` baseline. ``None``: the preset's.
        integration: ``"right"`` (Σ_{j≥1} p_j (n_j − n_{j−1}) / n) or ``"trapezoid"``
            (Σ_j (p_{j−1} + p_j) / 2 · (n_j − n_{j−1}) / n). ``None``: the preset's.
        channel_reduction: how (B, C, H, W) maps become one map: ``"sum"``, ``"sum_abs"`` or ``"max_abs"``.
        score: ``"softmax"`` probability of the target (default) or the raw ``"logit"``.
        force_eval: run the model in eval mode; every module's flags are restored afterwards, also on errors.
        internal_batch_size: perturbed inputs per model call. An update with B images makes
            ``ceil(B J' / internal_batch_size)`` calls, J' = J (J + 1 with the trapezoid or ``return_curves``),
            plus ``ceil(B / internal_batch_size)`` on the clean inputs when ``target`` is None. Perturbed images
            are built chunk by chunk, so memory is bounded by this number.
        return_curves: also keep every sample's curve (a ``cat`` state); ``compute()`` then returns
            ``{"auc": mean AUC, "curves": (N, J + 1)}``, column j being the score after ``n_j = min(j k, n)``
            cells (column 0 the unperturbed start). All updates must then give curves of the same length.
        kwargs: passed to :class:`torchmetrics.Metric`.
"""


class DeletionAUC(_PerturbationCurve):
    __doc__ = (
        """Deletion AUC: the area under the target score as the most salient cells are replaced by a baseline.

    Lower is better (a faithful map removes what the model uses first). Higher saliency means more important;
    I-GOS masks are "salient = low", so pass ``1 - M``. Step j perturbs ``x_j = x ⊙ (1 − U_j) + b ⊙ U_j``,
    ``U_j`` being the first ``n_j`` ranked cells upsampled bilinearly (align_corners=True) to the input.
    A constant map (the all-zero Grad-CAM of a model whose output ignores its input) ranks no cell above
    another: its row is skipped and counted in ``n_skipped``. States: ``auc_sum``, ``count``, ``n_skipped``
    (sum); optional ``curves`` (cat, one row per scored sample).
"""
        + _CURVE_ARGS
        + """
    Example:
        >>> import torch
        >>> from lightning_xai.metrics import DeletionAUC
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> metric = DeletionAUC(model, resolution=4)
        >>> metric.update(torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8), target=torch.tensor([0, 3]))
        >>> bool(0 <= metric.compute() <= 1)
        True
    """
    )
    higher_is_better = False
    _mode = "deletion"


class InsertionAUC(_PerturbationCurve):
    __doc__ = (
        """Insertion AUC: the area under the target score as the most salient cells are restored on a baseline.

    Higher is better (a faithful map brings back what the model uses first). Higher saliency means more
    important; I-GOS masks are "salient = low", so pass ``1 - M``. Step j scores
    ``x_j = b ⊙ (1 − U_j) + x ⊙ U_j``, ``U_j`` being the first ``n_j`` ranked cells upsampled bilinearly
    (align_corners=True) to the input. A constant map is skipped and counted in ``n_skipped``. States:
    ``auc_sum``, ``count``, ``n_skipped`` (sum); optional ``curves`` (cat, one row per scored sample).
"""
        + _CURVE_ARGS
        + """
    Example:
        >>> import torch
        >>> from lightning_xai.metrics import InsertionAUC
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> metric = InsertionAUC(model, preset="rise", return_curves=True)
        >>> metric.update(torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8), target=1)
        >>> out = metric.compute()
        >>> out["curves"].shape  # 8 rows of pixels, one per step, plus the start
        torch.Size([2, 9])
    """
    )
    higher_is_better = True
    _mode = "insertion"


class _ConfidenceMetric(_ForwardHolder, Metric):
    is_differentiable = False
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    count: Tensor

    def __init__(
        self,
        forward_func: Callable[..., Any],
        *,
        normalize: Normalize = "minmax",
        form: ConfidenceForm = "standard",
        channel_reduction: ChannelReduction = "sum",
        score: Score = "softmax",
        force_eval: bool = True,
        internal_batch_size: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_confidence_args(normalize, form, score, internal_batch_size)
        check_in_choices("channel_reduction", channel_reduction, ("sum", "sum_abs", "max_abs"))
        self._set_forward(forward_func)
        self.normalize = normalize
        self.form = form
        self.channel_reduction = channel_reduction
        self.score = score
        self.force_eval = bool(force_eval)
        self.internal_batch_size = internal_batch_size
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def _scores(self, inputs: Tensor, attributions: Tensor, target: object) -> tuple[Tensor, Tensor]:
        return _confidence_update(
            self._model_forward,
            inputs,
            attributions,
            target,
            normalize=self.normalize,
            form=self.form,
            channel_reduction=self.channel_reduction,
            score=self.score,
            force_eval=self.force_eval,
            internal_batch_size=self.internal_batch_size,
        )


_CONFIDENCE_ARGS = """
    Args:
        forward_func: a model or function returning (B, K) logits, held without being registered.
        normalize: per-sample normalisation of the map (after bilinear resizing to the input) into E:
            ``"minmax"`` (default; a constant map gives E = 0), ``"max"`` (divide by the maximum; maps must be
            non-negative) or ``"none"`` (use the map as given).
        form: ``"standard"``: o is the score of the target class on x̃; ``"reference"`` (ADVISE code): o is the
            top score on x̃, ``max_k score_k(x̃)``.
        channel_reduction: how (B, C, H, W) maps become one map: ``"sum"``, ``"sum_abs"`` or ``"max_abs"``.
        score: ``"softmax"`` (default) or ``"logit"``.
        force_eval: run the model in eval mode; flags are restored afterwards, also on errors.
        internal_batch_size: images per model call; an update makes ``2 ceil(B / internal_batch_size)`` calls.
        kwargs: passed to :class:`torchmetrics.Metric`.
"""


class AverageDrop(_ConfidenceMetric):
    __doc__ = (
        """Average Drop (Grad-CAM++): ``mean_i max(0, y_c − o_c) / (y_c + 1e-7)``, lower is better.

    ``y_c`` is the target score on x, ``o_c`` on the explanation-masked ``x̃ = E ⊙ x`` (the baseline is 0 in
    model-input space, as in torch-cam). Target None is the argmax on x. States: ``drop_sum``, ``count``.
"""
        + _CONFIDENCE_ARGS
        + """
    Example:
        >>> import torch
        >>> from lightning_xai.metrics import AverageDrop
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> metric = AverageDrop(model)
        >>> metric.update(torch.rand(2, 3, 8, 8), torch.rand(2, 4, 4))
        >>> bool(0 <= metric.compute() <= 1)
        True
    """
    )
    higher_is_better = False
    drop_sum: Tensor

    def __init__(self, forward_func: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(forward_func, **kwargs)
        self.add_state("drop_sum", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, inputs: Tensor, attributions: Tensor, target: object = None) -> None:
        """Score a batch: ``inputs`` (B, C, H, W), ``attributions`` (B, H, W) / (B, 1 or C, h, w), ``target``."""
        y, o = self._scores(inputs, attributions, target)
        self.drop_sum += _average_drop_update(y, o).sum().to(self.drop_sum)
        self.count += y.numel()

    def compute(self) -> Tensor:
        return mean_compute(self.drop_sum, self.count)


class IncreaseInConfidence(_ConfidenceMetric):
    __doc__ = (
        """Increase in Confidence (Grad-CAM++): the fraction of samples with ``o_c > y_c``, higher is better.

    ``y_c`` is the target score on x, ``o_c`` on the explanation-masked ``x̃ = E ⊙ x``. States: ``inc_sum``,
    ``count``.
"""
        + _CONFIDENCE_ARGS
        + """
    Example:
        >>> import torch
        >>> from lightning_xai.metrics import IncreaseInConfidence
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> metric = IncreaseInConfidence(model, normalize="max")
        >>> metric.update(torch.rand(2, 3, 8, 8), torch.rand(2, 4, 4), target=[0, 1])
        >>> bool(0 <= metric.compute() <= 1)
        True
    """
    )
    higher_is_better = True
    inc_sum: Tensor

    def __init__(self, forward_func: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(forward_func, **kwargs)
        self.add_state("inc_sum", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, inputs: Tensor, attributions: Tensor, target: object = None) -> None:
        """Score a batch: ``inputs`` (B, C, H, W), ``attributions`` (B, H, W) / (B, 1 or C, h, w), ``target``."""
        y, o = self._scores(inputs, attributions, target)
        self.inc_sum += _increase_in_confidence_update(y, o).sum().to(self.inc_sum)
        self.count += y.numel()

    def compute(self) -> Tensor:
        return mean_compute(self.inc_sum, self.count)
