"""Turning model outputs into logits and token sequences into spatial grids."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .._checks import check_tensor, describe


def logits_of(output: Any) -> Tensor:
    """Return the logits tensor of a model output.

    Accepts a tensor, a Hugging Face ``ModelOutput`` (or any mapping / object with ``logits``), or a tuple or
    list whose first element is the logits (HF models called with ``return_dict=False``).

    Example:
        >>> import torch
        >>> from transformers.modeling_outputs import SequenceClassifierOutput
        >>> logits_of(SequenceClassifierOutput(logits=torch.zeros(2, 3))).shape
        torch.Size([2, 3])
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        "the model's output must be a logits tensor, a ModelOutput with `logits`, or a tuple whose first "
        f"element is the logits; got {describe(output)}"
    )


def check_logits(logits: Tensor, batch_size: int | None = None) -> Tensor:
    """Check that a forward function returned (B, K) finite logits."""
    if (
        not isinstance(logits, Tensor)
        or logits.ndim != 2
        or (batch_size is not None and logits.shape[0] != batch_size)
    ):
        want = "(B, K)" if batch_size is None else f"(B, K) with B={batch_size}"
        raise ValueError(f"the forward function must return {want} logits, got {describe(logits)}")
    return check_tensor("the forward function's output", logits, floating=True)


def forward_module(forward_func: Callable[..., Any]) -> torch.nn.Module | None:
    """The module behind a forward function: the function itself, or what a wrapper holds as
    ``forward_func`` (Captum and :class:`~lightning_xai.models.LogitsForward` wrappers)."""
    seen: set[int] = set()
    current: object = forward_func
    while id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, torch.nn.Module):
            return current
        current = getattr(current, "forward_func", None)
        if current is None:
            return None
    return None


class LogitsForward:
    """Wrap a model or forward function so that calling it returns a logits tensor.

    The wrapped callable is kept, not copied; ``module`` is the wrapped model when it is an ``nn.Module``.

    Example:
        >>> import torch
        >>> f = LogitsForward(lambda x: (x.sum(dim=(2, 3)), None))
        >>> f(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        if isinstance(forward_func, LogitsForward):
            forward_func = forward_func.forward_func
        if not callable(forward_func):
            raise TypeError(
                f"`forward_func` must be callable (a model or function), got {describe(forward_func)}"
            )
        self.forward_func = forward_func

    @property
    def module(self) -> torch.nn.Module | None:
        """The model behind the wrapped callable (through further ``forward_func`` wrappers), or None."""
        return forward_module(self.forward_func)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return logits_of(self.forward_func(*args, **kwargs))


def infer_num_prefix_tokens(num_tokens: int, model: torch.nn.Module | None = None) -> int:
    """Number of leading non-patch tokens (class / distillation / register tokens).

    Read from a timm ViT's ``num_prefix_tokens`` when ``model`` has it; otherwise the smallest count (0 to 8)
    that leaves a square number of patch tokens.
    """
    if model is not None:
        for module in model.modules():
            count = getattr(module, "num_prefix_tokens", None)
            if isinstance(count, int):
                return count
    for prefix in range(0, 9):
        side = math.isqrt(num_tokens - prefix) if num_tokens > prefix else 0
        if side > 0 and side * side == num_tokens - prefix:
            return prefix
    raise ValueError(
        f"cannot lay {num_tokens} tokens out as a square grid after removing up to 8 prefix tokens; "
        "pass `num_prefix_tokens` and `grid_size`"
    )


def tokens_to_grid(
    tokens: Tensor,
    num_prefix_tokens: int | None = None,
    grid_size: tuple[int, int] | None = None,
    model: torch.nn.Module | None = None,
) -> Tensor:
    """Reshape ViT token features (B, N, C) into a spatial map (B, C, H, W), dropping the prefix tokens.

    Example:
        >>> import torch
        >>> tokens_to_grid(torch.zeros(2, 197, 8)).shape
        torch.Size([2, 8, 14, 14])
    """
    check_tensor("tokens", tokens, ndim=3, finite=False)
    batch, num_tokens, channels = tokens.shape
    if num_prefix_tokens is None:
        num_prefix_tokens = infer_num_prefix_tokens(num_tokens, model)
    patches = tokens[:, num_prefix_tokens:]
    if grid_size is None:
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise ValueError(
                f"{patches.shape[1]} patch tokens do not form a square grid; pass `grid_size=(H, W)`"
            )
        grid_size = (side, side)
    height, width = grid_size
    if height * width != patches.shape[1]:
        raise ValueError(
            f"`grid_size` {grid_size} does not match {patches.shape[1]} patch tokens "
            f"({num_tokens} tokens minus {num_prefix_tokens} prefix tokens)"
        )
    return patches.transpose(1, 2).reshape(batch, channels, height, width)
