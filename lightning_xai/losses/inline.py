"""Loss functions called inside ``training_step``: intercepted while a tap is open."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .per_sample import _reductions

if TYPE_CHECKING:
    from .tap import LossTap

#: Loss functions intercepted inside ``training_step`` when the module keeps no loss attribute.
INLINE_LOSSES = (
    F.cross_entropy,
    F.nll_loss,
    F.binary_cross_entropy,
    F.binary_cross_entropy_with_logits,
    F.mse_loss,
    F.l1_loss,
    F.smooth_l1_loss,
    F.huber_loss,
    F.kl_div,
    F.soft_margin_loss,
    F.multilabel_soft_margin_loss,
    F.multi_margin_loss,
    F.poisson_nll_loss,
    F.gaussian_nll_loss,
    F.hinge_embedding_loss,
)
_INLINE_SET = frozenset(INLINE_LOSSES)
_SIGNATURES = {fn: inspect.signature(fn) for fn in INLINE_LOSSES}


class _TappedFunction:
    """Stands in for a function-valued loss attribute while tapped."""

    def __init__(self, tap: LossTap, original: Callable[..., Tensor]) -> None:
        self.tap = tap
        self.original = original

    def __call__(self, input: Tensor, target: Any, *args: Any, **kwargs: Any) -> Tensor:
        if self.tap.active:
            self.tap.step_calls += 1
        if not self.tap.wants_call():
            return self.original(input, target, *args, **kwargs)
        return self.tap.compute(input, target, *args, **kwargs)


def _loss_name(fn: Callable[..., Any]) -> str:
    return f"F.{getattr(fn, '__name__', fn)}"


class _InlineLossMode(TorchFunctionMode):
    """Active around ``training_step`` of a module without a loss attribute: routes the calls of
    :data:`INLINE_LOSSES` to the tap (torch runs this handler with the mode off, so nothing recurses)."""

    def __init__(self, tap: LossTap) -> None:
        super().__init__()
        self.tap = tap

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func in _INLINE_SET:
            return self.tap._inline_call(func, args, kwargs)
        return func(*args, **kwargs)


def ineligible_call(
    func: Callable[..., Tensor],
    input: Any,
    target: Any,
    options: dict,
    batch_size: int | None,
    batch_target: Any,
) -> str | None:
    """Why this loss call is not the batch's training loss, or None when it is."""
    if options.get("size_average") is not None or options.get("reduce") is not None:
        return "legacy `size_average` / `reduce` arguments"
    reduction = options.get("reduction", "mean")
    if reduction not in _reductions(func is F.kl_div):
        return f"reduction={reduction!r}"
    if not isinstance(input, Tensor) or input.ndim == 0:
        return "input is not a batch"
    if batch_size is not None and input.shape[0] != batch_size:
        return f"input batch size {input.shape[0]} ≠ {batch_size}"
    ref = batch_target
    if not isinstance(ref, Tensor):
        return None
    if not isinstance(target, Tensor):
        return "target is not a tensor"
    ref = ref.to(target.device)
    if target.shape == ref.shape and torch.equal(target, ref):
        return None
    if (
        target.ndim == ref.ndim + 1
        and target.shape[:-1] == ref.shape
        and target.is_floating_point()
        and not ref.is_floating_point()
        and torch.equal(target.argmax(-1), ref)
    ):
        return None
    return "target is not the batch's labels"
