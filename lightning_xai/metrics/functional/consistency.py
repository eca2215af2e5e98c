"""Explanation consistency: the similarity of two explanations of the same samples (the ``E`` of ECE).

Typically the maps of clean inputs and of background-attacked copies (``lightning_xai.explain.background_pgd``).
The consistency-reweighting callback calls :func:`explanation_consistency` with ``reduction="none"`` for
per-sample scores; the ``Metric`` in :mod:`lightning_xai.metrics.consistency` shares the same helpers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from ..._checks import check_in_choices, check_positive, check_tensor, describe
from .._common import ChannelReduction, acc_dtype, to_maps

Similarity = Literal["cosine", "pearson", "ssim"]
NonNeg = Literal["relu", "abs", "none"]
Reduction = Literal["mean", "sum", "none"]

__all__ = ["explanation_consistency"]

_SSIM_ARGS = ("gaussian_kernel", "sigma", "kernel_size", "k1", "k2")


def _check_consistency_args(
    similarity: str, nonneg: str, channel_reduction: str, eps: float, ssim_kwargs: Mapping[str, Any] | None
) -> None:
    check_in_choices("similarity", similarity, ("cosine", "pearson", "ssim"))
    check_in_choices("nonneg", nonneg, ("relu", "abs", "none"))
    check_in_choices("channel_reduction", channel_reduction, ("sum", "sum_abs", "max_abs"))
    check_positive("eps", eps, allow_zero=True)
    if ssim_kwargs is not None:
        if not isinstance(ssim_kwargs, Mapping):
            raise TypeError(f"`ssim_kwargs` must be a dict or None, got {describe(ssim_kwargs)}")
        unknown = sorted(set(ssim_kwargs) - set(_SSIM_ARGS))
        if unknown:
            raise ValueError(f"`ssim_kwargs` accepts the keys {list(_SSIM_ARGS)}, got unknown keys {unknown}")


def _ssim_padding(ssim_kwargs: Mapping[str, Any]) -> int:
    """The reflect padding torchmetrics' SSIM applies, which must stay below the map size."""
    if ssim_kwargs.get("gaussian_kernel", True):
        sigma = ssim_kwargs.get("sigma", 1.5)
        sigmas = sigma if isinstance(sigma, (list, tuple)) else [sigma]
        sizes = [int(3.5 * s + 0.5) * 2 + 1 for s in sigmas]
    else:
        size = ssim_kwargs.get("kernel_size", 11)
        sizes = list(size) if isinstance(size, (list, tuple)) else [size]
    return max(sizes) // 2


def _format_agree(agree: object, batch_size: int, device: torch.device) -> Tensor | None:
    if agree is None:
        return None
    check_tensor("agree", agree)
    assert isinstance(agree, Tensor)
    if agree.is_floating_point() and not bool(((agree == 0) | (agree == 1)).all()):
        raise ValueError(f"`agree` must be boolean (or 0/1), got {describe(agree)}")
    agree = agree.reshape(-1) != 0 if agree.dtype != torch.bool else agree.reshape(-1)
    if agree.numel() != batch_size:
        raise ValueError(f"`agree` must hold one flag per sample ({batch_size}), got {agree.numel()}")
    return agree.to(device)


def _prepare_pair(
    attributions_a: Tensor, attributions_b: Tensor, nonneg: NonNeg, channel_reduction: ChannelReduction
) -> tuple[Tensor, Tensor]:
    """Validated (B,H,W) maps of both explanations after the channel reduction and ``nonneg``."""
    maps_a = to_maps(attributions_a, channel_reduction, name="attributions_a")
    maps_b = to_maps(attributions_b, channel_reduction, name="attributions_b")
    if maps_a.shape != maps_b.shape:
        raise ValueError(
            f"`attributions_a` and `attributions_b` must have the same shape after channel reduction, got "
            f"{tuple(maps_a.shape)} and {tuple(maps_b.shape)}"
        )
    if maps_a.device != maps_b.device:
        raise ValueError(f"`attributions_b` is on {maps_b.device} but `attributions_a` is on {maps_a.device}")
    if nonneg == "relu":
        return maps_a.clamp_min(0), maps_b.clamp_min(0)
    if nonneg == "abs":
        return maps_a.abs(), maps_b.abs()
    return maps_a, maps_b


def _cosine(flat_a: Tensor, flat_b: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Row-wise cosine (B,) and the rows where a norm is below ``eps`` (scored 0)."""
    norm_a = flat_a.norm(dim=1)
    norm_b = flat_b.norm(dim=1)
    degenerate = (norm_a <= eps) | (norm_b <= eps)
    denom = (norm_a * norm_b).clamp_min(torch.finfo(flat_a.dtype).tiny)
    return torch.where(degenerate, 0.0, (flat_a * flat_b).sum(1) / denom), degenerate


def _max_normalised(maps: Tensor) -> Tensor:
    """(B,1,H,W) maps divided by their per-sample max |value|; an all-zero map stays zero."""
    top = maps.flatten(1).abs().amax(1).view(-1, 1, 1)
    return torch.where(top > 0, maps / top.clamp_min(torch.finfo(maps.dtype).tiny), maps)[:, None]


def _explanation_consistency_update(
    attributions_a: Tensor,
    attributions_b: Tensor,
    agree: Tensor | None = None,
    *,
    similarity: Similarity = "cosine",
    nonneg: NonNeg = "relu",
    channel_reduction: ChannelReduction = "sum",
    eps: float = 1e-8,
    ssim_kwargs: Mapping[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample consistency (B,) and degenerate flags (B,) (a norm below ``eps``, scored 0)."""
    maps_a, maps_b = _prepare_pair(attributions_a, attributions_b, nonneg, channel_reduction)
    flags = _format_agree(agree, maps_a.shape[0], maps_a.device)
    # float64 so that E = 1 holds to 1e-6 for identical maps (ece.md §2.4).
    dtype = acc_dtype(maps_a.device)
    maps_a, maps_b = maps_a.to(dtype), maps_b.to(dtype)
    if similarity == "ssim":
        kwargs = dict(ssim_kwargs or {})
        pad = _ssim_padding(kwargs)
        if min(maps_a.shape[-2:]) <= pad:
            raise ValueError(
                f"similarity='ssim' needs maps larger than {pad} px on each side for its window (maps are "
                f"{tuple(maps_a.shape[-2:])}); pass e.g. ssim_kwargs={{'sigma': 0.5}} or upsample the maps"
            )
        scores = structural_similarity_index_measure(
            _max_normalised(maps_a), _max_normalised(maps_b), data_range=1.0, reduction="none", **kwargs
        )
        degenerate = torch.zeros_like(scores, dtype=torch.bool)
    else:
        flat_a, flat_b = maps_a.flatten(1), maps_b.flatten(1)
        if similarity == "pearson":
            flat_a = flat_a - flat_a.mean(1, keepdim=True)
            flat_b = flat_b - flat_b.mean(1, keepdim=True)
        scores, degenerate = _cosine(flat_a, flat_b, eps)
    if flags is not None:
        scores = scores * flags.to(scores.dtype)
    return scores, degenerate


def _reduce(scores: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "none":
        return scores
    return scores.sum() if reduction == "sum" else scores.mean()


def explanation_consistency(
    attributions_a: Tensor,
    attributions_b: Tensor,
    agree: Tensor | None = None,
    *,
    similarity: Similarity = "cosine",
    nonneg: NonNeg = "relu",
    channel_reduction: ChannelReduction = "sum",
    eps: float = 1e-8,
    ssim_kwargs: Mapping[str, Any] | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Similarity of two explanations of the same samples (the ``E`` of ECE, arXiv 2408.04600).

    Both maps are reduced over channels, made non-negative by ``nonneg`` and compared per sample:

    - ``"cosine"``: ``⟨a,b⟩ / (‖a‖‖b‖)`` on the flattened maps, in [0, 1] for non-negative maps;
    - ``"pearson"``: the raw correlation ρ ∈ [−1, 1];
    - ``"ssim"``: torchmetrics' SSIM of the per-sample max-normalised (B,1,H,W) maps, data range 1.

    For cosine and Pearson, a (centred) map whose norm is ≤ ``eps`` makes the score 0 (maximally
    inconsistent) rather than 0/0. ``agree`` multiplies each score (e.g. ``argmax f(x̂) == argmax f(x)``).
    Computed in float64 (float32 on MPS) and returned in the attributions' dtype, at least float32.

    Args:
        attributions_a: (B,H,W), (B,1,H,W) or (B,C,H,W) maps, e.g. of the clean inputs.
        attributions_b: maps of the same samples and shape, e.g. of the attacked inputs.
        agree: optional (B,) bool (or 0/1) multiplier.
        similarity: ``"cosine"`` (default), ``"pearson"`` or ``"ssim"``.
        nonneg: ``"relu"`` (default), ``"abs"`` or ``"none"``, applied after the channel reduction.
        channel_reduction: ``"sum"``, ``"sum_abs"`` or ``"max_abs"`` for C > 1.
        eps: norms at or below it count as zero.
        ssim_kwargs: ``gaussian_kernel``, ``sigma``, ``kernel_size``, ``k1``, ``k2`` for the SSIM.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` for the (B,) per-sample scores.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics.functional import explanation_consistency
        >>> a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]])
        >>> b = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]])
        >>> explanation_consistency(a, b, reduction="none")
        tensor([1., 0.])
    """
    _check_consistency_args(similarity, nonneg, channel_reduction, eps, ssim_kwargs)
    check_in_choices("reduction", reduction, ("mean", "sum", "none"))
    scores, _ = _explanation_consistency_update(
        attributions_a,
        attributions_b,
        agree,
        similarity=similarity,
        nonneg=nonneg,
        channel_reduction=channel_reduction,
        eps=eps,
        ssim_kwargs=ssim_kwargs,
    )
    return _reduce(scores, reduction).to(torch.promote_types(attributions_a.dtype, torch.float32))
