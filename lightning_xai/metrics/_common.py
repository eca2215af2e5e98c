"""Input handling shared by every metric: attribution shapes, masks, targets and chunked model calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from .._checks import check_in_choices, check_nonempty_batch, check_same_device, check_tensor, describe
from ..explain import preserved_state
from ..models import LogitsForward
from ..models.scoring import Score, clean_scores

ChannelReduction = Literal["sum", "sum_abs", "max_abs", "none"]


def to_maps(
    attributions: Tensor, channel_reduction: ChannelReduction = "sum", name: str = "attributions"
) -> Tensor:
    """Bring attributions of shape (B,H,W), (B,1,H,W) or (B,C,H,W) to (B,H,W) float maps.

    C > 1 is reduced by ``channel_reduction``: ``"sum"`` (signed sum over channels), ``"sum_abs"``,
    ``"max_abs"``; ``"none"`` keeps (B,C,H,W) and is only accepted where a metric flattens every element.
    """
    check_in_choices("channel_reduction", channel_reduction, ("sum", "sum_abs", "max_abs", "none"))
    check_tensor(name, attributions, ndim=(3, 4))
    check_nonempty_batch(name, attributions)
    maps = attributions if attributions.is_floating_point() else attributions.float()
    if maps.ndim == 3 or channel_reduction == "none":
        return maps
    if maps.shape[1] == 1:
        return maps[:, 0]
    if channel_reduction == "sum":
        return maps.sum(1)
    if channel_reduction == "sum_abs":
        return maps.abs().sum(1)
    return maps.abs().amax(1)


def resize_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize (B,H,W) maps bilinearly (align_corners=False) to ``size``; unchanged when already that size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def check_masks(masks: Tensor, batch_size: int, name: str = "masks") -> Tensor:
    """Check binary masks (B,H,W) or (B,1,H,W) (bool or {0,1}) and return them as (B,H,W) bool."""
    check_tensor(name, masks, ndim=(3, 4))
    if masks.ndim == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"`{name}` must be (B,H,W) or (B,1,H,W), got {describe(masks)}")
        masks = masks[:, 0]
    if masks.shape[0] != batch_size:
        raise ValueError(
            f"`{name}` must have batch size {batch_size} (the attributions'), got {describe(masks)}"
        )
    if masks.dtype != torch.bool:
        if not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError(f"`{name}` must be binary (bool or values in {{0, 1}}), got {describe(masks)}")
        masks = masks != 0
    return masks


def resolve_target(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    target: object,
    *,
    score: Score = "softmax",
    internal_batch_size: int = 128,
) -> tuple[Tensor, Tensor]:
    """Format ``target`` (int, list, (B,) tensor or None = argmax on the clean input) and return it with the
    clean (B, K) scores."""
    return clean_scores(forward_func, inputs, target, score=score, internal_batch_size=internal_batch_size)


def model_context(forward_func: object, force_eval: bool):
    """Eval mode for the call (when asked) with every flag and hook restored afterwards."""
    return preserved_state(forward_func, eval_mode=force_eval)


def acc_dtype(device: torch.device) -> torch.dtype:
    # Sums over many pixels and ratios of large counts are formed in float64 wherever the device has it.
    return torch.float32 if device.type == "mps" else torch.float64


def mean_compute(total: Tensor, count: Tensor) -> Tensor:
    """``total / count`` as a float scalar; NaN when nothing was counted."""
    return (total.double() / count.double()).float() if total.device.type != "mps" else total / count


def warn_all_skipped(
    name: str, n_skipped: Tensor | int, scored: Tensor | int, reason: str = "a constant map or an empty mask"
) -> None:
    """Warn (on rank zero) when rows were given and every one was skipped, so that a NaN result is never
    silent. Before any ``update`` nothing was skipped: torchmetrics' own warning covers that case."""
    if int(scored) == 0 and int(n_skipped) > 0:
        rank_zero_warn(
            f"{name}: all {int(n_skipped)} rows were skipped ({reason}: nothing to score), so the result is NaN",
            UserWarning,
        )


def forward_of(forward_func: Callable[..., Any]) -> tuple[LogitsForward, torch.nn.Module | None]:
    forward = LogitsForward(forward_func)
    return forward, forward.module


def check_inputs_and_maps(
    inputs: Tensor, attributions: Tensor, channel_reduction: ChannelReduction
) -> tuple[Tensor, Tensor]:
    check_tensor("inputs", inputs, ndim=4, floating=True)
    if channel_reduction == "none":
        raise ValueError("`channel_reduction` must be 'sum', 'sum_abs' or 'max_abs' here, got 'none'")
    maps = to_maps(attributions, channel_reduction)
    if maps.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"`attributions` must have the inputs' batch size {inputs.shape[0]}, got {describe(attributions)}"
        )
    if attributions.ndim == 4 and attributions.shape[1] not in (1, inputs.shape[1]):
        raise ValueError(
            f"`attributions` must have 1 or {inputs.shape[1]} channels (the inputs'), got {describe(attributions)}"
        )
    check_same_device("attributions", attributions, inputs.device, "`inputs`")
    return inputs, maps


def at_least_float32(values: Tensor) -> Tensor:
    return values.float() if values.dtype in (torch.float16, torch.bfloat16) else values
