"""Build any Captum-contract attribution method from a name, a class or a dotted path, and turn its output
into one map per image.

This is what lets a YAML file, a callback or the ``lightning-xai explain`` command name a method: the short
names below, a Captum class (``captum.attr.Saliency``), one of ours, or any class that follows the Captum
contract. The constructor's first argument receives the model's logits (a
:class:`~lightning_xai.models.LogitsForward` around the model); a ``layer`` argument, when the class takes
one and none is given, receives the layer :func:`~lightning_xai.models.resolve_layer` finds.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import describe
from .._registry import NameRegistry
from ..explain import constant_rows, warn_uninformative
from ..models import LogitsForward, resolve_layer

#: Short names accepted wherever a method is named; values are dotted class paths.
METHOD_NAMES: dict[str, str] = {
    "gradcam": "captum.attr.LayerGradCam",
    "integrated_gradients": "captum.attr.IntegratedGradients",
    "saliency": "captum.attr.Saliency",
    "igos": "lightning_xai.attr.IGOS",
    "igos++": "lightning_xai.attr.IGOSPlusPlus",
    "mhex": "lightning_xai.attr.MHEXAttribution",
    "advise": "lightning_xai.attr.ADVISE",
    "sag": "lightning_xai.attr.StructuredAttentionGraph",
    "selector": "lightning_xai.attr.SelectorAttribution",
    "xnn": "lightning_xai.attr.XNNConceptAttribution",
}

METHODS = NameRegistry("attribution method", METHOD_NAMES, "captum.attr.Saliency")

#: Make a name a short name for the class at a dotted path (``register_method("mine", "pkg.mod.Class")``).
register_method = METHODS.register


def resolve_method(method: str | type) -> type:
    """The attribution class for a short name (see :data:`METHOD_NAMES`), a dotted class path or a class.

    Example:
        >>> resolve_method("gradcam").__name__
        'LayerGradCam'
        >>> resolve_method("captum.attr.Saliency").__name__
        'Saliency'
    """
    cls = METHODS.resolve(method)
    if not callable(getattr(cls, "attribute", None)):
        raise TypeError(
            f"{cls.__name__} has no `attribute` method, so it is not a Captum-contract attribution"
        )
    return cls


def build_attribution(
    method: str | type,
    model: nn.Module,
    *,
    layer: str | int | nn.Module | None = "auto",
    init_args: Mapping[str, Any] | None = None,
) -> Any:
    """Construct ``method`` for ``model``.

    Args:
        method: a short name (:data:`METHOD_NAMES`), a dotted class path or a class.
        model: the classifier; the method sees its logits (Hugging Face outputs are unwrapped).
        layer: for methods that take a ``layer``: a name, a feature_info index, a module or ``"auto"``.
        init_args: further constructor arguments.

    Example:
        >>> import timm
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=3)
        >>> type(build_attribution("gradcam", model)).__name__
        'LayerGradCam'
    """
    cls = resolve_method(method)
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {describe(model)}")
    kwargs = dict(init_args or {})
    parameters = inspect.signature(cls.__init__).parameters
    if "layer" in parameters and "layer" not in kwargs:
        if layer is None:
            raise ValueError(f"{cls.__name__} needs a `layer`; pass a layer name or 'auto'")
        kwargs["layer"] = resolve_layer(model, layer)
    elif isinstance(kwargs.get("layer"), (str, int)):
        kwargs["layer"] = resolve_layer(model, kwargs["layer"])
    if list(parameters)[1:2] == ["model"]:
        return cls(model, **kwargs)
    return cls(LogitsForward(model), **kwargs)


def attribution_maps(
    attribution: Any,
    inputs: Tensor,
    target: Tensor | int | list[int] | None = None,
    attribute_args: Mapping[str, Any] | None = None,
) -> Tensor:
    """Run ``attribution.attribute`` and return one (B, H, W) map per image at the input's resolution.

    Channel attributions are summed over channels; layer attributions (smaller maps) are resized bilinearly.
    The result is detached and higher means more important, as the Captum contract says.
    """
    if not isinstance(inputs, Tensor) or inputs.ndim != 4:
        raise ValueError(f"`inputs` must be a (B, C, H, W) tensor, got {describe(inputs)}")
    with torch.enable_grad():
        result = attribution.attribute(inputs, target=target, **dict(attribute_args or {}))
    if isinstance(result, tuple):
        result = result[0]
    maps = result.detach().float()
    checks_itself = type(attribution).__module__.startswith("lightning_xai.")  # the package's methods do
    if not checks_itself:
        warn_uninformative(type(attribution).__name__, constant=constant_rows(maps))
    if maps.ndim == 4:
        maps = maps.sum(1)
    elif maps.ndim != 3:
        raise ValueError(
            f"{type(attribution).__name__} returned {describe(result)}; expected a map per image"
        )
    if maps.shape[-2:] != inputs.shape[-2:]:
        maps = F.interpolate(maps[:, None], size=inputs.shape[-2:], mode="bilinear", align_corners=False)[
            :, 0
        ]
    return maps


def explain_batch(
    model: nn.Module,
    inputs: Tensor,
    target: Tensor,
    method: str | type = "gradcam",
    *,
    layer: str | int | nn.Module | None = "auto",
    method_args: Mapping[str, Any] | None = None,
    attribute_args: Mapping[str, Any] | None = None,
) -> Tensor:
    """(B, H, W) maps of ``method`` for ``model`` on ``inputs`` and ``target``, with gradients enabled even
    inside ``torch.no_grad()`` (but not inside ``torch.inference_mode()``, where autograd cannot run).

    Example:
        >>> import timm, torch
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
        >>> explain_batch(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 2])).shape
        torch.Size([2, 32, 32])
    """
    attribution = build_attribution(method, model, layer=layer, init_args=method_args)
    return attribution_maps(attribution, inputs, target, attribute_args)
