"""COMET's networks: the selector (LR-ASPP MobileNetV3 as in the reference, or a small one) and the detector,
trained once on the full images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ..classifier import ImageClassifier

__all__ = ["build_selector", "small_selector", "train_detector"]

_SELECTOR_NAMES = ("lraspp_mobilenet_v3_large", "small_selector")


def small_selector(width: int = 16, in_chans: int = 3) -> nn.Module:
    """A small fully convolutional selector for 16–64 px images: one output channel at input resolution.

    Two stride-2 stages, a context block, bilinear upsampling and a skip connection from full resolution;
    random initialisation. It stands in for LR-ASPP where images are tiny and CPUs slow.

    Example:
        >>> import torch
        >>> small_selector()(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 1, 32, 32])
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 2:
        raise ValueError(f"`width` must be an int >= 2, got {width!r}")
    return _SmallSelector(width, in_chans)


class _SmallSelector(nn.Module):
    def __init__(self, width: int, in_chans: int) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.stem = block(in_chans, width)
        self.down = nn.Sequential(block(width, 2 * width, 2), block(2 * width, 2 * width, 2))
        self.context = nn.Sequential(block(2 * width, 2 * width, dilation=2), block(2 * width, 2 * width))
        self.fuse = block(3 * width, width)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, inputs: Tensor) -> Tensor:
        full = self.stem(inputs)
        coarse = self.context(self.down(full))
        coarse = F.interpolate(coarse, size=full.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.fuse(torch.cat([full, coarse], 1)))


def build_selector(selector: nn.Module | str | None) -> nn.Module:
    """A selector as given, or built by name with random weights: ``"lraspp_mobilenet_v3_large"`` (the default
    for None: torchvision's LR-ASPP, ``num_classes=1``, no backbone weights) or ``"small_selector"``."""
    if selector is None:
        selector = "lraspp_mobilenet_v3_large"
    if isinstance(selector, nn.Module):
        return selector
    if selector == "lraspp_mobilenet_v3_large":
        return torchvision.models.segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=1
        )
    if selector == "small_selector":
        return small_selector()
    raise ValueError(f"`selector` must be an nn.Module or one of {list(_SELECTOR_NAMES)}, got {selector!r}")


def train_detector(
    datamodule: L.LightningDataModule,
    model: nn.Module | str = "resnet18",
    num_classes: int | None = None,
    max_epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int | None = 0,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Train COMET's detector in one call: plain cross-entropy on the **full** images of ``datamodule``.

    The detector must see the data the selector will see, unmasked; it is then frozen by
    :class:`ComprehensiveAttribution`. This trains :class:`~lightning_xai.modules.ImageClassifier` (AdamW) with a
    quiet ``Trainer`` and returns its network in eval mode.

    Args:
        datamodule: the data module the COMET model will be trained on.
        model: an ``nn.Module``, ``"small_resnet"`` or a timm name (random weights).
        num_classes: classes; read from ``datamodule.num_classes`` when None.
        max_epochs, lr, weight_decay: training settings.
        seed: passed to ``lightning.seed_everything`` (None leaves the global seed alone).
        trainer_kwargs: overrides of the ``Trainer`` arguments (e.g. ``accelerator``, ``devices``).

    Returns:
        The trained classifier (an ``nn.Module`` returning (B, K) logits), in eval mode.
    """
    if num_classes is None:
        num_classes = getattr(datamodule, "num_classes", None)
        if not isinstance(num_classes, int):
            raise ValueError(
                "`num_classes` is needed: the data module has no integer `num_classes` attribute"
            )
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"`max_epochs` must be a positive int, got {max_epochs!r}")
    if seed is not None:
        L.seed_everything(seed, verbose=False)
    module = ImageClassifier(model, num_classes=num_classes, lr=lr, weight_decay=weight_decay)
    settings: dict[str, Any] = {
        "max_epochs": max_epochs,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    settings.update(trainer_kwargs or {})
    L.Trainer(**settings).fit(module, datamodule)
    return module.model.eval()
