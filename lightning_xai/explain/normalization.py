"""One value object for a model's per-channel input normalisation: pixels in [0, 1] ↔ model inputs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import describe
from .._deprecation import warn_deprecated

__all__ = ["IMAGENET", "Normalization", "resolve_normalization"]


@dataclass(frozen=True)
class Normalization:
    r"""``inputs = (pixels − mean) / std`` per channel, for pixels in [0, 1].

    Every method, metric and module that must know what a model input looks like in pixels (a black baseline,
    ADVISE's masked images, a displayed SAG) takes one of these under one argument name, ``normalization``;
    anything :meth:`of` accepts also works there: a ``(mean, std)`` pair or a ``{"mean", "std"}`` mapping. One
    value (a single number) applies to every channel.

    Example:
        >>> import torch
        >>> norm = Normalization.of(([0.5, 0.5, 0.5], [0.25, 0.25, 0.25]))
        >>> x = norm.normalize(torch.zeros(1, 3, 2, 2))
        >>> float(x[0, 0, 0, 0]), bool(torch.allclose(norm.denormalize(x), torch.zeros(1, 3, 2, 2)))
        (-2.0, True)
        >>> float(norm.black(x)[0, 0, 0, 0])
        -2.0
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        mean, std = (self._values(name, getattr(self, name)) for name in ("mean", "std"))
        if len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise ValueError(
                f"`normalization` needs as many means as stds (or one of either), got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"`std` must be positive, got {list(std)}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @staticmethod
    def _values(name: str, value: object) -> tuple[float, ...]:
        if isinstance(value, Tensor):
            value = value.detach().flatten().tolist()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if (
            not isinstance(value, (Sequence,))
            or isinstance(value, str)
            or not value
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
            )
        ):
            raise ValueError(f"`normalization` {name} must be finite numbers, one per channel, got {value!r}")
        return tuple(float(v) for v in value)

    @classmethod
    def of(cls, value: object, name: str = "normalization") -> Normalization | None:
        """``value`` as a :class:`Normalization`: None, a :class:`Normalization`, a ``(mean, std)`` pair, or a
        mapping with ``mean`` and ``std``."""
        if value is None or isinstance(value, Normalization):
            return value
        if isinstance(value, Mapping) and set(value) == {"mean", "std"}:
            return cls(value["mean"], value["std"])
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls(*value)
        raise ValueError(
            f"`{name}` must be None, a Normalization, a (mean, std) pair of per-channel values or a "
            f"{{'mean': ..., 'std': ...}} mapping, got {describe(value)}"
        )

    @property
    def channels(self) -> int:
        """How many channels the values describe (1 applies to any number)."""
        return max(len(self.mean), len(self.std))

    def _view(self, like: Tensor) -> tuple[Tensor, Tensor]:
        channels = like.shape[1] if like.ndim >= 2 else 1
        if self.channels not in (1, channels):
            raise ValueError(
                f"`normalization` must have 1 or {channels} values (one per channel), got {self.channels} for "
                f"inputs {describe(like)}"
            )
        shape = (1, -1) + (1,) * (like.ndim - 2)
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std

    def normalize(self, pixels: Tensor) -> Tensor:
        mean, std = self._view(pixels)
        return (pixels - mean) / std

    def denormalize(self, inputs: Tensor) -> Tensor:
        mean, std = self._view(inputs)
        return inputs * std + mean

    def std_like(self, like: Tensor) -> Tensor:
        """The stds, broadcastable to ``like``: a pixel step ``d`` is ``d / std`` in model-input units."""
        return self._view(like)[1]

    def black(self, like: Tensor) -> Tensor:
        """Black pixels in model-input units, ``−mean / std``, broadcastable to ``like``."""
        mean, std = self._view(like)
        return -mean / std

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}


#: torchvision's and timm's ImageNet normalisation.
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def resolve_normalization(
    normalization: object,
    *,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    stacklevel: int = 4,
) -> Normalization | None:
    """The ``normalization`` argument of a public entry point, or its deprecated ``mean=`` / ``std=`` spelling
    (a ``DeprecationWarning``)."""
    if mean is None and std is None:
        return Normalization.of(normalization)
    if (mean is None) != (std is None):
        raise ValueError("pass both `mean` and `std` together (normalised inputs) or neither (pixel inputs)")
    if normalization is not None:
        raise ValueError("pass `normalization` or the deprecated `mean`/`std`, not both")
    warn_deprecated("mean=, std=", "normalization=(mean, std)", stacklevel=stacklevel)
    return Normalization(mean, std)
