"""Heatmaps of XNN concepts behind Captum's ``Attribution`` interface (``docs/methods/xnn.md``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from .._checks import check_inputs_on_model_device, check_internal_batch_size, describe, format_target
from ..explain import (
    UninformativeExplanationWarning,
    constant_rows,
    grad_cam,
    preserved_state,
    warn_if_training,
    warn_uninformative,
)
from ..models import forward_module, resolve_layer
from ..models.scoring import chunk_bounds, select_forward_args
from ._common import (
    format_additional_forward_args,
    format_inputs,
    format_output,
)
from .igos import IGOS

__all__ = ["XNNConceptAttribution"]

HeatmapFn = Callable[[Tensor, Tensor], Tensor]


class XNNConceptAttribution(Attribution):
    """Where each concept of an XNN looks: one heatmap per image and concept.

    The forward function maps images to the concepts h (B, k) ≥ 0: an XNN's
    :meth:`~lightning_xai.modules.XNN.concept_model`, or the XNN itself (anything with a ``concept_model()``
    method is asked for it). Concept ``j`` is explained like a class with ``target=j``: the rows
    (image, concept) are laid out image-major, B·k rows, and explained in one batched pass (chunks of
    ``internal_batch_size`` rows).

    - ``method="gradcam"`` (default): the library's batched Grad-CAM of h_j at ``layer`` (``"auto"``: the
      backbone's last spatial stage), ReLU'd, upsampled bilinearly to the input, not normalised.
    - ``method="igos"``: :class:`~lightning_xai.attr.IGOS` with ``score="logit"`` on h_j (a softmax over concepts
      would be meaningless); extra keyword arguments of :meth:`attribute` go to it. Expensive.
    - a callable ``(inputs, target) -> maps`` with maps (N, 1, H, W) or (N, H, W) (channels are summed,
      other sizes resized bilinearly, negative values set to 0).

    A concept that is inactive for an image (h_j = 0) gets an all-zero map.

    Example:
        >>> import torch
        >>> from lightning_xai.models import small_resnet
        >>> from lightning_xai.modules import XNN
        >>> xnn = XNN(small_resnet(num_classes=2, width=4), num_concepts=3, hidden=(8,)).eval()
        >>> maps = XNNConceptAttribution(xnn).attribute(torch.rand(2, 3, 16, 16))
        >>> maps.shape, bool(maps.min() >= 0)
        (torch.Size([2, 3, 16, 16]), True)
    """

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        # an XNN itself, also behind a forward function (the registry passes LogitsForward(model))
        owner = forward_func if hasattr(forward_func, "concept_model") else forward_module(forward_func)
        concept_model = getattr(owner, "concept_model", None)
        if callable(concept_model):
            forward_func = concept_model()
        if not callable(forward_func):
            raise TypeError(f"`forward_func` must be a concept model or an XNN, got {describe(forward_func)}")
        super().__init__(forward_func)

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: int | list[int] | Tensor | None = None,
        additional_forward_args: Any = None,
        *,
        method: str | HeatmapFn = "gradcam",
        layer: str | int | nn.Module = "auto",
        internal_batch_size: int | None = None,
        **method_kwargs: Any,
    ) -> Tensor | tuple[Tensor, ...]:
        """Concept heatmaps of images (B, C, H, W).

        Args:
            inputs: images, or a one-tensor tuple of them (the output then is a one-tensor tuple).
            target: the concept per image (int, list or (B,) tensor): (B, 1, H, W) maps; ``None``: every concept,
                (B, k, H, W).
            additional_forward_args: extra positional arguments of the forward (tensors with one row per image
                are repeated for that image's rows).
            method: ``"gradcam"``, ``"igos"`` or a callable ``(inputs, target) -> maps``.
            layer: the Grad-CAM layer (a name, a timm ``feature_info`` index, a module or ``"auto"``).
            internal_batch_size: rows (image, concept) per pass; None: all B·k rows at once.
            **method_kwargs: passed to I-GOS (``n_iterations``, ``mask_size``, ``seed``, …).

        Returns:
            Non-negative, finite maps of the inputs' dtype: (B, k, H, W), or (B, 1, H, W) with a ``target``.
        """
        tensors, is_tuple = format_inputs(inputs, max_tensors=1, ndim=4)
        images = tensors[0]
        check_internal_batch_size(internal_batch_size)
        if not (callable(method) or method in ("gradcam", "igos")):
            raise ValueError(
                f"`method` must be 'gradcam', 'igos' or a callable (inputs, target) -> maps, got {method!r}"
            )
        if method_kwargs and method != "igos":
            raise TypeError(f"unexpected keyword arguments for method {method!r}: {sorted(method_kwargs)}")
        module = forward_module(self.forward_func)
        if module is not None:
            check_inputs_on_model_device("inputs", images, module)
        backbone = getattr(module, "model", None)
        if method == "gradcam" and isinstance(backbone, nn.Module) and not isinstance(layer, nn.Module):
            layer = resolve_layer(backbone, layer)  # names refer to the backbone, not to the concept model
        warn_if_training(module, "XNNConceptAttribution")
        extra = format_additional_forward_args(additional_forward_args)
        batch = images.shape[0]

        with preserved_state(module, self.forward_func):
            with torch.no_grad():
                concepts = self.forward_func(images, *extra)
            if not isinstance(concepts, Tensor) or concepts.ndim != 2 or concepts.shape[0] != batch:
                raise ValueError(f"the concept model must return (B, k) concepts, got {describe(concepts)}")
            k = concepts.shape[1]
            chosen = format_target(target, batch, k, images.device)
            if chosen is None:
                image_index = torch.arange(batch, device=images.device).repeat_interleave(k)
                row_target = torch.arange(k, device=images.device).repeat(batch)
            else:
                image_index = torch.arange(batch, device=images.device)
                row_target = chosen
            active = concepts[image_index, row_target] > 0

            maps = []
            for begin, stop in chunk_bounds(image_index.numel(), internal_batch_size):
                rows = image_index[begin:stop]
                rows_extra = select_forward_args(extra, rows, batch)
                maps.append(
                    self._maps(
                        images.index_select(0, rows),
                        row_target[begin:stop],
                        rows_extra,
                        method,
                        layer,
                        method_kwargs,
                    )
                )
            heat = torch.cat(maps)
            # an inactive concept has no evidence to show (a zero map by design); an active one with a constant
            # map is named
            blank = torch.zeros(batch, dtype=torch.bool, device=images.device)
            blank[image_index[constant_rows(heat) & active]] = True
            warn_uninformative("XNNConceptAttribution", constant=blank)
            heat = torch.where(active.view(-1, 1, 1), heat, torch.zeros_like(heat))
            out = heat.view(batch, -1, *images.shape[-2:]).to(images.dtype)
            return format_output(is_tuple, (out,))

    def _maps(
        self,
        rows: Tensor,
        target: Tensor,
        extra: tuple[Any, ...],
        method: str | HeatmapFn,
        layer: str | int | nn.Module,
        method_kwargs: dict[str, Any],
    ) -> Tensor:
        """(N, H, W) maps, ≥ 0, of the rows' concepts."""
        size = tuple(rows.shape[-2:])
        if method == "gradcam":
            maps = grad_cam(
                self.forward_func,
                rows,
                target,
                layer,
                upsample=True,
                additional_forward_args=extra,
                warn_uninformative_maps=False,  # `attribute` names them, once for all the rows
            )
        elif method == "igos":
            kwargs = {"score": "logit", **method_kwargs}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UninformativeExplanationWarning)
                maps = IGOS(self.forward_func).attribute(
                    rows, target=target, additional_forward_args=extra or None, **kwargs
                )
            maps = maps[:, :1]
        else:
            maps = method(rows, target)
            if not isinstance(maps, Tensor) or maps.shape[0] != rows.shape[0]:
                raise ValueError(
                    f"the heatmap callable must return one map per row ({rows.shape[0]}), got {describe(maps)}"
                )
        maps = maps.detach().float()
        if maps.ndim == 4:
            if maps.shape[1] != 1:
                maps = maps.sum(1, keepdim=True)
            if tuple(maps.shape[-2:]) != size:
                maps = torch.nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)
            maps = maps[:, 0]
        if maps.ndim != 3 or tuple(maps.shape[-2:]) != size:
            raise ValueError(
                f"concept heatmaps must be (N, 1, H, W) or (N, H, W) at the input size, got {describe(maps)}"
            )
        return maps.clamp_min(0)  # negative evidence is not shown, as Grad-CAM's ReLU does

    # Captum's base class declares these; an explicit error is clearer than its NotImplementedError.
    def compute_convergence_delta(self, *args: Any, **kwargs: Any) -> Tensor:  # pragma: no cover
        raise NotImplementedError("XNNConceptAttribution has no convergence delta")
