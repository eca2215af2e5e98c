"""What every attribution class of the package shares in its constructor: a callable model, and for the methods
that need pixels (a black baseline, a masked image, a displayed image) one ``normalization`` argument."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._checks import describe
from .._deprecation import warn_deprecated
from ..explain import Normalization


def check_forward_func(forward_func: object) -> None:
    if not callable(forward_func):
        raise TypeError(f"`forward_func` must be a model or a callable, got {describe(forward_func)}")


class NormalizedAttribution:
    """Mixin, placed before the Captum base class, of the methods constructed as
    ``Method(forward_func, normalization=None)``; ``input_normalization=`` is the deprecated spelling."""

    normalization: Normalization | None

    def __init__(
        self,
        forward_func: Callable[..., Any],
        normalization: object = None,
        *,
        input_normalization: object = None,
    ) -> None:
        check_forward_func(forward_func)
        super().__init__(forward_func)  # type: ignore[call-arg]
        if input_normalization is not None:
            if normalization is not None:
                raise ValueError("pass `normalization` or the deprecated `input_normalization`, not both")
            warn_deprecated("input_normalization=", "normalization=", stacklevel=4)
            normalization = input_normalization
        self.normalization = Normalization.of(normalization)

    @property
    def input_normalization(self) -> tuple[Tensor, Tensor] | None:
        """Deprecated: ``normalization`` as a pair of float64 tensors."""
        warn_deprecated(f"{type(self).__name__}.input_normalization", f"{type(self).__name__}.normalization")
        norm = self.normalization
        return None if norm is None else (torch.tensor(norm.mean).double(), torch.tensor(norm.std).double())
