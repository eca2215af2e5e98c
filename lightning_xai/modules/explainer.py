"""Explain a whole data set with Lightning's predict loop, so that Lightning spreads it over devices and nodes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from .._checks import check_in_choices
from ..attr.registry import explain_batch, resolve_method
from ..data.batch import Batch, split_batch
from ..explain import require_grad_mode
from ..metrics.functional import deletion_auc, insertion_auc
from ..models import LogitsForward, logits_of

#: Per-sample scores :class:`Explainer` can compute for every explained sample.
SAMPLE_METRICS: dict[str, Callable[..., Tensor]] = {"deletion": deletion_auc, "insertion": insertion_auc}


class Explainer(L.LightningModule):
    """Wrap a trained classifier so that ``trainer.predict`` explains every batch.

    Each predict step returns a dict with the batch's ``index`` (needed: batches must carry the samples'
    dataset indices, as :class:`~lightning_xai.data.IndexedDataset` and the library's datasets provide),
    ``maps`` (B, H, W), ``prediction``, ``confidence`` (softmax of the predicted class), ``target`` (the
    explained class), the ``inputs``, any ``name`` the batch holds, and ``scores``: per-sample values of
    ``metrics`` (``"deletion"``, ``"insertion"``). Pair it with
    :class:`~lightning_xai.callbacks.ExplanationWriter` to write the results. The Trainer must run with
    ``inference_mode=False``.

    Args:
        model: the classifier (any nn.Module returning logits or a Hugging Face output).
        method, method_args, attribute_args, layer: the attribution method (see
            :func:`~lightning_xai.attr.registry.build_attribution`).
        target: explain the predicted class (``"prediction"``) or the batch's label (``"label"``).
        metrics: per-sample metrics to compute; ``metric_args``: their keyword arguments.

    Example:
        >>> import torch
        >>> from lightning_xai.models import small_resnet
        >>> explainer = Explainer(small_resnet(num_classes=3), metrics=())
        >>> out = explainer.predict_step({"image": torch.rand(2, 3, 16, 16), "index": torch.tensor([4, 5])}, 0)
        >>> out["maps"].shape, out["index"].tolist()
        (torch.Size([2, 16, 16]), [4, 5])
    """

    def __init__(
        self,
        model: nn.Module,
        method: str | type = "gradcam",
        method_args: Mapping[str, Any] | None = None,
        attribute_args: Mapping[str, Any] | None = None,
        layer: str | int = "auto",
        target: Literal["prediction", "label"] = "prediction",
        metrics: Sequence[str] = ("deletion", "insertion"),
        metric_args: Mapping[str, Any] | None = None,
        batch_adapter: Callable[[Any], Batch] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        resolve_method(method)
        check_in_choices("target", target, ("prediction", "label"))
        for name in metrics:
            check_in_choices("metrics", name, tuple(SAMPLE_METRICS))
        self.model = model.eval()
        self.method = method
        self.method_args = dict(method_args or {})
        self.attribute_args = dict(attribute_args or {})
        self.layer = layer
        self.target = target
        self.metric_names = tuple(metrics)
        self.metric_args = dict(metric_args or {})
        self.batch_adapter = batch_adapter

    def forward(self, inputs: Tensor) -> Tensor:
        return logits_of(self.model(inputs))

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        require_grad_mode("Explainer (predict)")
        parts = split_batch(batch, self.batch_adapter)
        if parts.index is None:
            raise ValueError(
                "Explainer needs the samples' dataset indices in the batch (an `index` key, or wrap the dataset "
                "in lightning_xai.data.IndexedDataset) to write each sample exactly once"
            )
        self.model.eval()
        inputs = parts.inputs
        with torch.no_grad():
            probabilities = self(inputs).softmax(1)
        confidence, prediction = probabilities.max(1)
        if self.target == "label":
            if parts.target is None:
                raise ValueError(
                    "Explainer(target='label') needs labels in the batch; use target='prediction'"
                )
            target = parts.target.to(inputs.device)
        else:
            target = prediction
        maps = explain_batch(
            self.model,
            inputs,
            target,
            self.method,
            layer=self.layer,
            method_args=self.method_args,
            attribute_args=self.attribute_args,
        )
        forward = LogitsForward(self.model)
        scores = {
            name: SAMPLE_METRICS[name](forward, inputs, maps, target, reduction="none", **self.metric_args)
            for name in self.metric_names
        }
        names = batch.get("name") if isinstance(batch, Mapping) else None
        return {
            "index": parts.index.reshape(-1).cpu(),
            "maps": maps.cpu(),
            "inputs": inputs.detach().cpu(),
            "prediction": prediction.cpu(),
            "confidence": confidence.cpu(),
            "target": target.cpu(),
            "label": None if parts.target is None else parts.target.cpu(),
            "mask": None if parts.mask is None else parts.mask.cpu(),
            "scores": {k: v.detach().cpu() for k, v in scores.items()},
            "name": list(names) if names is not None else None,
        }
