"""Baselines (what a removed pixel shows) and mask composition, shared by methods and metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import kornia.filters
import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_tensor, describe

BaselineSpec = str | float | int | Tensor | Callable[[Tensor], Tensor]


def gaussian_blur(inputs: Tensor, kernel_size: int = 51, sigma: float = 50.0) -> Tensor:
    """Gaussian blur of a (B, C, H, W) batch with reflect-101 borders (the I-GOS family's baseline).

    The blur is linear and preserves constants, so blurring a normalised input equals normalising a blurred
    image. ``kernel_size`` must be odd; it is reduced to ``2 * min(H, W) - 1`` where the image is smaller than
    the kernel, since reflect padding needs fewer border pixels than the image has.

    Example:
        >>> import torch
        >>> gaussian_blur(torch.ones(1, 3, 32, 32)).allclose(torch.ones(1, 3, 32, 32))
        True
    """
    check_tensor("inputs", inputs, ndim=4, floating=True)
    if (
        isinstance(kernel_size, bool)
        or not isinstance(kernel_size, int)
        or kernel_size < 1
        or kernel_size % 2 == 0
    ):
        raise ValueError(f"`kernel_size` must be a positive odd int, got {kernel_size!r}")
    if not isinstance(sigma, (int, float)) or sigma <= 0:
        raise ValueError(f"`sigma` must be a positive number, got {sigma!r}")
    kernel_size = min(kernel_size, 2 * min(inputs.shape[-2:]) - 1)
    blurred = kornia.filters.gaussian_blur2d(
        inputs, (kernel_size, kernel_size), (float(sigma), float(sigma)), border_type="reflect"
    )
    return blurred.to(
        inputs.dtype
    )  # under torch.autocast the convolution runs (and returns) in lower precision


def constant_baseline(inputs: Tensor, value: float = 0.0) -> Tensor:
    """A baseline of one value everywhere (``0`` is black for pixels and the mean for normalised inputs)."""
    return torch.full_like(inputs, float(value))


def mean_baseline(inputs: Tensor, mean: Sequence[float] | Tensor | None = None) -> Tensor:
    """A per-channel constant baseline: the given dataset ``mean`` (one value per channel), or each image's own
    channel means when ``mean`` is None."""
    check_tensor("inputs", inputs, ndim=4, floating=True)
    if mean is None:
        return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).clone()
    mean_t = torch.as_tensor(mean, dtype=inputs.dtype, device=inputs.device).flatten()
    if mean_t.numel() != inputs.shape[1]:
        raise ValueError(f"`mean` must have one value per channel ({inputs.shape[1]}), got {mean_t.numel()}")
    return mean_t.view(1, -1, 1, 1).expand_as(inputs).clone()


def make_baseline(
    inputs: Tensor,
    baseline: BaselineSpec = "blur",
    *,
    blur_kernel: int = 51,
    blur_sigma: float = 50.0,
) -> Tensor:
    """Resolve a baseline specification for ``inputs``.

    ``baseline`` is ``"blur"`` (:func:`gaussian_blur` with ``blur_kernel``/``blur_sigma``), ``"zeros"`` /
    ``"black"`` (constant 0), ``"mean"`` (each image's channel means), a number (constant), a tensor
    broadcastable to ``inputs``, or a callable that maps the inputs to a baseline of the same shape.
    """
    if isinstance(baseline, str):
        if baseline == "blur":
            return gaussian_blur(inputs, blur_kernel, blur_sigma)
        if baseline in ("zeros", "black"):
            return constant_baseline(inputs, 0.0)
        if baseline == "mean":
            return mean_baseline(inputs)
        raise ValueError(
            f"`baseline` must be 'blur', 'zeros', 'black', 'mean', a number, a tensor or a callable, got {baseline!r}"
        )
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return constant_baseline(inputs, float(baseline))
    if isinstance(baseline, Tensor):
        check_tensor("baseline", baseline)
        try:
            out = baseline.to(device=inputs.device, dtype=inputs.dtype).expand_as(inputs)
        except RuntimeError:
            raise ValueError(
                f"`baseline` must broadcast to the inputs' shape {tuple(inputs.shape)}, got {describe(baseline)}"
            ) from None
        return out
    if callable(baseline):
        out = baseline(inputs)
        if not isinstance(out, Tensor) or out.shape != inputs.shape:
            raise ValueError(
                f"a callable `baseline` must return a tensor of the inputs' shape {tuple(inputs.shape)}, "
                f"got {describe(out)}"
            )
        return out
    raise TypeError(
        f"`baseline` must be 'blur', 'zeros', 'mean', a number, a tensor or a callable, got {describe(baseline)}"
    )


def upsample_mask(mask: Tensor, size: Sequence[int], align_corners: bool = True) -> Tensor:
    """Bilinearly upsample a (B, 1, h, w) or (B, h, w) mask to ``size`` (H, W), keeping the graph."""
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    check_tensor("mask", mask, ndim=4, floating=True)
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=align_corners)


def compose(inputs: Tensor, baseline: Tensor, mask: Tensor, align_corners: bool = True) -> Tensor:
    """``inputs * U(mask) + baseline * (1 - U(mask))``: mask 1 keeps a pixel, 0 shows the baseline.

    ``mask`` is (B, 1, h, w) or (B, h, w) at any resolution (or (1, ...) for the whole batch); low-resolution
    masks are upsampled bilinearly (``align_corners=True``, as the I-GOS family does) and broadcast over
    channels. Differentiable with respect to the mask.

    Example:
        >>> import torch
        >>> x, b = torch.ones(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
        >>> compose(x, b, torch.zeros(1, 1, 2, 2)).abs().sum().item()
        0.0
    """
    check_tensor("inputs", inputs, ndim=4, floating=True, finite=False)
    if baseline.shape != inputs.shape:
        raise ValueError(
            f"`baseline` must have the inputs' shape {tuple(inputs.shape)}, got {describe(baseline)}"
        )
    up = upsample_mask(mask, inputs.shape[-2:], align_corners=align_corners)
    if up.shape[0] not in (1, inputs.shape[0]):
        raise ValueError(f"`mask` must have batch size 1 or {inputs.shape[0]}, got {describe(mask)}")
    return baseline + (inputs - baseline) * up
