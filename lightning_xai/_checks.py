"""Argument validation shared by every public entry point.

Each check raises a ``ValueError`` or ``TypeError`` that names the argument, what was expected and
what came, before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def describe(value: object) -> str:
    """A short description of ``value`` for error messages."""
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}, device {value.device}"
    return f"{type(value).__name__} {value!r}"[:200]


def check_tensor(
    name: str,
    value: object,
    *,
    ndim: int | Sequence[int] | None = None,
    floating: bool = False,
    finite: bool = True,
) -> Tensor:
    """Check that ``value`` is a tensor with the given number of dimensions, dtype kind and finite values."""
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {describe(value)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"`{name}` must be {want}, got {describe(value)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got {describe(value)}")
    if (
        finite
        and value.is_floating_point()
        and value.device.type != "meta"
        and not bool(torch.isfinite(value).all())
    ):
        n_nan = int(torch.isnan(value).sum())
        n_inf = int(torch.isinf(value).sum())
        raise ValueError(f"`{name}` contains {n_nan} NaN and {n_inf} Inf values ({describe(value)})")
    return value


def check_same_device(name: str, value: Tensor, device: torch.device, other: str) -> None:
    """Check that ``value`` lives on ``device`` (the device of ``other``)."""
    if value.device != device:
        raise ValueError(
            f"`{name}` is on {value.device} but {other} is on {device}; move them to the same device"
        )


def module_device(module: torch.nn.Module) -> torch.device | None:
    """The device of a module's first parameter or buffer, or None for a module without any."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def module_dtype(module: object) -> torch.dtype | None:
    """The dtype of a module's first floating parameter, or None (not a module, or no floating parameter)."""
    if not isinstance(module, torch.nn.Module):
        return None
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no argument (and reports CUDA autocast)
        return torch.is_autocast_enabled() or (device_type == "cpu" and torch.is_autocast_cpu_enabled())


def check_inputs_on_model_device(name: str, inputs: Tensor, model: object) -> None:
    """Inputs and model must share a device, and floating inputs the dtype of the model's floating parameters
    (outside ``torch.autocast``, which casts them itself); a callable without parameters is not checked."""
    if not isinstance(model, torch.nn.Module):
        return
    device = module_device(model)
    if device is not None:
        check_same_device(name, inputs, device, "the model")
    if not inputs.is_floating_point() or _autocast_enabled(inputs.device.type):
        return
    dtype = module_dtype(model)
    if dtype is not None and dtype != inputs.dtype:
        raise ValueError(
            f"`{name}` are {inputs.dtype} but the model's parameters are {dtype}; cast one to the other "
            f"(`inputs.to({dtype})` or `model.to({inputs.dtype})`), or run under `torch.autocast`"
        )


def check_nonempty_batch(name: str, value: Tensor) -> None:
    """A batch needs at least one sample: every method and metric refuses B = 0 with the same message."""
    if value.ndim >= 1 and value.shape[0] == 0:
        raise ValueError(f"`{name}` is an empty batch ({describe(value)}); pass at least one sample")


def format_target(
    target: object, batch_size: int, num_classes: int | None, device: torch.device
) -> Tensor | None:
    """Turn an int, a list or a tensor into a (B,) long tensor of class indices; ``None`` stays ``None``.

    ``num_classes`` (when known) bounds the indices.
    """
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError(f"`target` must be an int, a list of ints or a tensor, got {describe(target)}")
    if isinstance(target, int):
        out = torch.full((batch_size,), target, dtype=torch.long, device=device)
    elif isinstance(target, (list, tuple)):
        if len(target) != batch_size or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in target
        ):
            raise ValueError(
                f"`target` as a list must hold {batch_size} ints (one per sample), got {target!r}"
            )
        out = torch.tensor(list(target), dtype=torch.long, device=device)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"`target` must be an integer tensor, got {describe(target)}")
        if target.ndim == 0:
            out = target.to(device=device, dtype=torch.long).expand(batch_size).clone()
        elif target.ndim == 1 and target.numel() == batch_size:
            out = target.to(device=device, dtype=torch.long)
        else:
            raise ValueError(
                f"`target` must be a scalar or have shape ({batch_size},), got {describe(target)}"
            )
    else:
        raise TypeError(f"`target` must be an int, a list of ints or a tensor, got {describe(target)}")
    if out.numel() and int(out.min()) < 0:
        raise ValueError(f"`target` must be non-negative class indices, got minimum {int(out.min())}")
    if num_classes is not None and out.numel() and int(out.max()) >= num_classes:
        raise ValueError(
            f"`target` must be below the number of classes ({num_classes}), got maximum {int(out.max())}"
        )
    return out


def check_in_choices(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}")


def check_number(
    name: str,
    value: object,
    *,
    low: float = 0.0,
    strict: bool = False,
    high: float | None = None,
    high_inclusive: bool = False,
    want: str | None = None,
) -> float:
    """A finite real number ``>= low`` (``> low`` with ``strict``) and, when ``high`` is given, ``< high``
    (``<= high`` with ``high_inclusive``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        below = high is None or (value <= high if high_inclusive else value < high)
        ok = (value > low if strict else value >= low) and below
    if not ok:
        if want is None:
            top = "" if high is None else f" and {'<=' if high_inclusive else '<'} {high}"
            want = f"a finite number {'>' if strict else '>='} {low}{top}"
        raise ValueError(f"`{name}` must be {want}, got {value!r}")
    return float(value)


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    want = "a non-negative number" if allow_zero else "a positive number"
    return check_number(name, value, strict=not allow_zero, want=want)


def check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """An int (not a bool) in ``[minimum, maximum]``; a ``TypeError`` for any other type."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {describe(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        want = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"`{name}` must be an int {want}, got {value!r}")
    return value


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {describe(value)}")
    return value


def check_internal_batch_size(value: object, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        want = "None or a positive int" if allow_none else "a positive int"
        raise ValueError(f"`internal_batch_size` must be {want}, got {value!r}")
