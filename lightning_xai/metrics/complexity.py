"""Complexity metrics as torchmetrics ``Metric``s: ``Sparseness`` (Gini index) and ``Complexity`` (entropy).

Both follow Quantus; the math is in :mod:`lightning_xai.metrics.functional.complexity`. States are sums and
counts reduced with ``sum``; the optional per-sample ``scores`` are a ``cat`` state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from .._checks import check_in_choices
from ._common import ChannelReduction, mean_compute, warn_all_skipped
from .functional.complexity import _complexity_update, _sparseness_update

__all__ = ["Complexity", "Sparseness"]

_REDUCTIONS = ("none", "sum", "sum_abs", "max_abs")


class _PerSampleMean(Metric):
    """Mean of per-sample scores with a skip count and, on request, the scores themselves."""

    is_differentiable = False
    full_state_update = False
    _name = "score"

    score_sum: Tensor
    count: Tensor
    n_skipped: Tensor

    def __init__(
        self, channel_reduction: ChannelReduction = "none", return_per_sample: bool = False, **kwargs: Any
    ) -> None:
        check_in_choices("channel_reduction", channel_reduction, _REDUCTIONS)
        super().__init__(**kwargs)
        self.channel_reduction = channel_reduction
        self.return_per_sample = return_per_sample
        self.add_state("score_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_skipped", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        if return_per_sample:
            self.add_state("scores", [], dist_reduce_fx="cat")

    def _scores(self, attributions: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def update(self, attributions: Tensor) -> None:
        """Score a batch of (B,H,W), (B,1,H,W) or (B,C,H,W) attributions."""
        scores, valid = self._scores(attributions)
        self.score_sum += scores[valid].sum().to(self.score_sum.dtype)
        self.count += valid.sum()
        self.n_skipped += (~valid).sum()
        if self.return_per_sample:
            # Skipped samples keep their place as NaN, so the scores line up with the inputs.
            self.scores.append(torch.where(valid, scores, torch.nan).to(self.score_sum.dtype))

    def compute(self) -> Tensor | dict[str, Tensor]:
        warn_all_skipped(type(self).__name__, self.n_skipped, self.count, reason="an all-zero map")
        mean = mean_compute(self.score_sum, self.count)
        if not self.return_per_sample:
            return mean
        scores = dim_zero_cat(self.scores) if len(self.scores) else self.score_sum.new_zeros(0)
        return {self._name: mean, "scores": scores}


class Sparseness(_PerSampleMean):
    """Sparseness of explanations as a Gini index (Chalasani et al., arXiv 1810.06583), as in Quantus.

    Per sample, every element is flattened and ``a = |attr| / max |attr| + 1e-7`` is sorted ascending;
    ``G = Σ_i (2i − n − 1) a_(i) / (n Σ_i a_(i))``. It lies in [0, (n−1)/n]: 0 for a constant map,
    ≈ (n−1)/n for a one-hot map. An all-zero map has no distribution to be sparse or not (0/0, which
    Quantus' epsilon turns into 0): it is skipped and counted in ``n_skipped``; ``compute()`` is NaN, with a
    warning, when every map was. Quantus scales by the batch maximum instead of the sample's; the Gini index
    is scale-invariant, so the two differ by < 1e-6.

    Args:
        channel_reduction: ``"none"`` (default; flatten every element as Quantus does), ``"sum"``,
            ``"sum_abs"`` or ``"max_abs"``.
        return_per_sample: keep the per-sample scores (a ``cat`` state, NaN for skipped maps);
            ``compute()`` then returns ``{"sparseness": mean, "scores": (N,)}``.

    States: ``score_sum``, ``count``, ``n_skipped``; optional ``scores``.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics import Sparseness
        >>> one_hot = torch.zeros(1, 1, 2, 2)
        >>> one_hot[0, 0, 1, 1] = -3.0
        >>> metric = Sparseness()
        >>> metric.update(torch.cat([one_hot, torch.ones(1, 1, 2, 2)]))
        >>> metric.compute()  # (3/4 + 0) / 2
        tensor(0.3750)
    """

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0
    _name = "sparseness"

    def _scores(self, attributions: Tensor) -> tuple[Tensor, Tensor]:
        return _sparseness_update(attributions, self.channel_reduction)


class Complexity(_PerSampleMean):
    """Complexity of explanations as the entropy of their magnitudes (Bhatt et al., arXiv 2005.00631), as in
    Quantus.

    Per sample, every element is flattened, ``a = |attr| / max |attr|``, ``p = a / Σ a`` and
    ``H = −Σ_i p_i log(p_i + 1e-12)``. It lies in [0, log n]: log n for a constant map, 0 for a one-hot map;
    lower is simpler. An all-zero map has no distribution (NaN in Quantus): it is skipped and counted in
    ``n_skipped``; ``compute()`` is NaN, with a warning, when every map was.

    Args:
        channel_reduction: ``"none"`` (default; flatten every element as Quantus does), ``"sum"``,
            ``"sum_abs"`` or ``"max_abs"``.
        return_per_sample: keep the per-sample scores (a ``cat`` state, NaN for skipped maps);
            ``compute()`` then returns ``{"complexity": mean, "scores": (N,)}``.

    States: ``score_sum``, ``count``, ``n_skipped``; optional ``scores``.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics import Complexity
        >>> metric = Complexity()
        >>> metric.update(torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)]))
        >>> metric.compute(), metric.n_skipped  # log 4 for the constant map; the zero map is skipped
        (tensor(1.3863), tensor(1))
    """

    higher_is_better = False
    plot_lower_bound = 0.0
    _name = "complexity"

    def _scores(self, attributions: Tensor) -> tuple[Tensor, Tensor]:
        return _complexity_update(attributions, self.channel_reduction)
