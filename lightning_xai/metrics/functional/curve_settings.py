"""The protocol of a deletion or insertion curve: the I-GOS and RISE presets and the checked settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from ..._checks import check_in_choices, check_positive, describe
from ...explain.baselines import BaselineSpec

Preset = Literal["igos", "rise"]
Integration = Literal["right", "trapezoid"]
Resolution = int | tuple[int, int] | None | str

# Default settings of each protocol. ``cells_per_step`` is a rule, resolved once the grid size is known:
# "fiftieth" is I-GOS' max(1, n // 50), "row" is RISE's one image row (grid width) per step.
_PRESETS: dict[str, dict[str, Any]] = {
    "igos": {
        "resolution": (28, 28),
        "cells_per_step": "fiftieth",
        "baseline": {"deletion": "blur", "insertion": "blur"},
        "blur_kernel": 51,
        "blur_sigma": 50.0,
        "integration": "right",
    },
    "rise": {
        "resolution": None,
        "cells_per_step": "row",
        "baseline": {"deletion": "zeros", "insertion": "blur"},
        "blur_kernel": 11,
        "blur_sigma": 5.0,
        "integration": "trapezoid",
    },
}


@dataclass(frozen=True)
class CurveSettings:
    """The resolved protocol of one deletion or insertion curve (see :func:`curve_settings`)."""

    mode: Literal["deletion", "insertion"]
    resolution: tuple[int, int] | None
    cells_per_step: int | str
    baseline: BaselineSpec
    blur_kernel: int
    blur_sigma: float
    integration: Integration


def curve_settings(
    mode: str,
    preset: str = "igos",
    resolution: Resolution = "preset",
    cells_per_step: int | None = None,
    baseline: BaselineSpec | None = None,
    blur_kernel: int | None = None,
    blur_sigma: float | None = None,
    integration: str | None = None,
) -> CurveSettings:
    """Validate the curve arguments and fill the unset ones (``None``, or ``"preset"`` for ``resolution``)
    from ``preset``."""
    check_in_choices("mode", mode, ("deletion", "insertion"))
    check_in_choices("preset", preset, tuple(_PRESETS))
    defaults = _PRESETS[preset]
    if isinstance(resolution, str):
        if resolution != "preset":
            raise ValueError(
                f"`resolution` must be 'preset', None (rank pixels), an int or a (height, width) pair, got {resolution!r}"
            )
        resolution = defaults["resolution"]
    elif resolution is not None:
        pair = (resolution, resolution) if isinstance(resolution, int) else resolution
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)
        ):
            raise ValueError(
                f"`resolution` must be 'preset', None (rank pixels), a positive int or a pair of positive ints, "
                f"got {resolution!r}"
            )
        resolution = (int(pair[0]), int(pair[1]))
    if cells_per_step is None:
        cells_per_step = defaults["cells_per_step"]
    elif isinstance(cells_per_step, bool) or not isinstance(cells_per_step, int) or cells_per_step < 1:
        raise ValueError(
            f"`cells_per_step` must be a positive int or None (the preset's rule), got {cells_per_step!r}"
        )
    if baseline is None:
        baseline = defaults["baseline"][mode]
    blur_kernel = defaults["blur_kernel"] if blur_kernel is None else blur_kernel
    if (
        isinstance(blur_kernel, bool)
        or not isinstance(blur_kernel, int)
        or blur_kernel < 1
        or blur_kernel % 2 == 0
    ):
        raise ValueError(f"`blur_kernel` must be a positive odd int, got {blur_kernel!r}")
    blur_sigma = defaults["blur_sigma"] if blur_sigma is None else blur_sigma
    check_positive("blur_sigma", blur_sigma)
    integration = defaults["integration"] if integration is None else integration
    check_in_choices("integration", integration, ("right", "trapezoid"))
    if isinstance(baseline, str):
        check_in_choices("baseline", baseline, ("blur", "zeros", "black", "mean"))
    elif not (isinstance(baseline, (int, float, Tensor)) or callable(baseline)) or isinstance(baseline, bool):
        raise TypeError(
            f"`baseline` must be 'blur', 'zeros', 'mean', a number, a tensor or a callable, got {describe(baseline)}"
        )
    return CurveSettings(
        mode, resolution, cells_per_step, baseline, blur_kernel, float(blur_sigma), integration
    )
