"""What the callbacks that explain during validation share: the method (built from a name or class with its
arguments, so YAML can configure it), the batch reading, the target choice and the gradient-mode check."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from .._checks import check_in_choices
from ..attr.registry import explain_batch, resolve_method
from ..data.batch import Batch, split_batch
from ..explain import require_grad_mode
from ..models import logits_of

TargetChoice = Literal["label", "prediction"]


class AttributionCallback(L.Callback):
    """Base class: holds the attribution method and computes maps for a batch of a LightningModule.

    Args:
        method: a short name (``"gradcam"``, ``"integrated_gradients"``, ``"igos"``, ...; see
            :data:`lightning_xai.attr.registry.METHOD_NAMES`), a dotted class path or a Captum-contract class.
        method_args: constructor arguments of the method.
        attribute_args: arguments of its ``attribute`` call.
        layer: the layer of layer methods (name, feature_info index or ``"auto"``).
        target: explain the batch's label (``"label"``) or the model's prediction (``"prediction"``).
        batch_adapter: for batches :func:`~lightning_xai.data.split_batch` cannot read.
    """

    def __init__(
        self,
        method: str | type = "gradcam",
        method_args: Mapping[str, Any] | None = None,
        attribute_args: Mapping[str, Any] | None = None,
        layer: str | int = "auto",
        target: TargetChoice = "label",
        batch_adapter: Callable[[Any], Batch] | None = None,
    ) -> None:
        super().__init__()
        resolve_method(method)  # fail at construction for an unknown name, not an epoch later
        check_in_choices("target", target, ("label", "prediction"))
        self.method = method
        self.method_args = dict(method_args or {})
        self.attribute_args = dict(attribute_args or {})
        self.layer = layer
        self.target = target
        self.batch_adapter = batch_adapter

    def check_grad_mode(self, stage: str) -> None:
        """Raise a clear error when the loop runs under ``torch.inference_mode()``, where no gradient exists."""
        require_grad_mode(f"{type(self).__name__} (attributions during {stage})")

    def read_batch(self, batch: Any) -> Batch:
        return split_batch(batch, self.batch_adapter)

    def targets(self, pl_module: L.LightningModule, inputs: Tensor, labels: Tensor | None) -> Tensor:
        if self.target == "label":
            if labels is None:
                raise ValueError(
                    f"{type(self).__name__}(target='label') needs labels in the batch; "
                    "use target='prediction' for unlabelled data"
                )
            return labels.to(inputs.device)
        with torch.no_grad():
            return logits_of(pl_module(inputs)).argmax(1)

    def maps(self, pl_module: L.LightningModule, inputs: Tensor, target: Tensor) -> Tensor:
        """(B, H, W) attribution maps of ``target`` for ``inputs`` (the module's state is restored)."""
        return explain_batch(
            pl_module,
            inputs,
            target,
            self.method,
            layer=self.layer,
            method_args=self.method_args,
            attribute_args=self.attribute_args,
        )
