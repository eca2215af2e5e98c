"""``ExplanationConsistency``: mean similarity of two explanations of the same samples, as a torchmetrics
``Metric``. The math is in :mod:`lightning_xai.metrics.functional.consistency`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from ._common import ChannelReduction, mean_compute
from .functional.consistency import (
    NonNeg,
    Similarity,
    _check_consistency_args,
    _explanation_consistency_update,
)

__all__ = ["ExplanationConsistency"]


class ExplanationConsistency(Metric):
    """Mean similarity of two explanations of the same samples (the ``E`` of ECE, arXiv 2408.04600).

    ``update(attributions_a, attributions_b, agree=None)`` takes two maps of the same samples, e.g. of clean
    inputs and of their background-attacked copies (``lightning_xai.explain.background_pgd``). Channels are
    reduced, ``nonneg`` is applied, and each pair is scored:

    - ``"cosine"`` (default): ``⟨a,b⟩ / (‖a‖‖b‖)``, in [0, 1] for non-negative maps; a norm ≤ ``eps``
      gives 0 and is counted in ``n_degenerate``;
    - ``"pearson"``: the raw correlation ρ ∈ [−1, 1]; a constant map gives 0 (counted likewise);
    - ``"ssim"``: torchmetrics' SSIM of the per-sample max-normalised (B,1,H,W) maps with data range 1.

    The optional boolean ``agree`` (B,) multiplies the score (prediction agreement).

    Args:
        similarity: ``"cosine"``, ``"pearson"`` or ``"ssim"``.
        nonneg: ``"relu"`` (default), ``"abs"`` or ``"none"``.
        channel_reduction: ``"sum"``, ``"sum_abs"`` or ``"max_abs"`` for C > 1 attribution channels.
        eps: norms at or below it count as zero (cosine, Pearson).
        ssim_kwargs: ``gaussian_kernel``, ``sigma``, ``kernel_size``, ``k1``, ``k2`` for the SSIM (maps must
            be larger than the window's half-width, 5 px by default).
        return_per_sample: keep the per-sample scores (a ``cat`` state); ``compute()`` then returns
            ``{"consistency": mean, "scores": (N,)}``.

    States: ``sum``, ``count``, ``n_degenerate``; optional ``scores``. ``compute()`` is NaN before any sample.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics import ExplanationConsistency
        >>> a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]])
        >>> b = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[1.0, 0.0], [0.0, 0.0]]])
        >>> metric = ExplanationConsistency(return_per_sample=True)
        >>> metric.update(a, b)
        >>> out = metric.compute()
        >>> out["scores"], out["consistency"]  # cos 0 and 45 degrees
        (tensor([1.0000, 0.7071]), tensor(0.8536))
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    # Pearson, SSIM and signed maps can score below 0; the default (cosine, relu) lies in [0, 1].
    plot_lower_bound = -1.0
    plot_upper_bound = 1.0

    sum: Tensor
    count: Tensor
    n_degenerate: Tensor

    def __init__(
        self,
        similarity: Similarity = "cosine",
        nonneg: NonNeg = "relu",
        channel_reduction: ChannelReduction = "sum",
        eps: float = 1e-8,
        ssim_kwargs: Mapping[str, Any] | None = None,
        return_per_sample: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_consistency_args(similarity, nonneg, channel_reduction, eps, ssim_kwargs)
        super().__init__(**kwargs)
        self.similarity = similarity
        self.nonneg = nonneg
        self.channel_reduction = channel_reduction
        self.eps = eps
        self.ssim_kwargs = dict(ssim_kwargs or {})
        self.return_per_sample = return_per_sample
        self.add_state("sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_degenerate", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        if return_per_sample:
            self.add_state("scores", [], dist_reduce_fx="cat")

    def update(self, attributions_a: Tensor, attributions_b: Tensor, agree: Tensor | None = None) -> None:
        """Score a batch of pairs: two (B,…) maps of the same shape and an optional (B,) bool ``agree``."""
        scores, degenerate = _explanation_consistency_update(
            attributions_a,
            attributions_b,
            agree,
            similarity=self.similarity,
            nonneg=self.nonneg,
            channel_reduction=self.channel_reduction,
            eps=self.eps,
            ssim_kwargs=self.ssim_kwargs,
        )
        self.sum += scores.sum().to(self.sum.dtype)
        self.count += scores.numel()
        self.n_degenerate += degenerate.sum()
        if self.return_per_sample:
            self.scores.append(scores.to(self.sum.dtype))

    def compute(self) -> Tensor | dict[str, Tensor]:
        mean = mean_compute(self.sum, self.count)
        if not self.return_per_sample:
            return mean
        scores = dim_zero_cat(self.scores) if len(self.scores) else self.sum.new_zeros(0)
        return {"consistency": mean, "scores": scores}
