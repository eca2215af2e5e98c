"""The ADVISE attribution class: the forward and backward pass, the KDE relevance, and the group selection."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from ..._checks import (
    check_flag,
    check_in_choices,
    check_inputs_on_model_device,
    check_internal_batch_size,
    describe,
    format_target,
)
from ...explain import (
    Normalization,
    constant_rows,
    preserved_state,
    require_grad_mode,
    resolve_normalization,
    warn_if_training,
    warn_uninformative,
)
from ...explain.avx import (
    AVX_KEYS,
    AdForm,
    MaskMode,
    _avx_scores,
    _masked_pixels,
    _runner_up,
    check_avx_args,
    make_normalizer,
)
from ...explain.hooks import ActivationTap, forward_hook
from ...models import LogitsForward, check_logits, forward_module, resolve_layer
from ...models.scoring import chunk_bounds, select_forward_args
from .._base import check_forward_func
from .._common import (
    format_additional_forward_args,
    format_inputs,
)
from ..kde import adaptive_kde
from .groups import ADVISEDetails, group_cams, rescale_maps, upsample_maps

__all__ = ["ADVISE"]

Selection = Literal["avx", "largest_group"]
ActivationScaling = Literal["none", "minmax"]

_PIXEL_MAX = 255.0
# The SSIM window of AVX: smaller images cannot be scored.
_MIN_SIDE = 11
# Pixels recovered from normalised inputs may leave [0, 1] by round-off; more than this is an error.
_PIXEL_TOLERANCE = 1e-4


class ADVISE(LayerAttribution):
    """ADVISE (Dehshibi et al.): group-wise Grad-CAM over channels grouped by the number of peaks of an
    adaptive-bandwidth KDE of their activations, the best group chosen by AVX.

    Args:
        forward_func: the model (or a callable returning logits or a ``ModelOutput``).
        layer: the explained layer: a module, or a name / ``feature_info`` index / ``"auto"`` resolved in the
            model (see :func:`~lightning_xai.models.resolve_layer`). Its output must be (B, C, h, w).
        normalization: the model's input normalisation (a :class:`~lightning_xai.explain.Normalization` or a
            ``(mean, std)`` pair per channel); AVX needs pixels, and recovers them as ``inputs · std + mean``.
            Without it the inputs are pixels in [0, 1]. ``mean``/``std`` (by keyword, or positionally as the
            earlier ``ADVISE(model, layer, mean, std)``) are its deprecated spelling.
        activation_scaling: ``"none"`` (ADVISE: activation values outside [0, 1] are ignored by the KDE, and
            the ignored fraction is reported) or ``"minmax"`` (each channel rescaled to [0, 1] first).
        num_widths: ``M``, the KDE's number of bandwidths and windows (10).
        kde_dtype: the KDE's floating dtype (float64).
        mask_mode, ad_form, cs_threshold, top_k: the AVX protocol (see :class:`~lightning_xai.metrics.AVX`).

    Example:
        >>> import torch
        >>> from lightning_xai.models import small_resnet
        >>> model = small_resnet(num_classes=3).eval()
        >>> explainer = ADVISE(model, "layer3")
        >>> maps = explainer.attribute(torch.rand(2, 3, 24, 24), target=[0, 1], selection="largest_group")
        >>> maps.shape, bool(maps.min() >= 0) and bool(maps.max() <= 1)
        (torch.Size([2, 1, 6, 6]), True)
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module | str | int = "auto",
        normalization: Normalization | tuple[Sequence[float], Sequence[float]] | None = None,
        std: Sequence[float] | Tensor | None = None,
        *,
        mean: Sequence[float] | Tensor | None = None,
        activation_scaling: ActivationScaling = "none",
        num_widths: int = 10,
        kde_dtype: torch.dtype = torch.float64,
        mask_mode: MaskMode = "reference",
        ad_form: AdForm = "reference",
        cs_threshold: float = 0.55,
        top_k: int = 5,
    ) -> None:
        check_forward_func(forward_func)
        module = forward_module(forward_func)
        if isinstance(layer, nn.Module) and module is None:
            resolved = layer
        elif module is None:
            raise TypeError(
                "`layer` must be a module when `forward_func` is not an nn.Module (a name needs the model), "
                f"got {describe(layer)}"
            )
        else:
            resolved = resolve_layer(module, layer)
        super().__init__(forward_func, resolved)
        check_in_choices("activation_scaling", activation_scaling, ("none", "minmax"))
        if isinstance(num_widths, bool) or not isinstance(num_widths, int) or num_widths < 2:
            raise ValueError(f"`num_widths` must be an int ≥ 2, got {num_widths!r}")
        if not isinstance(kde_dtype, torch.dtype) or not kde_dtype.is_floating_point:
            raise TypeError(f"`kde_dtype` must be a floating torch.dtype, got {describe(kde_dtype)}")
        check_avx_args(mask_mode, ad_form, cs_threshold, top_k, "sum", "none", 1)
        if std is not None and mean is None:  # the deprecated positional form ADVISE(model, layer, mean, std)
            mean, normalization = normalization, None
        self.normalization = resolve_normalization(normalization, mean=mean, std=std)
        self._normalize = make_normalizer(None, self.normalization)
        self.activation_scaling = activation_scaling
        self.num_widths = num_widths
        self.kde_dtype = kde_dtype
        self.mask_mode = mask_mode
        self.ad_form = ad_form
        self.cs_threshold = float(cs_threshold)
        self.top_k = top_k
        self._logits = LogitsForward(forward_func)

    # ------------------------------------------------------------------------------------------------------

    def _to_pixels(self, inputs: Tensor) -> Tensor:
        """The [0, 1] pixels behind normalised ``inputs``; AVX scores pixels."""
        _, channels, height, width = inputs.shape
        if channels not in (1, 3):
            raise ValueError(
                "`selection='avx'` scores (B, 3, H, W) colour or (B, 1, H, W) grey images, got "
                f"{describe(inputs)}; use `selection='largest_group'` for other inputs"
            )
        if min(height, width) < _MIN_SIDE:
            raise ValueError(
                f"`selection='avx'` needs images of at least {_MIN_SIDE}x{_MIN_SIDE} (the SSIM window of AVX), "
                f"got {describe(inputs)}; use `selection='largest_group'` for smaller inputs"
            )
        pixels = inputs if self.normalization is None else self.normalization.denormalize(inputs)
        low, high = float(pixels.min()), float(pixels.max())
        if low < -_PIXEL_TOLERANCE or high > 1 + _PIXEL_TOLERANCE:
            raise ValueError(
                "`selection='avx'` needs the pixels behind `inputs` in [0, 1] (AVX masks and scores images); got "
                f"values in [{low:.4g}, {high:.4g}] after undoing `normalization`. Pass the normalisation of the "
                "inputs as ADVISE(..., normalization=(mean, std)), or use `selection='largest_group'`"
            )
        return pixels.clamp(0, 1)

    def _forward_backward(
        self, inputs: Tensor, extra: tuple[Any, ...], target: Tensor | None, chunk: int | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Layer activations (B, C, h, w), their gradients of ``p_c1`` and ``p_c2`` (softmax probabilities),
        the (B, K) probabilities, ``c1`` and ``c2``; one forward and two backward passes per chunk."""
        module = forward_module(self.forward_func)
        batch = inputs.shape[0]
        parts: list[tuple[Tensor, ...]] = []
        tap = ActivationTap()
        with preserved_state(module, self.layer), torch.enable_grad(), forward_hook(self.layer, tap):
            for begin, stop in chunk_bounds(batch, chunk):
                index = torch.arange(begin, stop, device=inputs.device)
                tap.activation = None
                logits = check_logits(
                    self._logits(inputs[begin:stop], *select_forward_args(extra, index, batch)), stop - begin
                )
                activation = tap.activation
                if activation is None:
                    raise ValueError("the ADVISE `layer` was not called by the forward function")
                if activation.ndim != 4 or activation.shape[0] != stop - begin:
                    raise ValueError(
                        f"the ADVISE `layer` must output (B, C, h, w) feature maps, got {describe(activation)}"
                    )
                probs = logits.softmax(1)
                if target is None:
                    top1 = probs.detach().argmax(1)
                else:
                    top1 = target[begin:stop]
                    if int(top1.max()) >= probs.shape[1]:
                        raise ValueError(
                            f"`target` must be below the number of classes ({probs.shape[1]}), got maximum "
                            f"{int(top1.max())}"
                        )
                top2 = _runner_up(probs.detach(), top1)
                (grad1,) = torch.autograd.grad(
                    probs.gather(1, top1[:, None]).sum(), activation, retain_graph=True
                )
                (grad2,) = torch.autograd.grad(probs.gather(1, top2[:, None]).sum(), activation)
                parts.append((activation.detach(), grad1, grad2, probs.detach(), top1, top2))
        return tuple(torch.cat(items) for items in zip(*parts, strict=True))  # type: ignore[return-value]

    def _relevance(self, activations: Tensor) -> tuple[Tensor, Tensor]:
        """``n_k`` (B, C) and the fraction of values the KDE ignored per image (B,)."""
        batch, channels = activations.shape[:2]
        values = activations.flatten(2).to(self.kde_dtype)
        if self.activation_scaling == "minmax":
            values = rescale_maps(values.unsqueeze(-1)).squeeze(-1)
        result = adaptive_kde(
            values.reshape(batch * channels, -1), None, self.num_widths, dtype=self.kde_dtype
        )
        return result.peaks.view(batch, channels), result.dropped.view(batch, channels).mean(1)

    def _avx_of_groups(
        self,
        pixels: Tensor,
        extra: tuple[Any, ...],
        rows: Tensor,
        maps_top1: Tensor,
        maps_top2: Tensor,
        probs: Tensor,
        top1: Tensor,
        chunk: int | None,
    ) -> dict[str, Tensor]:
        """AVX of every (image, group) row of ``rows`` (N, 2): the masked images of all rows go through the
        model in chunks of ``chunk``; the clean probabilities are those of the attribution's own forward."""
        batch = pixels.shape[0]
        size = tuple(pixels.shape[-2:])
        parts: dict[str, list[Tensor]] = {key: [] for key in AVX_KEYS}
        for begin, stop in chunk_bounds(rows.shape[0], chunk):
            image, group = rows[begin:stop, 0], rows[begin:stop, 1]
            top1_maps = upsample_maps(maps_top1[image, group].unsqueeze(1), size)[:, 0]
            top2_maps = upsample_maps(maps_top2[image, group].unsqueeze(1), size)[:, 0]
            clean = pixels[image] * _PIXEL_MAX
            masked = _masked_pixels(clean, top1_maps, self.mask_mode)
            with torch.no_grad():
                logits = check_logits(
                    self._logits(
                        self._normalize(masked / _PIXEL_MAX).to(pixels.dtype),
                        *select_forward_args(extra, image, batch),
                    ),
                    stop - begin,
                )
            scores = _avx_scores(
                clean,
                masked,
                top1_maps,
                top2_maps,
                probs[image],
                logits.softmax(1),
                top1[image],
                ad_form=self.ad_form,
                cs_threshold=self.cs_threshold,
                top_k=self.top_k,
            )
            for key in AVX_KEYS:
                parts[key].append(scores[key])
        return {key: torch.cat(values) for key, values in parts.items()}

    # ------------------------------------------------------------------------------------------------------

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: int | list[int] | Tensor | None = None,
        additional_forward_args: Any = None,
        *,
        selection: Selection = "avx",
        upsample: bool = False,
        return_details: bool = False,
        internal_batch_size: int | None = None,
    ) -> Tensor | tuple[Tensor, ADVISEDetails]:
        """The ADVISE map of ``target`` (the predicted class when None) for each image.

        Args:
            inputs: normalised model inputs (B, C, H, W), or a one-tensor tuple of them.
            target: int, list or (B,) tensor of classes; None explains the predicted class.
            additional_forward_args: extra forward arguments (tensors with one row per image are split with
                the images).
            selection: ``"avx"`` (ADVISE: the group with the best AVX, ties to the smallest peak count) or
                ``"largest_group"`` (the group with the most channels, ties to the smaller peak count; group 0
                only when it is the only one; no extra model calls).
            upsample: return (B, 1, H, W) maps (bicubic, clamped to [0, 1]) instead of the layer's (h, w).
            return_details: also return an :class:`ADVISEDetails`.
            internal_batch_size: images per forward/backward pass and (image, group) rows per AVX forward;
                None: all at once.

        Returns:
            (B, 1, h, w) maps in [0, 1] (or (B, 1, H, W) with ``upsample``), with the details when asked.
        """
        tensors, _ = format_inputs(inputs, max_tensors=1, ndim=4)
        x = tensors[0]
        check_in_choices("selection", selection, ("avx", "largest_group"))
        check_flag("upsample", upsample)
        check_flag("return_details", return_details)
        check_internal_batch_size(internal_batch_size)
        module = forward_module(self.forward_func)
        if module is not None:
            check_inputs_on_model_device("inputs", x, module)
        require_grad_mode("ADVISE")
        warn_if_training(module, "ADVISE")
        extra = format_additional_forward_args(additional_forward_args)
        batch = x.shape[0]
        formatted = format_target(target, batch, None, x.device)
        pixels = self._to_pixels(x) if selection == "avx" else None
        with preserved_state(module):
            timings: dict[str, float] = {}

            start = time.perf_counter()
            activations, grad1, grad2, probs, top1, top2 = self._forward_backward(
                x, extra, formatted, internal_batch_size
            )
            timings["forward_backward"] = time.perf_counter() - start

            start = time.perf_counter()
            relevance, dropped = self._relevance(activations)
            timings["kde"] = time.perf_counter() - start

            start = time.perf_counter()
            channels = activations.shape[1]
            num_groups = int(relevance.max()) + 1
            alpha1 = grad1.mean((2, 3))
            alpha2 = grad2.mean((2, 3))
            maps_top1 = rescale_maps(group_cams(activations, alpha1, relevance, num_groups).relu())
            maps_top2 = rescale_maps(group_cams(activations, alpha2, relevance, num_groups).relu())
            sizes = F.one_hot(relevance, num_groups).sum(1)  # (B, G)
            valid = (sizes > 0) & (maps_top1.flatten(2).amax(2) > 0)
            timings["groups"] = time.perf_counter() - start

            start = time.perf_counter()
            scores: dict[str, Tensor] = {}
            if selection == "largest_group":
                peaks = torch.arange(num_groups, device=x.device)
                # Groups with peaks first, then the most channels; argmax takes the first, the smaller g, on ties.
                key = torch.where(valid, sizes + (peaks > 0) * (channels + 1), -1)
                chosen = key.argmax(1)
            else:
                assert pixels is not None
                rows = valid.nonzero()
                chosen = torch.zeros(batch, dtype=torch.long, device=x.device)
                if rows.numel():
                    row_scores = self._avx_of_groups(
                        pixels, extra, rows, maps_top1, maps_top2, probs, top1, internal_batch_size
                    )
                    for name, values in row_scores.items():
                        table = torch.full(
                            (batch, num_groups), float("nan"), dtype=values.dtype, device=x.device
                        )
                        table[rows[:, 0], rows[:, 1]] = values
                        scores[name] = table
                    # argmax takes the first maximum: ties go to the smallest peak count.
                    chosen = torch.where(valid, scores["avx"], float("-inf")).argmax(1)
            timings["selection"] = time.perf_counter() - start

            survived = valid.any(1)
            index = torch.arange(batch, device=x.device)
            selected = maps_top1[index, chosen]
            # No group survived: the whole-layer Grad-CAM of the softmax probability (zeros if that is zero too).
            whole = rescale_maps((alpha1[:, :, None, None] * activations).sum(1).relu())
            selected = torch.where(survived[:, None, None], selected, whole).unsqueeze(1)
            if upsample:
                selected = upsample_maps(selected, tuple(x.shape[-2:]))
            attributions = selected.to(x.dtype)
            warn_uninformative("ADVISE", constant=constant_rows(attributions))
            if not return_details:
                return attributions

            counts = valid.sum(1)
            per_image_kde = timings["kde"] / batch
            details = ADVISEDetails(
                relevance=relevance,
                group_sizes=sizes,
                valid_groups=valid,
                group_maps=maps_top1,
                runner_up_maps=maps_top2,
                group_scores=scores,
                selected_group=torch.where(survived, chosen, -1),
                selected_size=torch.where(survived, sizes[index, chosen], channels),
                target=top1,
                runner_up=top2,
                dropped_fraction=dropped,
                time_per_group=per_image_kde / counts.clamp_min(1).to(torch.float64),
                timings=timings,
            )
            return attributions, details
