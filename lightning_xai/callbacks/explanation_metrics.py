"""Score a method's explanations with the library's metrics on validation or test batches, every epoch."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from .._checks import describe
from ..data.batch import Batch
from ..metrics.registry import METRICS
from ..models import LogitsForward
from ._attribution import AttributionCallback, TargetChoice

_UPDATE_ARGS = {"inputs", "attributions", "target", "masks", "class_ids"}

MetricSpec = str | type | Metric | Mapping[str, Any]


def build_metric(spec: MetricSpec, forward_func: Callable[..., Any]) -> Metric:
    """A metric from a short name, a class, a dotted path, ``{"class_path": ..., "init_args": {...}}`` or an
    instance. Metrics that need the model (deletion, insertion, ...) receive ``forward_func``."""
    if isinstance(spec, Metric):
        return spec
    init_args: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        if "class_path" not in spec:
            raise ValueError(f"a metric given as a mapping needs a 'class_path' key, got {dict(spec)}")
        init_args = dict(spec.get("init_args") or {})
        spec = spec["class_path"]
    if not isinstance(spec, (str, type)):
        raise TypeError(f"a metric must be a name, a class, a mapping or a Metric, got {describe(spec)}")
    cls = METRICS.resolve(spec)
    if not (isinstance(cls, type) and issubclass(cls, Metric)):
        raise TypeError(f"{spec!r} is not a torchmetrics Metric")
    if "forward_func" in inspect.signature(cls.__init__).parameters and "forward_func" not in init_args:
        init_args["forward_func"] = forward_func
    metric = cls(**init_args)
    required = {
        name
        for name, parameter in inspect.signature(metric.update).parameters.items()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
    unknown = required - _UPDATE_ARGS
    if unknown:
        raise ValueError(
            f"{cls.__name__}.update takes {sorted(unknown)}, which ExplanationMetrics cannot supply; it passes "
            f"only {sorted(_UPDATE_ARGS)} (use the metric directly instead)"
        )
    return metric


class ExplanationMetrics(AttributionCallback):
    """Explain validation (and/or test) batches with one method and score the maps with a collection of the
    library's metrics; log the epoch values as ``<prefix><name>``.

    Each metric's ``update`` receives what it asks for among ``inputs``, ``attributions`` (the (B, H, W) maps),
    ``target`` (also as ``class_ids``) and ``masks`` (the batch's ground-truth masks: needed by the localisation metrics). The metric
    states are reduced across processes by torchmetrics, so under DDP every rank logs the same values, equal
    to a single-process run over the same samples. Explaining needs gradients: create the Trainer with
    ``inference_mode=False``.

    It explains images, (B, C, H, W) tensors. A run it cannot explain (a text model, token batches, an unknown
    layer, batches without the labels or masks the metrics need) is refused with a ``ValueError`` before the first
    training step; what only shows in a validation batch after training started is one warning, and the callback
    then does nothing for the rest of the run (it never ends the training).

    Args:
        metrics: short names (see :data:`lightning_xai.metrics.registry.METRIC_NAMES`), classes, dotted paths, ``{"class_path", "init_args"}``
            mappings or Metric instances; a list, or a mapping from the logged name to one of these.
        method, method_args, attribute_args, layer, target, batch_adapter: the method (default Grad-CAM of the
            label), see :class:`~lightning_xai.callbacks._attribution.AttributionCallback`.
        stages: ``"validate"`` and/or ``"test"``.
        max_batches: explain at most this many batches per epoch (per process); None: all.
        prefix: prepended to the logged names.

    Example:
        >>> from lightning_xai.callbacks import ExplanationMetrics
        >>> callback = ExplanationMetrics(["deletion", "pointing_game"], method="gradcam", max_batches=2)
    """

    def __init__(
        self,
        metrics: Sequence[MetricSpec] | Mapping[str, MetricSpec] = ("deletion", "insertion"),
        method: str | type = "gradcam",
        method_args: Mapping[str, Any] | None = None,
        attribute_args: Mapping[str, Any] | None = None,
        layer: str | int = "auto",
        target: TargetChoice = "label",
        stages: Sequence[str] = ("validate",),
        max_batches: int | None = None,
        prefix: str = "xai/",
        batch_adapter: Callable[[Any], Batch] | None = None,
    ) -> None:
        super().__init__(method, method_args, attribute_args, layer, target, batch_adapter)
        if isinstance(metrics, (str, Metric, type)) or not metrics:
            raise ValueError(
                f"`metrics` must be a non-empty list or mapping of metrics, got {describe(metrics)}"
            )
        if isinstance(stages, str):
            stages = (stages,)
        bad = set(stages) - {"validate", "test"}
        if bad or not stages:
            raise ValueError(f"`stages` must be 'validate' and/or 'test', got {list(stages)}")
        if max_batches is not None and (
            isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
        ):
            raise ValueError(f"`max_batches` must be a positive int or None, got {max_batches!r}")
        if isinstance(metrics, Mapping):
            self._specs = dict(metrics)
        else:
            self._specs = {}
            for spec in metrics:
                name = spec if isinstance(spec, str) else _spec_name(spec)
                self._specs[name.rsplit(".", 1)[-1]] = spec
        for spec in self._specs.values():  # fail early for unknown names
            if isinstance(spec, (str, type)):
                METRICS.resolve(spec)
        self.stages = tuple(stages)
        self.max_batches = max_batches
        self.prefix = prefix
        self.metrics: MetricCollection | None = None
        self._batches = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        forward = LogitsForward(pl_module)
        built = {name: build_metric(spec, forward) for name, spec in self._specs.items()}
        self.metrics = MetricCollection(built, compute_groups=False).to(pl_module.device)
        # what each metric's update takes, read once instead of on every batch
        self._wanted = {name: set(inspect.signature(m.update).parameters) for name, m in built.items()}
        super().setup(trainer, pl_module, stage)  # refuses what cannot be explained, before any step

    def explains_during(self, stage: str) -> bool:
        return stage in self.stages

    def wants_batch(self) -> bool:
        return self.max_batches is None or self._batches < self.max_batches

    def batch_problem(self, batch: Any, evaluation: bool) -> str | None:
        problem = super().batch_problem(batch, evaluation)
        if problem is None and evaluation and self.read_batch(batch).mask is None:
            needing = sorted(name for name, wanted in self._wanted.items() if "masks" in wanted)
            if needing:
                wants = ", ".join(f"metric {name!r} needs ground-truth masks" for name in needing)
                problem = f"{wants}, but the batches have no `mask`"
        return problem

    # --------------------------------------------------------------------------------------------- the loops

    def _start(self, stage: str) -> None:
        if stage in self.stages:
            self.check_grad_mode("validation" if stage == "validate" else "testing")
            self.metrics.reset()
            self._batches = 0

    def _update(self, pl_module: L.LightningModule, batch: Any, stage: str, dataloader_idx: int) -> None:
        if stage not in self.stages or dataloader_idx != 0 or self.skip_reason:
            return
        if self.max_batches is not None and self._batches >= self.max_batches:
            return
        self._batches += 1
        parts = self.read_batch(batch)  # the grad-mode check at epoch start guarantees plain tensors here
        inputs, masks = parts.inputs, parts.mask
        target = self.targets(pl_module, inputs, parts.target)
        maps = self.maps(pl_module, inputs, target)
        for name, metric in self.metrics.items(keep_base=True):
            wanted = self._wanted[name]
            if "masks" in wanted and masks is None:
                raise ValueError(f"metric {name!r} needs ground-truth masks, but the batch has no `mask`")
            given = {
                "inputs": inputs,
                "attributions": maps,
                "target": target,
                # per-class counting only where the metric was asked for it
                "class_ids": target if getattr(metric, "num_classes", None) else None,
                "masks": masks,
            }
            metric.update(**{k: v for k, v in given.items() if k in wanted})

    def _end(self, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in self.stages or self.skip_reason:
            return
        values = {f"{self.prefix}{name}": value for name, value in self.metrics.compute().items()}
        # computed values are already reduced over processes: log them as they are
        pl_module.log_dict({k: v.float() for k, v in values.items() if v.numel() == 1}, sync_dist=False)
        self.last_values = {k: float(v) for k, v in values.items() if v.numel() == 1}
        # rows a metric could not score (an empty mask, a constant map): summed over processes
        skipped = {
            f"{self.prefix}{name}_n_skipped": metric.n_skipped.float()
            for name, metric in self.metrics.items()
            if isinstance(getattr(metric, "n_skipped", None), Tensor)
        }
        if skipped:
            pl_module.log_dict(skipped, sync_dist=True, reduce_fx="sum")
        self.metrics.reset()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._start("validate")

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not trainer.sanity_checking:
            self._update(pl_module, batch, "validate", dataloader_idx)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._end(pl_module, "validate")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(pl_module, batch, "test", dataloader_idx)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(pl_module, "test")


def _spec_name(spec: MetricSpec) -> str:
    if isinstance(spec, Mapping):
        return str(spec.get("class_path", "metric"))
    if isinstance(spec, type):
        return spec.__name__
    return type(spec).__name__
