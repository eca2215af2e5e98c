"""Small models for the demo, the examples and the benchmarks (random weights, CPU-friendly)."""

from __future__ import annotations

import timm
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from .._checks import check_in_choices, check_positive


def small_resnet(num_classes: int = 4, width: int = 16, in_chans: int = 3) -> ResNet:
    """A timm ResNet (one basic block per stage) for small images, with a stride-1 stem.

    ImageNet ResNets divide the resolution by 4 before their first stage, which erases small objects in
    32–64 px images; here the deep stem keeps full resolution (CIFAR-style), so stages run at strides
    1/2/4/8. ``feature_info`` is updated to those strides, so :func:`~lightning_xai.models.list_stages` and
    ``layer="auto"`` work as for any timm ResNet.

    Example:
        >>> import torch
        >>> model = small_resnet(num_classes=4)
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 4])
        >>> [d["reduction"] for d in model.feature_info]
        [1, 1, 2, 4, 8]
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 2:
        raise ValueError(f"`width` must be an int >= 2, got {width!r}")
    check_positive("num_classes", num_classes)
    model = ResNet(
        BasicBlock,
        [1, 1, 1, 1],
        num_classes=num_classes,
        in_chans=in_chans,
        channels=(width, 2 * width, 4 * width, 8 * width),
        stem_type="deep",
        stem_width=width // 2,
    )
    model.conv1[0].stride = (1, 1)
    model.maxpool = nn.Identity()
    for info in model.feature_info:
        info["reduction"] = max(1, info["reduction"] // 4)
    return model


def small_cnn(num_classes: int = 2, width: int = 16, pool: str = "max") -> nn.Sequential:
    """A three-layer CNN for small images: conv ``width`` → conv ``2·width`` (stride 2) → conv ``2·width``, each
    followed by ReLU (BatchNorm after the first two), then global pooling and a linear head.

    ``pool="max"`` asks "is this pattern anywhere in the image?": its pooled features mark which objects are
    present, so it can learn a class defined by two different parts (:class:`~lightning_xai.data.TwoPartDataset`).
    ``pool="avg"`` adds evidence up over the image and cannot. Layer ``"7"`` is the last conv layer's ReLU.

    Example:
        >>> import torch
        >>> small_cnn(num_classes=3)(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3])
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"`width` must be a positive int, got {width!r}")
    check_positive("num_classes", num_classes)
    check_in_choices("pool", pool, ("max", "avg"))
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


def build_model(model: str | nn.Module, num_classes: int, pretrained: bool = False) -> nn.Module:
    """A module as given, :func:`small_resnet` for ``"small_resnet"``, or a timm model by name."""
    if isinstance(model, nn.Module):
        return model
    if not isinstance(model, str):
        raise TypeError(f"`model` must be an nn.Module or a model name, got {type(model).__name__}")
    if model == "small_resnet":
        return small_resnet(num_classes)
    try:
        return timm.create_model(model, pretrained=pretrained, num_classes=num_classes)
    except RuntimeError as error:  # timm's message for unknown names
        raise ValueError(
            f"`model` {model!r} is neither 'small_resnet' nor a timm model name: {error}"
        ) from None
