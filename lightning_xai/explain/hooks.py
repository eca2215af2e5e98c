"""Forward hooks that are always removed: a layer's output kept for gradients, and a context manager that
registers a hook and removes it in ``finally`` (also when the forward raises)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from .._checks import describe


@contextmanager
def forward_hook(module: nn.Module, hook: Callable[..., Any]) -> Iterator[None]:
    """``module.register_forward_hook(hook)`` for the ``with`` block; the handle is removed on exit."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class ActivationTap:
    """Forward hook that keeps a layer's output (the first element of a tuple output) and makes sure it is part
    of the autograd graph even when every parameter before it is frozen."""

    def __init__(self) -> None:
        self.activation: Tensor | None = None

    def __call__(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        first = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(first, Tensor):
            raise TypeError(
                f"the Grad-CAM layer must output a tensor (or a tuple starting with one), got {describe(first)}"
            )
        replaced = None
        if not first.requires_grad:
            replaced = first.detach().requires_grad_(True)
            first = replaced
        self.activation = first
        if replaced is None:
            return None
        if isinstance(output, (tuple, list)):
            return type(output)((replaced, *output[1:]))
        return replaced
