"""Average Drop and Increase in Confidence (Grad-CAM++): the model's score on the image weighted by its
explanation, ``x̃ = E ⊙ x``, against its score on the image."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from ..._checks import (
    check_in_choices,
    check_inputs_on_model_device,
    check_internal_batch_size,
    format_target,
)
from ...explain.avx import _average_drop_update
from ...models.scoring import Score, chunked_scores
from .._common import (
    ChannelReduction,
    at_least_float32,
    check_inputs_and_maps,
    forward_of,
    mean_compute,
    model_context,
    resize_maps,
    resolve_target,
)

Normalize = Literal["minmax", "max", "none"]
ConfidenceForm = Literal["standard", "reference"]


def check_confidence_args(normalize: str, form: str, score: str, internal_batch_size: int) -> None:
    check_in_choices("normalize", normalize, ("minmax", "max", "none"))
    check_in_choices("form", form, ("standard", "reference"))
    check_in_choices("score", score, ("softmax", "logit"))
    check_internal_batch_size(internal_batch_size, allow_none=False)


def _explanation_weights(maps: Tensor, normalize: Normalize) -> Tensor:
    """Per-sample normalisation of (B,H,W) maps into the weights E of x̃ = E ⊙ x."""
    if normalize == "none":
        return maps
    flat = maps.flatten(1)
    high = flat.amax(1)
    if normalize == "max":
        low = flat.amin(1)
        if bool((low < 0).any()):
            raise ValueError(
                "`normalize='max'` expects non-negative maps (e.g. ReLU'd CAMs), got a minimum of "
                f"{float(low.min()):.4g}; use normalize='minmax'"
            )
        scale = torch.where(high > 0, high, torch.ones_like(high))
        return maps / scale[:, None, None]
    low = flat.amin(1)
    span = high - low
    # A constant map carries no ranking: it keeps nothing (E = 0) rather than dividing by zero.
    safe = torch.where(span > 0, span, torch.ones_like(span))
    weights = (maps - low[:, None, None]) / safe[:, None, None]
    return torch.where((span > 0)[:, None, None], weights, torch.zeros_like(weights))


def _confidence_update(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    target: object,
    *,
    normalize: Normalize = "minmax",
    form: ConfidenceForm = "standard",
    channel_reduction: ChannelReduction = "sum",
    score: Score = "softmax",
    force_eval: bool = True,
    internal_batch_size: int = 128,
) -> tuple[Tensor, Tensor]:
    """Scores ``y_c`` on the clean inputs and ``o`` on x̃ = E ⊙ x (B,) each, in ``2 ceil(B / ibs)`` model calls.

    ``o`` is the score of class c (``form="standard"``) or the top score (``form="reference"``).
    """
    check_confidence_args(normalize, form, score, internal_batch_size)
    inputs, maps = check_inputs_and_maps(inputs, attributions, channel_reduction)
    batch = inputs.shape[0]
    format_target(target, batch, None, inputs.device)
    forward, module = forward_of(forward_func)
    check_inputs_on_model_device("inputs", inputs, module)
    weights = _explanation_weights(resize_maps(maps, tuple(inputs.shape[-2:])), normalize)
    with model_context(module, force_eval), torch.no_grad():
        formatted, clean = resolve_target(
            forward, inputs, target, score=score, internal_batch_size=internal_batch_size
        )
        masked = inputs * weights.unsqueeze(1).to(inputs.dtype)
        explained = chunked_scores(
            forward, masked, None, score=score, internal_batch_size=internal_batch_size
        )
    y = clean.gather(1, formatted[:, None])[:, 0]
    o = explained.amax(1) if form == "reference" else explained.gather(1, formatted[:, None])[:, 0]
    return at_least_float32(y), at_least_float32(o)


def _increase_in_confidence_update(y: Tensor, o: Tensor) -> Tensor:
    """Per-sample indicator ``o > y``."""
    return (o > y).float()


def average_drop(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    target: object = None,
    *,
    normalize: Normalize = "minmax",
    form: ConfidenceForm = "standard",
    channel_reduction: ChannelReduction = "sum",
    score: Score = "softmax",
    force_eval: bool = True,
    internal_batch_size: int = 128,
) -> Tensor:
    """Average Drop (Grad-CAM++) of a batch: ``mean_i max(0, y_c - o_c) / (y_c + 1e-7)`` (lower is better).
    See :class:`~lightning_xai.metrics.AverageDrop` for every argument.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics.functional import average_drop
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> value = average_drop(model, torch.rand(2, 3, 8, 8), torch.rand(2, 4, 4))
        >>> bool(0 <= value <= 1)
        True
    """
    y, o = _confidence_update(
        forward_func,
        inputs,
        attributions,
        target,
        normalize=normalize,
        form=form,
        channel_reduction=channel_reduction,
        score=score,
        force_eval=force_eval,
        internal_batch_size=internal_batch_size,
    )
    drops = _average_drop_update(y, o)
    return mean_compute(drops.sum(), torch.tensor(drops.numel(), device=drops.device))


def increase_in_confidence(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    target: object = None,
    *,
    normalize: Normalize = "minmax",
    form: ConfidenceForm = "standard",
    channel_reduction: ChannelReduction = "sum",
    score: Score = "softmax",
    force_eval: bool = True,
    internal_batch_size: int = 128,
) -> Tensor:
    """Increase in Confidence (Grad-CAM++) of a batch: the fraction of samples with ``o_c > y_c`` (higher is
    better). See :class:`~lightning_xai.metrics.IncreaseInConfidence` for every argument.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics.functional import increase_in_confidence
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> value = increase_in_confidence(model, torch.rand(2, 3, 8, 8), torch.rand(2, 4, 4))
        >>> bool(0 <= value <= 1)
        True
    """
    y, o = _confidence_update(
        forward_func,
        inputs,
        attributions,
        target,
        normalize=normalize,
        form=form,
        channel_reduction=channel_reduction,
        score=score,
        force_eval=force_eval,
        internal_batch_size=internal_batch_size,
    )
    increases = _increase_in_confidence_update(y, o)
    return mean_compute(increases.sum(), torch.tensor(increases.numel(), device=increases.device))
