"""Complexity metrics of a single explanation: sparseness (Gini index) and complexity (entropy), as in Quantus.

Per sample every element is flattened (no channel reduction by default, as Quantus does), and
``a = |attr| / max |attr|``. Quantus divides by the maximum of the whole batch instead; both metrics are
scale-invariant, so the two differ only through their epsilons (< 1e-6).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..._checks import check_in_choices
from .._common import ChannelReduction, acc_dtype, to_maps, warn_all_skipped

Reduction = Literal["mean", "sum", "none"]

__all__ = ["complexity", "sparseness"]


def _normalised_magnitudes(attributions: Tensor, channel_reduction: ChannelReduction = "none") -> Tensor:
    """(B, n) per-sample ``|attr| / max |attr|``; an all-zero map is left as zeros."""
    maps = to_maps(attributions, channel_reduction)
    flat = maps.flatten(1).to(acc_dtype(maps.device)).abs()
    top = flat.amax(1, keepdim=True)
    return torch.where(top > 0, flat / top.clamp_min(torch.finfo(flat.dtype).tiny), flat)


def _sparseness_update(
    attributions: Tensor, channel_reduction: ChannelReduction = "none"
) -> tuple[Tensor, Tensor]:
    """Gini index per sample (B,): ``Σ_i (2i − n − 1) a_(i) / (n Σ_i a_(i))`` on ``a + 1e-7`` sorted ascending,
    and validity (B,): an all-zero map has no distribution to be sparse or not (0/0; Quantus' epsilon turns it
    into 0, "not sparse at all") and is invalid."""
    magnitudes = _normalised_magnitudes(attributions, channel_reduction)
    values = (magnitudes + 1e-7).sort(1).values
    n = values.shape[1]
    weights = 2 * torch.arange(1, n + 1, device=values.device, dtype=values.dtype) - n - 1
    scores = (values * weights).sum(1) / (n * values.sum(1))
    return scores, magnitudes.amax(1) > 0


def _complexity_update(
    attributions: Tensor, channel_reduction: ChannelReduction = "none"
) -> tuple[Tensor, Tensor]:
    """Entropy per sample (B,) ``−Σ p log(p + 1e-12)`` with ``p = a / Σ a``, and validity (B,): all-zero maps
    (NaN in Quantus) are invalid."""
    values = _normalised_magnitudes(attributions, channel_reduction)
    total = values.sum(1, keepdim=True)
    valid = total[:, 0] > 0
    p = values / total.clamp_min(torch.finfo(values.dtype).tiny)
    return -(p * torch.log(p + 1e-12)).sum(1), valid


def _reduce(name: str, scores: Tensor, valid: Tensor, reduction: Reduction) -> Tensor:
    """Per-sample scores with NaN for the skipped (all-zero) maps, or the mean / sum of the others (NaN, with
    a warning, when every map was skipped)."""
    check_in_choices("reduction", reduction, ("mean", "sum", "none"))
    if reduction == "none":
        return torch.where(valid, scores, torch.nan).float()
    warn_all_skipped(name, (~valid).sum(), valid.sum(), reason="an all-zero map")
    if reduction == "sum":
        return scores[valid].sum().float() if bool(valid.any()) else scores.new_tensor(float("nan")).float()
    return scores[valid].mean().float()


def sparseness(
    attributions: Tensor, *, channel_reduction: ChannelReduction = "none", reduction: Reduction = "mean"
) -> Tensor:
    """Sparseness of explanations as a Gini index (Chalasani et al., arXiv 1810.06583; Quantus ``Sparseness``).

    Per sample, ``a = |attr| / max |attr| + 1e-7`` sorted ascending over all n elements, and
    ``G = Σ_i (2i − n − 1) a_(i) / (n Σ_i a_(i))`` ∈ [0, (n−1)/n]: 0 for a constant map, ≈ (n−1)/n for a
    one-hot map. An all-zero map has no distribution (0/0; Quantus scores it 0): it is left out of
    ``"mean"``/``"sum"`` and NaN with ``reduction="none"``.

    Args:
        attributions: (B,H,W), (B,1,H,W) or (B,C,H,W).
        channel_reduction: ``"none"`` (flatten every element, as Quantus), ``"sum"``, ``"sum_abs"``,
            ``"max_abs"``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` for the (B,) per-sample scores.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics.functional import sparseness
        >>> one_hot = torch.zeros(1, 1, 2, 2)
        >>> one_hot[0, 0, 0, 0] = 5.0
        >>> sparseness(torch.cat([one_hot, torch.ones(1, 1, 2, 2)]), reduction="none")
        tensor([0.7500, 0.0000])
    """
    check_in_choices("reduction", reduction, ("mean", "sum", "none"))
    scores, valid = _sparseness_update(attributions, channel_reduction)
    return _reduce("sparseness", scores, valid, reduction)


def complexity(
    attributions: Tensor, *, channel_reduction: ChannelReduction = "none", reduction: Reduction = "mean"
) -> Tensor:
    """Complexity of explanations as the entropy of their magnitudes (Bhatt et al., arXiv 2005.00631; Quantus
    ``Complexity``).

    Per sample, ``p = a / Σ a`` with ``a = |attr| / max |attr|`` over all n elements, and
    ``H = −Σ_i p_i log(p_i + 1e-12)`` ∈ [0, log n]: log n for a constant map, 0 for a one-hot map. Lower is
    simpler. An all-zero map has no distribution (NaN in Quantus): it is left out of ``"mean"``/``"sum"``
    (NaN, with a warning, when every map is all zero) and NaN with ``reduction="none"``.

    Args:
        attributions: (B,H,W), (B,1,H,W) or (B,C,H,W).
        channel_reduction: ``"none"`` (flatten every element, as Quantus), ``"sum"``, ``"sum_abs"``,
            ``"max_abs"``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` for the (B,) per-sample scores.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics.functional import complexity
        >>> complexity(torch.ones(1, 1, 2, 2))  # log 4
        tensor(1.3863)
    """
    check_in_choices("reduction", reduction, ("mean", "sum", "none"))
    scores, valid = _complexity_update(attributions, channel_reduction)
    return _reduce("complexity", scores, valid, reduction)
