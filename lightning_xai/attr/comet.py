"""The mask of a trained COMET selector behind Captum's ``Attribution`` interface.

:func:`selector_mask` is the one place where a selector's output becomes the mask ``m = σ(S(x))``; the
LightningModule :class:`~lightning_xai.modules.ComprehensiveAttribution` trains through it and
:class:`SelectorAttribution` explains with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from .._checks import (
    check_inputs_on_model_device,
    check_internal_batch_size,
    check_tensor,
    describe,
    format_target,
)
from ..explain import constant_rows, preserved_state, warn_if_training, warn_uninformative
from ..models import forward_module
from ..models.scoring import chunk_bounds, select_forward_args
from ._base import check_forward_func
from ._common import (
    format_additional_forward_args,
    format_inputs,
    format_output,
)

__all__ = ["SelectorAttribution", "selector_logits", "selector_mask"]


def selector_logits(output: Any, size: tuple[int, int]) -> Tensor:
    """The (B, 1, H, W) mask logits of a selector's raw output, resized bilinearly to ``size`` (H, W).

    Accepts a tensor (B, 1, h, w) or (B, h, w), a torchvision segmentation output (a mapping with ``"out"``),
    or an object / mapping with ``logits`` (Hugging Face). Anything with more than one channel is an error:
    the mask is one map per image.
    """
    if isinstance(output, Mapping):
        key = "out" if "out" in output else "logits" if "logits" in output else None
        if key is None:
            raise ValueError(
                f"the selector returned a mapping with keys {sorted(output)}; expected a tensor, a torchvision "
                "segmentation output with 'out', or one with 'logits'"
            )
        output = output[key]
    elif not isinstance(output, Tensor) and isinstance(getattr(output, "logits", None), Tensor):
        output = output.logits
    if not isinstance(output, Tensor):
        raise TypeError(f"the selector must return a tensor (B, 1, h, w), got {describe(output)}")
    if output.ndim == 3:
        output = output.unsqueeze(1)
    if output.ndim != 4 or output.shape[1] != 1:
        raise ValueError(
            "the selector must return a one-channel map (B, 1, h, w) (or (B, h, w)), resized to the input "
            f"when h, w differ; got {describe(output)}. Build it with one output channel (e.g. num_classes=1)."
        )
    if not output.is_floating_point():
        raise TypeError(f"the selector must return a floating-point map, got {describe(output)}")
    if tuple(output.shape[-2:]) != tuple(size):
        output = F.interpolate(output, size=tuple(size), mode="bilinear", align_corners=False)
    return output


def selector_mask(selector: Callable[..., Any], inputs: Tensor, *args: Any) -> Tensor:
    """COMET's mask ``m = σ(S(x)) ∈ (0, 1)^{B×1×H×W}`` at the input's resolution (differentiable).

    Example:
        >>> import torch
        >>> selector = torch.nn.Conv2d(3, 1, 3, padding=1)
        >>> selector_mask(selector, torch.rand(2, 3, 16, 16)).shape
        torch.Size([2, 1, 16, 16])
    """
    output = selector(inputs, *args)
    logits = selector_logits(output, tuple(inputs.shape[-2:]))
    if logits.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"the selector must return one map per image ({inputs.shape[0]}), got {describe(logits)}"
        )
    return torch.sigmoid(logits)


class SelectorAttribution(Attribution):
    """The mask of a COMET selector (:class:`~lightning_xai.modules.ComprehensiveAttribution`) as an attribution.

    One selector forward per batch, without gradients: ``m = σ(S(x))``, (B, 1, H, W) in (0, 1), higher = kept
    by the selector. The mask is **class-agnostic** (the selector sees only the image): ``target`` is accepted
    and validated for the Captum contract, but has no effect. Pass the maps to the metrics like any other
    method's (PxAP and IoU-AUC take them as they are, since they already lie in [0, 1]).

    Args:
        forward_func: the trained ``ComprehensiveAttribution`` (or any module with a ``selector`` attribute, or a
            wrapper holding one as ``forward_func``); its selector is used.
        selector: the selector module itself, when ``forward_func`` holds none (then ``forward_func`` may be
            any callable, e.g. the predictor).

    Example:
        >>> import torch
        >>> selector = torch.nn.Conv2d(3, 1, 3, padding=1).eval()
        >>> explainer = SelectorAttribution(lambda x: x.mean((2, 3)), selector=selector)
        >>> x = torch.rand(2, 3, 16, 16)
        >>> maps = explainer.attribute(x, target=0)
        >>> maps.shape, bool(torch.equal(maps, explainer.attribute(x, target=2)))
        (torch.Size([2, 1, 16, 16]), True)
    """

    def __init__(self, forward_func: Callable[..., Any], selector: nn.Module | None = None) -> None:
        check_forward_func(forward_func)
        super().__init__(forward_func)
        if selector is None:
            module = forward_module(forward_func)
            selector = getattr(module, "selector", None) if module is not None else None
        if not isinstance(selector, nn.Module):
            raise ValueError(
                "SelectorAttribution needs a selector: pass a ComprehensiveAttribution module (it holds "
                f"`selector`) or `selector=`; got {describe(forward_func)} without one"
            )
        self.selector = selector

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: int | list[int] | Tensor | None = None,
        additional_forward_args: Any = None,
        *,
        expand_to_input: bool = False,
        internal_batch_size: int | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        """The selector's mask of each image.

        Args:
            inputs: images (B, C, H, W) or a one-tensor tuple.
            target: accepted (int, list, (B,) tensor or None) and checked (against the module's
                ``num_classes`` when it has one), without effect: the mask is class-agnostic.
            additional_forward_args: passed to the selector after the images.
            expand_to_input: broadcast the mask over the input's channels, (B, C, H, W).
            internal_batch_size: images per selector call (None: the whole batch).

        Returns:
            The input's structure: (B, 1, H, W) (or (B, C, H, W) with ``expand_to_input``) in (0, 1).
        """
        tensors, is_tuple = format_inputs(inputs, max_tensors=1, ndim=4)
        x = tensors[0]
        check_internal_batch_size(internal_batch_size)
        module = forward_module(self.forward_func)
        num_classes = getattr(module, "num_classes", None)  # ComprehensiveAttribution knows its classes
        format_target(target, x.shape[0], num_classes if isinstance(num_classes, int) else None, x.device)
        check_inputs_on_model_device("inputs", x, self.selector)
        warn_if_training(self.selector, "SelectorAttribution")
        extra = format_additional_forward_args(additional_forward_args)
        batch = x.shape[0]
        outputs = []
        with torch.no_grad(), preserved_state(self.selector):
            for begin, stop in chunk_bounds(batch, internal_batch_size):
                index = torch.arange(begin, stop, device=x.device)
                chunk_extra = select_forward_args(extra, index, batch)
                outputs.append(selector_mask(self.selector, x[begin:stop], *chunk_extra))
        mask = check_tensor("the selector's mask", torch.cat(outputs)).to(x.dtype)
        warn_uninformative("SelectorAttribution", constant=constant_rows(mask))
        if expand_to_input:
            mask = mask.expand(-1, x.shape[1], -1, -1)
        return format_output(is_tuple, (mask,))

    def compute_convergence_delta(self, *args: Any, **kwargs: Any) -> Tensor:  # pragma: no cover
        raise NotImplementedError("SelectorAttribution has no convergence delta")
