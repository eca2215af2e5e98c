"""AVX, the evaluation protocol of ADVISE (Dehshibi et al., arXiv 2203.01289; reference code ``dehshibi/ADVISE``).

Per image, with ``X`` the pixel image on a [0, 255] scale, ``c1`` the explained class, ``c2`` the runner-up and
``S1``, ``S2`` their maps in [0, 1] at the image's resolution:

1. class sensitivity ``CS = Pearson(S1, S2)``; the check passes iff ``|CS| ≤ 0.55`` (a NaN CS fails, stored 0);
2. the masked image ``X̃ = X ⊙ 1[S1 ≥ 0.5]`` (``mask_mode="reference"``) or ``round(X ⊙ S1)`` (``"soft"``);
3. hit iff ``c1`` is among the top-5 classes on ``X̃``;
4. Average Drop ``max(0, y − o)/y`` with ``y = p_c1(X)`` and ``o = max_k p_k(X̃)`` (reference) or ``p_c1(X̃)``;
5. ``SSIM(X̃, X)`` (torchmetrics, data range 255), 6. ``FSIMc(X̃, X)`` (``piq``), 7. ``nMSE = mean((X̃−X)²)/255²``;
8. miss penalty: a miss that passes the CS check multiplies AD, SSIM, FSIMc and nMSE by ``1 − |y − o|``; a miss
   that fails it sets AD = 1, SSIM = FSIMc = 0, nMSE = 1;
9. ``AVX = 4 / (1/SSIM + 1/FSIMc + 1/(1−nMSE) + 1/(1−AD))``, and 0 when any of the four terms is ≤ 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ..._checks import (
    check_inputs_on_model_device,
    check_nonempty_batch,
    check_same_device,
    check_tensor,
    describe,
    format_target,
    module_dtype,
)
from ...explain import Normalization, require_grad_mode, resolve_normalization
from ...explain.avx import (
    _PIXEL_MAX,
    AVX_KEYS,
    AdForm,
    MaskMode,
    _avx_scores,
    _masked_pixels,
    _runner_up,
    check_avx_args,
    make_normalizer,
)
from ...models import LogitsForward
from ...models.scoring import chunked_scores
from .._common import (
    ChannelReduction,
    model_context,
    resize_maps,
    to_maps,
)

MapNormalization = Literal["none", "minmax"]
AvxExplainFn = Callable[[Callable[..., Any], Tensor, Tensor], Any]


# torchmetrics' SSIM window: smaller images cannot be scored.
_MIN_SIDE = 11


def _check_images(images: object) -> tuple[Tensor, Tensor]:
    """Pixels on [0, 1] (for the model) and on [0, 255] (for the image-quality terms), both floating."""
    check_tensor("images", images, ndim=4)
    assert isinstance(images, Tensor)
    _, channels, height, width = images.shape
    check_nonempty_batch("images", images)
    if channels not in (1, 3):
        raise ValueError(
            f"`images` must be (B, 3, H, W) colour or (B, 1, H, W) grey pixels, got {describe(images)}"
        )
    if min(height, width) < _MIN_SIDE:
        raise ValueError(
            f"`images` must be at least {_MIN_SIDE}x{_MIN_SIDE} (the SSIM window), got {describe(images)}"
        )
    if images.dtype == torch.uint8:
        pixels = images.float()
        return pixels / _PIXEL_MAX, pixels
    if not images.is_floating_point():
        raise TypeError(f"`images` must be uint8 or floating-point pixels in [0, 1], got {describe(images)}")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise ValueError(
            f"`images` must be pixels in [0, 1] (or uint8), got values in [{low:.4g}, {high:.4g}]; pass pixels "
            "and map them to model inputs with `normalize` or `mean`/`std`"
        )
    images = images if images.dtype in (torch.float32, torch.float64) else images.float()
    return images, images * _PIXEL_MAX


def _avx_maps(
    attributions: object,
    name: str,
    images: Tensor,
    channel_reduction: ChannelReduction,
    map_normalization: MapNormalization,
) -> Tensor:
    """(B, H, W) maps in [0, 1] at the images' resolution."""
    check_tensor(name, attributions, ndim=(3, 4))
    assert isinstance(attributions, Tensor)
    maps = to_maps(attributions, channel_reduction, name=name)
    if maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"`{name}` must have the images' batch size {images.shape[0]}, got {describe(attributions)}"
        )
    check_same_device(name, attributions, images.device, "`images`")
    if map_normalization == "minmax":
        low = maps.amin((1, 2), keepdim=True)
        span = maps.amax((1, 2), keepdim=True) - low
        # A constant map explains nothing: it becomes 0, as ADVISE does with its group maps.
        maps = torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)
    else:
        low, high = float(maps.min()), float(maps.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"`{name}` must be maps in [0, 1], got values in [{low:.4g}, {high:.4g}]; pass "
                "`map_normalization='minmax'` to rescale each map"
            )
    maps = resize_maps(maps, tuple(images.shape[-2:]))
    # Bilinear weights sum to 1 only up to round-off; the maps were in [0, 1] before resizing.
    return maps.clamp(0, 1)


def _model_inputs(
    normalizer: Callable[[Tensor], Tensor], pixels: Tensor, what: str, dtype: torch.dtype | None
) -> Tensor:
    """The model's inputs for pixels in [0, 1], in the model's floating dtype (pixels may come as uint8, float32,
    … whatever the model's precision)."""
    inputs = normalizer(pixels if dtype is None else pixels.to(dtype))
    if not isinstance(inputs, Tensor) or inputs.ndim == 0 or inputs.shape[0] != pixels.shape[0]:
        raise TypeError(
            f"`normalize` must map a batch of pixels to a batch of model inputs; on the {what} images "
            f"({describe(pixels)}) it returned {describe(inputs)}"
        )
    return inputs


def _avx_update(
    forward_func: Callable[..., Any],
    images: Tensor,
    attributions_top1: Tensor,
    attributions_top2: Tensor | None = None,
    target: object = None,
    *,
    normalize: Callable[[Tensor], Tensor] | None = None,
    explain_fn: AvxExplainFn | None = None,
    mask_mode: MaskMode = "reference",
    ad_form: AdForm = "reference",
    cs_threshold: float = 0.55,
    top_k: int = 5,
    channel_reduction: ChannelReduction = "sum",
    map_normalization: MapNormalization = "none",
    force_eval: bool = True,
    internal_batch_size: int = 128,
) -> dict[str, Tensor]:
    """Per-image AVX components (B,) of one batch. The clean and masked images go through the model together,
    in ``ceil(2B / internal_batch_size)`` calls, or in two passes when ``explain_fn`` must explain ``c2`` first.
    """
    check_avx_args(
        mask_mode, ad_form, cs_threshold, top_k, channel_reduction, map_normalization, internal_batch_size
    )
    normalizer = make_normalizer(normalize)
    pixels01, pixels = _check_images(images)
    batch = images.shape[0]
    maps_top1 = _avx_maps(
        attributions_top1, "attributions_top1", images, channel_reduction, map_normalization
    )
    if attributions_top2 is not None:
        maps_top2 = _avx_maps(
            attributions_top2, "attributions_top2", images, channel_reduction, map_normalization
        )
    elif explain_fn is None:
        raise ValueError(
            "`attributions_top2` (the maps of the runner-up class) is missing: pass it, or give the metric an "
            "`explain_fn(forward_func, inputs, target)` that computes it"
        )
    elif not callable(explain_fn):
        raise TypeError(
            f"`explain_fn` must be callable as explain_fn(forward_func, inputs, target), got {describe(explain_fn)}"
        )
    else:
        require_grad_mode("AVX with `explain_fn` (the runner-up class is explained during update)")
    format_target(target, batch, None, images.device)
    forward = LogitsForward(forward_func)
    check_inputs_on_model_device("images", images, forward.module)

    masked = _masked_pixels(pixels, maps_top1, mask_mode)
    dtype = module_dtype(forward.module)
    clean_inputs = _model_inputs(normalizer, pixels01, "clean", dtype)
    masked_inputs = _model_inputs(normalizer, masked / _PIXEL_MAX, "masked", dtype)
    with model_context(forward.module, force_eval):
        if attributions_top2 is not None:
            probs = chunked_scores(
                forward,
                torch.cat([clean_inputs, masked_inputs]),
                None,
                internal_batch_size=internal_batch_size,
            )
            clean_probs, masked_probs = probs[:batch], probs[batch:]
        else:
            clean_probs = chunked_scores(forward, clean_inputs, None, internal_batch_size=internal_batch_size)
        formatted = format_target(target, batch, clean_probs.shape[1], images.device)
        if formatted is None:
            formatted = clean_probs.argmax(1)
        if attributions_top2 is None:
            assert explain_fn is not None
            runner_up = _runner_up(clean_probs, formatted)
            with torch.enable_grad():
                explained = explain_fn(forward_func, clean_inputs, runner_up)
            if isinstance(explained, (tuple, list)) and len(explained) == 1:
                explained = explained[0]
            if isinstance(explained, Tensor):
                explained = explained.detach()
            maps_top2 = _avx_maps(
                explained,
                "explain_fn output (attributions_top2)",
                images,
                channel_reduction,
                map_normalization,
            )
            masked_probs = chunked_scores(
                forward, masked_inputs, None, internal_batch_size=internal_batch_size
            )
    return _avx_scores(
        pixels,
        masked,
        maps_top1,
        maps_top2,
        clean_probs,
        masked_probs,
        formatted,
        ad_form=ad_form,
        cs_threshold=float(cs_threshold),
        top_k=top_k,
    )


def _avx_compute(sums: dict[str, Tensor], count: Tensor | int) -> dict[str, Tensor]:
    """Means of the per-image components over ``count`` images."""
    return {key: sums[key] / count for key in AVX_KEYS}


def avx_score(
    forward_func: Callable[..., Any],
    images: Tensor,
    attributions_top1: Tensor,
    attributions_top2: Tensor | None = None,
    target: object = None,
    *,
    normalize: Callable[[Tensor], Tensor] | None = None,
    normalization: Normalization | tuple[Sequence[float], Sequence[float]] | None = None,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    explain_fn: AvxExplainFn | None = None,
    mask_mode: MaskMode = "reference",
    ad_form: AdForm = "reference",
    cs_threshold: float = 0.55,
    top_k: int = 5,
    channel_reduction: ChannelReduction = "sum",
    map_normalization: MapNormalization = "none",
    force_eval: bool = True,
    internal_batch_size: int = 128,
    return_per_sample: bool = False,
) -> dict[str, Tensor]:
    """AVX of one batch (named ``avx_score`` so that it does not shadow this module): a dict of the batch means of :data:`AVX_KEYS` (or the (B,) per-image values with
    ``return_per_sample=True``). See :class:`~lightning_xai.metrics.AVX` for every argument.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics.functional import avx_score
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 6))
        >>> images = torch.rand(2, 3, 16, 16)
        >>> maps_top1, maps_top2 = torch.rand(2, 16, 16), torch.rand(2, 16, 16)
        >>> result = avx_score(model, images, maps_top1, maps_top2, normalization=([0.5] * 3, [0.25] * 3))
        >>> sorted(result)
        ['ad', 'ad_reference', 'avx', 'class_sensitivity', 'cs_pass_rate', 'fsim', 'hit_rate', 'nmse', 'ssim']
        >>> bool(0 <= result["avx"] <= 1)
        True
    """
    per_sample = _avx_update(
        forward_func,
        images,
        attributions_top1,
        attributions_top2,
        target,
        normalize=make_normalizer(normalize, resolve_normalization(normalization, mean=mean, std=std)),
        explain_fn=explain_fn,
        mask_mode=mask_mode,
        ad_form=ad_form,
        cs_threshold=cs_threshold,
        top_k=top_k,
        channel_reduction=channel_reduction,
        map_normalization=map_normalization,
        force_eval=force_eval,
        internal_batch_size=internal_batch_size,
    )
    if return_per_sample:
        return per_sample
    return _avx_compute({key: value.sum() for key, value in per_sample.items()}, images.shape[0])
