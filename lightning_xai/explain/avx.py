"""The core of AVX, ADVISE's evaluation protocol, shared by the metric and by ADVISE's map selection.

Per image, from the [0, 255] pixels ``X``, the masked image ``X̃``, the maps of the explained class and of the
runner-up, and the softmax probabilities on both images: class sensitivity, hit, Average Drop, SSIM, FSIMc,
nMSE, the miss penalty and their harmonic mean (the full protocol is described in
:mod:`lightning_xai.metrics.functional.avx`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from .._checks import check_in_choices, check_internal_batch_size, describe
from .normalization import Normalization

MaskMode = Literal["reference", "soft"]
AdForm = Literal["reference", "standard"]

_AD_EPS = 1e-7


AVX_KEYS = (
    "avx",
    "ad",
    "ad_reference",
    "ssim",
    "fsim",
    "nmse",
    "class_sensitivity",
    "cs_pass_rate",
    "hit_rate",
)


_PIXEL_MAX = 255.0


def make_normalizer(
    normalize: Callable[[Tensor], Tensor] | None = None, normalization: Normalization | None = None
) -> Callable[[Tensor], Tensor]:
    """The pixel-to-model-input map of AVX: ``normalize`` itself, or ``normalization.normalize``, or the
    identity (inputs that are pixels in [0, 1])."""
    if normalize is not None:
        if not callable(normalize):
            raise TypeError(
                f"`normalize` must be a callable mapping [0,1] pixels to model inputs, got {describe(normalize)}"
            )
        if normalization is not None:
            raise ValueError("pass either `normalize` or `mean`/`std` (`normalization`), not both")
        return normalize
    return _identity if normalization is None else normalization.normalize


def _identity(pixels: Tensor) -> Tensor:
    return pixels


def check_avx_args(
    mask_mode: str,
    ad_form: str,
    cs_threshold: object,
    top_k: object,
    channel_reduction: str,
    map_normalization: str,
    internal_batch_size: int,
) -> None:
    check_in_choices("mask_mode", mask_mode, ("reference", "soft"))
    check_in_choices("ad_form", ad_form, ("reference", "standard"))
    check_in_choices("channel_reduction", channel_reduction, ("sum", "sum_abs", "max_abs"))
    check_in_choices("map_normalization", map_normalization, ("none", "minmax"))
    if (
        isinstance(cs_threshold, bool)
        or not isinstance(cs_threshold, (int, float))
        or not 0 <= cs_threshold <= 1
    ):
        raise ValueError(f"`cs_threshold` must be a number in [0, 1], got {cs_threshold!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive int, got {top_k!r}")
    check_internal_batch_size(internal_batch_size)


def _masked_pixels(pixels: Tensor, maps: Tensor, mask_mode: MaskMode) -> Tensor:
    """``X̃`` on the [0, 255] scale: ADVISE casts the map to the image's integer type (a 0.5 threshold) before
    multiplying; ``"soft"`` multiplies and rounds."""
    if mask_mode == "reference":
        return pixels * (maps >= 0.5).unsqueeze(1).to(pixels.dtype)
    return (pixels * maps.unsqueeze(1).to(pixels.dtype)).round()


def _class_sensitivity(maps_top1: Tensor, maps_top2: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Pearson correlation of the two maps (B,) in float64 and whether ``|CS| ≤ threshold``; a constant map
    makes CS undefined, which fails the check and is stored as 0."""
    dtype = torch.float32 if maps_top1.device.type == "mps" else torch.float64
    a = maps_top1.flatten(1).to(dtype)
    b = maps_top2.flatten(1).to(dtype)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    denom = (a.square().sum(1) * b.square().sum(1)).sqrt()
    defined = denom > 0
    cs = torch.where(defined, (a * b).sum(1) / denom.clamp_min(torch.finfo(dtype).tiny), 0.0)
    return cs, defined & (cs.abs() <= threshold)


def _fsim(masked: Tensor, pixels: Tensor) -> Tensor:
    try:
        import piq
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("AVX computes FSIMc with the `piq` package: `pip install piq`") from error
    return piq.fsim(masked, pixels, reduction="none", data_range=_PIXEL_MAX, chromatic=pixels.shape[1] == 3)


def _avx_scores(
    pixels: Tensor,
    masked: Tensor,
    maps_top1: Tensor,
    maps_top2: Tensor,
    clean_probs: Tensor,
    masked_probs: Tensor,
    target: Tensor,
    *,
    ad_form: AdForm = "reference",
    cs_threshold: float = 0.55,
    top_k: int = 5,
) -> dict[str, Tensor]:
    """Per-image AVX and its components (B,) each, keyed as :data:`AVX_KEYS`, from the [0, 255] images and
    their masked versions, the two maps and the softmax probabilities on both images."""
    dtype = torch.float64 if pixels.dtype == torch.float64 else torch.float32
    pixels = pixels.to(dtype)
    masked = masked.to(dtype)
    clean_probs = clean_probs.to(dtype)
    masked_probs = masked_probs.to(dtype)
    index = target[:, None]
    y = clean_probs.gather(1, index)[:, 0]
    o_standard = masked_probs.gather(1, index)[:, 0]
    o_reference = masked_probs.amax(1)
    # Ties count in c1's favour: a hit unless k classes score strictly higher.
    hit = (masked_probs > o_standard[:, None]).sum(1) < top_k
    cs, cs_pass = _class_sensitivity(maps_top1, maps_top2, cs_threshold)

    ad_standard = _average_drop_update(y, o_standard)
    ad_reference = _average_drop_update(y, o_reference)
    ssim = structural_similarity_index_measure(masked, pixels, data_range=_PIXEL_MAX, reduction="none")
    fsim = _fsim(masked, pixels).to(dtype)
    nmse = (masked - pixels).square().flatten(1).mean(1) / _PIXEL_MAX**2

    o = o_reference if ad_form == "reference" else o_standard
    factor = 1 - (y - o).abs()
    soft_miss = ~hit & cs_pass
    hard_miss = ~hit & ~cs_pass
    ad_standard = torch.where(soft_miss, ad_standard * (1 - (y - o_standard).abs()), ad_standard)
    ad_reference = torch.where(soft_miss, ad_reference * (1 - (y - o_reference).abs()), ad_reference)
    ssim, fsim, nmse = (torch.where(soft_miss, value * factor, value) for value in (ssim, fsim, nmse))
    one, zero = torch.ones_like(y), torch.zeros_like(y)
    ad_standard = torch.where(hard_miss, one, ad_standard)
    ad_reference = torch.where(hard_miss, one, ad_reference)
    ssim = torch.where(hard_miss, zero, ssim)
    fsim = torch.where(hard_miss, zero, fsim)
    nmse = torch.where(hard_miss, one, nmse)

    ad = ad_reference if ad_form == "reference" else ad_standard
    terms = torch.stack([ssim, fsim, 1 - nmse, 1 - ad], 1)
    positive = (terms > 0).all(1)
    # MATLAB's 1/0 = Inf makes the harmonic mean 0 when a term vanishes; negative terms are treated alike.
    avx = torch.where(positive, 4 / terms.clamp_min(torch.finfo(dtype).tiny).reciprocal().sum(1), zero)
    return {
        "avx": avx,
        "ad": ad_standard,
        "ad_reference": ad_reference,
        "ssim": ssim,
        "fsim": fsim,
        "nmse": nmse,
        "class_sensitivity": cs.to(dtype),
        "cs_pass_rate": cs_pass.to(dtype),
        "hit_rate": hit.to(dtype),
    }


def _runner_up(probs: Tensor, target: Tensor) -> Tensor:
    """The most probable class other than ``target`` (lowest index on ties)."""
    if probs.shape[1] < 2:
        raise ValueError(
            f"AVX needs at least 2 classes to explain a runner-up class, the model has {probs.shape[1]}"
        )
    return probs.scatter(1, target[:, None], float("-inf")).argmax(1)


def _average_drop_update(y: Tensor, o: Tensor) -> Tensor:
    """Per-sample drop ``max(0, y - o) / (y + 1e-7)``."""
    return (y - o).clamp(min=0) / (y + _AD_EPS)
