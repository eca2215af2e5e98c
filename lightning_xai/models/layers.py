"""Finding layers and stages in timm, torchvision and Hugging Face models."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import describe

#: Module lists that hold the encoder blocks of Hugging Face BERT-like models, by attribute path.
_HF_ENCODER_LISTS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers")


@dataclass(frozen=True)
class Stage:
    """A stage of a backbone: where features of one resolution leave it.

    ``reduction`` is the input-to-feature stride for images (the patch size for a ViT) and 1 for token models.
    """

    name: str
    module: nn.Module
    channels: int
    reduction: int


def _known_submodule(model: nn.Module) -> nn.Module | None:
    """The shallowest submodule of ``model`` (itself first) of a known family, in registration order."""
    level, seen = [model], set()
    while level:
        following = []
        for module in level:
            if id(module) in seen:
                continue
            seen.add(id(module))
            if _is_known_family(module):
                return module
            following.extend(module.children())
        level = following
    return None


def _unwrap(model: nn.Module) -> nn.Module:
    """The classifier inside wrappers (Lightning modules, DDP, ``self.net`` / ``self.backbone``, nesting): the
    shallowest submodule of a known family, or ``model`` itself when none is."""
    found = _known_submodule(model)
    return model if found is None else found


def _describe_children(model: nn.Module, depth: int = 2, limit: int = 12) -> str:
    names = [
        f"{name} ({type(module).__name__})"
        for name, module in model.named_modules()
        if name and name.count(".") < depth
    ]
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "no submodules"


def find_network(module: nn.Module, attr: str | None = None, *, who: str = "lightning_xai") -> nn.Module:
    """The network inside ``module`` that a method explains or extends.

    ``attr`` names the attribute that holds it (a dotted path, e.g. ``"wrapper.net"``) and wins; otherwise the
    shallowest submodule (``module`` itself first) that is a timm model, a torchvision ResNet or a Hugging Face
    model, whatever its attribute is called (``model``, ``net``, ``backbone``, nested wrappers …). The error
    lists what was found when nothing matches.

    Example:
        >>> import timm, lightning as L
        >>> class Module(L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = timm.create_model("resnet18", pretrained=False, num_classes=3)
        >>> module = Module()
        >>> find_network(module) is module.net
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module, got {describe(module)}")
    if attr is not None:
        try:
            network = module.get_submodule(attr)
        except AttributeError:
            network = None
        if network is None:
            raise AttributeError(
                f"{who}: `model_attr={attr!r}`: {type(module).__name__} has no submodule of that name; its "
                f"submodules: {_describe_children(module)}"
            )
        return network
    found = _known_submodule(module)
    if found is None:
        raise AttributeError(
            f"{who} cannot find the network inside {type(module).__name__}: no submodule is a timm model, a "
            "torchvision ResNet or a Hugging Face model (found: "
            f"{_describe_children(module)}). Pass `model_attr=` naming the attribute that holds the network"
        )
    return found


def _is_hf(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return config is not None and hasattr(config, "model_type")


def _is_known_family(model: nn.Module) -> bool:
    return bool(_timm_feature_info(model)) or _is_hf(model) or _is_torchvision_resnet(model)


def _timm_feature_info(model: nn.Module) -> list[dict]:
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and isinstance(info[0], dict) and "module" in info[0]:
        return info
    return []


def _is_torchvision_resnet(model: nn.Module) -> bool:
    return all(hasattr(model, name) for name in ("layer4", "fc", "avgpool")) and not _timm_feature_info(model)


def _hf_encoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The deepest-named ModuleList of encoder blocks of a Hugging Face encoder."""
    best = None
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module)
            and any(name == path or name.endswith("." + path) for path in _HF_ENCODER_LISTS)
        ):
            best = (name, module)
    return best


def _layer_choices(model: nn.Module, limit: int = 40) -> str:
    names = [
        name for name, module in model.named_modules() if name and any(True for _ in module.parameters())
    ]
    tail = names[-limit:]
    more = f" (last {limit} of {len(names)})" if len(names) > limit else ""
    return f"layer names you could pass{more}: {', '.join(tail)}"


def _get_submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"`layer` {name!r} is not a submodule of the model.{hint} {_layer_choices(model)}"
        ) from None


def _auto_layer_name(model: nn.Module) -> str:
    """Name of the default explanation layer: the last spatial stage of a CNN, the last encoder block."""
    info = _timm_feature_info(model)
    if info:
        return info[-1]["module"]
    if _is_torchvision_resnet(model):
        return "layer4"
    if _is_hf(model):
        found = _hf_encoder_blocks(model)
        if found is not None:
            name, blocks = found
            return f"{name}.{len(blocks) - 1}"
    raise ValueError(
        f"cannot choose a layer automatically for a {type(model).__name__} (known: timm CNNs and ViTs, "
        f"torchvision ResNets, Hugging Face BERT-like encoders); pass `layer=` by name. {_layer_choices(model)}"
    )


def resolve_layer(model: nn.Module, layer: str | int | nn.Module = "auto") -> nn.Module:
    """Find a layer of ``model``.

    ``layer`` is a dotted submodule name (``"layer4"``, ``"stages.3"``, ``"bert.encoder.layer.1"``), an index
    into a timm model's ``feature_info`` (``-1`` is the last stage), a submodule itself, or ``"auto"``: the last
    spatial stage of a CNN (timm: the last ``feature_info`` module; torchvision ResNet: ``layer4``) or the last
    encoder block of a transformer (timm ViT, Hugging Face BERT, RoBERTa, DistilBERT). Wrappers that hold the
    classifier as ``.model`` or ``.module`` are looked through.

    Example:
        >>> import timm
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=4)
        >>> resolve_layer(model) is model.layer4
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {describe(model)}")
    if isinstance(layer, nn.Module):
        if not any(module is layer for module in model.modules()):
            raise ValueError(f"`layer` ({type(layer).__name__}) is not a submodule of the model")
        return layer
    if isinstance(layer, bool) or not isinstance(layer, (str, int)):
        raise TypeError(
            f"`layer` must be a name, a feature_info index, a module or 'auto', got {describe(layer)}"
        )
    if isinstance(layer, int):
        inner = _unwrap(model)
        info = _timm_feature_info(inner)
        if not info:
            raise ValueError(
                f"`layer` as an index needs a timm model with `feature_info`; {type(inner).__name__} has none. "
                f"{_layer_choices(model)}"
            )
        if not -len(info) <= layer < len(info):
            raise ValueError(f"`layer` index {layer} is out of range for {len(info)} feature_info stages")
        return inner.get_submodule(info[layer]["module"])
    if layer == "auto":
        inner = _unwrap(model)
        return inner.get_submodule(_auto_layer_name(inner))
    return _get_submodule(model, layer)


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """The dotted name of ``layer`` inside ``model``."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(f"`layer` ({type(layer).__name__}) is not a submodule of the model")


def _probe_shapes(model: nn.Module, modules: list[nn.Module], image_size: int) -> list[torch.Size]:
    """Output shapes of ``modules`` on one zero image, without changing the model's state."""
    shapes: dict[int, torch.Size] = {}

    def record(module: nn.Module, _inputs: object, output: object) -> None:
        shapes.setdefault(id(module), _first_tensor(output).shape)

    hooks = [m.register_forward_hook(record) for m in modules]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return [shapes[id(m)] for m in modules]


def _first_tensor(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def list_stages(model: nn.Module, image_size: int = 224) -> list[Stage]:
    """List a backbone's stages with their channels and reduction, shallow to deep.

    timm models: their ``feature_info`` (for a ViT, every block at the patch size); torchvision ResNets:
    ``layer1`` to ``layer4`` (channels measured with one forward of a zero ``image_size`` image); Hugging Face
    encoders: every encoder block, with the hidden size as channels and reduction 1.

    Example:
        >>> import timm
        >>> model = timm.create_model("resnet18", pretrained=False)
        >>> [(s.name, s.channels, s.reduction) for s in list_stages(model)][-1]
        ('layer4', 512, 32)
    """
    inner = _unwrap(model)
    prefix = "" if inner is model else layer_name(model, inner) + "."
    info = _timm_feature_info(inner)
    if info:
        return [
            Stage(
                prefix + d["module"], inner.get_submodule(d["module"]), int(d["num_chs"]), int(d["reduction"])
            )
            for d in info
        ]
    if _is_torchvision_resnet(inner):
        names = ["layer1", "layer2", "layer3", "layer4"]
        modules = [inner.get_submodule(n) for n in names]
        shapes = _probe_shapes(inner, modules, image_size)
        return [
            Stage(prefix + n, m, int(s[1]), image_size // int(s[-1]))
            for n, m, s in zip(names, modules, shapes, strict=True)
        ]
    if _is_hf(inner):
        found = _hf_encoder_blocks(inner)
        if found is not None:
            name, blocks = found
            hidden = int(getattr(inner.config, "hidden_size", getattr(inner.config, "dim", 0)))
            return [Stage(f"{prefix}{name}.{i}", block, hidden, 1) for i, block in enumerate(blocks)]
    raise ValueError(
        f"cannot list the stages of a {type(inner).__name__} (known: timm models with feature_info, torchvision "
        f"ResNets, Hugging Face BERT-like encoders). {_layer_choices(model)}"
    )
