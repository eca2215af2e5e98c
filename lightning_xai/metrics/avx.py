"""AVX: the evaluation protocol of ADVISE (Dehshibi et al., arXiv 2203.01289), as a torchmetrics Metric."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from .._checks import describe
from ..explain import Normalization, resolve_normalization
from .functional.avx import (
    AVX_KEYS,
    AdForm,
    AvxExplainFn,
    MapNormalization,
    MaskMode,
    _avx_compute,
    _avx_update,
    check_avx_args,
    make_normalizer,
)


class AVX(Metric):
    """AVX, ADVISE's harmonic mean of four image-quality and confidence terms of the masked image.

    ``update(images, attributions_top1, attributions_top2=None, target=None)`` takes **pixels** (``images`` in
    [0, 1] float or uint8, (B, 3, H, W) or (B, 1, H, W), H, W ≥ 11), the maps of the explained class ``c1``
    (``target``, or the model's argmax) and of the runner-up ``c2`` (the most probable other class), both in
    [0, 1] (``map_normalization="minmax"`` rescales each map). Maps are reduced over channels by
    ``channel_reduction`` and resized bilinearly to the images. Without ``attributions_top2`` the metric calls
    ``explain_fn(forward_func, inputs, c2)`` on the model inputs, under ``torch.enable_grad()``.

    ``normalize`` (a callable) or ``normalization`` (a :class:`~lightning_xai.explain.Normalization` or a
    ``(mean, std)`` pair; ``mean=``/``std=`` are its deprecated spelling) map [0, 1] pixels to the model's
    inputs. Per image, with ``X`` the pixels on [0, 255], ``y`` the probability of ``c1`` on ``X`` and ``S1``, ``S2`` the maps:

    1. class sensitivity ``CS = Pearson(S1, S2)``; the check passes iff ``|CS| ≤ cs_threshold`` (0.55); a
       constant map makes CS undefined: the check fails and CS is stored as 0;
    2. ``X̃ = X · 1[S1 ≥ 0.5]`` (``mask_mode="reference"``, ADVISE's cast of the map to the image's integer type)
       or ``round(X · S1)`` (``"soft"``); the model sees ``normalize(X̃ / 255)``;
    3. hit iff ``c1`` is among the ``top_k`` (5) classes on ``X̃`` (ties count in its favour);
    4. Average Drop ``max(0, y − o)/y`` with ``o = max_k p_k(X̃)`` (``ad_reference``) or ``p_c1(X̃)`` (``ad``);
       ``ad_form`` (``"reference"``) chooses the one that enters AVX and sets ``o`` below;
    5. ``SSIM(X̃, X)``: torchmetrics, Gaussian window 11, σ 1.5, data range 255, channels averaged;
    6. ``FSIMc(X̃, X)``: ``piq.fsim(chromatic=True, data_range=255)`` (luminance FSIM for grey images);
    7. ``nMSE = mean((X̃ − X)²) / 255²``;
    8. miss penalty: a miss that passes the CS check multiplies SSIM, FSIMc and nMSE by ``1 − |y − o|`` (each
       AD by ``1 − |y − o|`` with its own ``o``); a miss that fails it sets both AD = 1, SSIM = FSIMc = 0 and
       nMSE = 1;
    9. ``AVX = 4 / (1/SSIM + 1/FSIMc + 1/(1 − nMSE) + 1/(1 − AD))``, and 0 when a term is ≤ 0.

    ``compute()`` returns a dict of means over all images: ``avx`` (the main value, higher is better), ``ad``,
    ``ad_reference``, ``ssim``, ``fsim``, ``nmse`` (the penalised components), ``class_sensitivity`` (mean CS),
    ``cs_pass_rate`` and ``hit_rate``.

    The model runs in eval mode (``force_eval``, every flag restored) under ``no_grad``, the clean and masked
    images together in chunks of ``internal_batch_size``. States: one sum per output (``<key>_sum``) and
    ``count``, all sum-reduced.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics import AVX
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 6))
        >>> metric = AVX(model, normalization=([0.5] * 3, [0.25] * 3))
        >>> images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
        >>> metric.update(images, torch.rand(4, 16, 16), torch.rand(4, 1, 16, 16))
        >>> result = metric.compute()
        >>> sorted(result)
        ['ad', 'ad_reference', 'avx', 'class_sensitivity', 'cs_pass_rate', 'fsim', 'hit_rate', 'nmse', 'ssim']
        >>> bool(0 <= result["avx"] <= 1)
        True
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    count: Tensor

    def __init__(
        self,
        forward_func: Callable[..., Any],
        normalize: Callable[[Tensor], Tensor] | None = None,
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
        explain_fn: AvxExplainFn | None = None,
        mask_mode: MaskMode = "reference",
        ad_form: AdForm = "reference",
        cs_threshold: float = 0.55,
        top_k: int = 5,
        channel_reduction: str = "sum",
        map_normalization: MapNormalization = "none",
        force_eval: bool = True,
        internal_batch_size: int = 128,
        normalization: Normalization | tuple[Sequence[float], Sequence[float]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not callable(forward_func):
            raise TypeError(
                f"`forward_func` must be callable (a model or function), got {describe(forward_func)}"
            )
        if explain_fn is not None and not callable(explain_fn):
            raise TypeError(
                f"`explain_fn` must be callable as explain_fn(forward_func, inputs, target), got {describe(explain_fn)}"
            )
        check_avx_args(
            mask_mode, ad_form, cs_threshold, top_k, channel_reduction, map_normalization, internal_batch_size
        )
        # Kept out of the module tree: the metric must not move, save or count the user's model.
        object.__setattr__(self, "forward_func", forward_func)
        object.__setattr__(self, "explain_fn", explain_fn)
        object.__setattr__(
            self,
            "normalize",
            make_normalizer(normalize, resolve_normalization(normalization, mean=mean, std=std)),
        )
        self.mask_mode = mask_mode
        self.ad_form = ad_form
        self.cs_threshold = float(cs_threshold)
        self.top_k = top_k
        self.channel_reduction = channel_reduction
        self.map_normalization = map_normalization
        self.force_eval = force_eval
        self.internal_batch_size = internal_batch_size
        for key in AVX_KEYS:
            self.add_state(f"{key}_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(
        self,
        images: Tensor,
        attributions_top1: Tensor,
        attributions_top2: Tensor | None = None,
        target: object = None,
    ) -> None:
        """Score one batch of pixel ``images`` with the maps of ``c1`` and ``c2`` (or ``explain_fn`` for ``c2``)."""
        per_sample = _avx_update(
            self.forward_func,
            images,
            attributions_top1,
            attributions_top2,
            target,
            normalize=self.normalize,
            explain_fn=self.explain_fn,
            mask_mode=self.mask_mode,
            ad_form=self.ad_form,
            cs_threshold=self.cs_threshold,
            top_k=self.top_k,
            channel_reduction=self.channel_reduction,
            map_normalization=self.map_normalization,
            force_eval=self.force_eval,
            internal_batch_size=self.internal_batch_size,
        )
        for key, values in per_sample.items():
            state = getattr(self, f"{key}_sum")
            setattr(self, f"{key}_sum", state + values.sum().to(state))
        self.count += images.shape[0]

    def compute(self) -> dict[str, Tensor]:
        return _avx_compute({key: getattr(self, f"{key}_sum") for key in AVX_KEYS}, self.count)
