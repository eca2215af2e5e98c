"""A plain image classifier LightningModule: the baseline the demo and the examples train."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from ..data.batch import Batch, split_batch
from ..models.zoo import build_model


class ImageClassifier(L.LightningModule):
    """Cross-entropy classification of any backbone, with the loss kept as ``self.criterion``.

    ``model`` is an ``nn.Module``, ``"small_resnet"`` (:func:`~lightning_xai.models.small_resnet`, for the
    synthetic data) or a timm model name (built with random weights unless ``pretrained``).
    The loss lives in ``self.criterion`` so that the library's training callbacks can reach it (see the
    loss-tap protocol in the design notes). Logs ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``,
    ``test_acc``.

    Example:
        >>> import torch
        >>> module = ImageClassifier("small_resnet", num_classes=4)
        >>> module(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        model: nn.Module | str = "small_resnet",
        num_classes: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        pretrained: bool = False,
        batch_adapter: Callable[[Any], Batch] | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"`lr` must be positive, got {lr!r}")
        # a model given by name is saved with the hyper-parameters, so load_from_checkpoint rebuilds it
        self.save_hyperparameters(ignore=["batch_adapter"] + ([] if isinstance(model, str) else ["model"]))
        self.model = build_model(model, num_classes, pretrained)
        self.criterion = nn.CrossEntropyLoss()
        self.batch_adapter = batch_adapter

    def forward(self, inputs: Tensor) -> Tensor:
        return self.model(inputs)

    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        parts = split_batch(batch, self.batch_adapter)
        if parts.target is None:
            raise ValueError(
                "ImageClassifier needs labels in the batch (a `label` key or a (input, target) tuple)"
            )
        logits = self(parts.inputs)
        loss = self.criterion(logits, parts.target)
        acc = (logits.argmax(1) == parts.target).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "test")
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self(split_batch(batch, self.batch_adapter).inputs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
