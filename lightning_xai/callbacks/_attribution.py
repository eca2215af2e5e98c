"""What the callbacks that explain during validation share: the method (built from a name or class with its
arguments, so YAML can configure it), the batch reading, the target choice, the gradient-mode check, and what they
refuse before the user's first training step.

DESIGN: "A callback never ends the user's training: what it cannot handle is refused at setup, before any step."
:class:`AttributionCallback` puts that rule in one place for :class:`SaliencyMapLogger` and
:class:`ExplanationMetrics`:

- ``setup``: the module's network (a Hugging Face model that reads ``input_ids`` or audio is not an image model),
  the constructor arguments of the method and its layer. Nothing runs yet, so a refusal costs nothing.
- the first validation batch the callback can see before training: the first sanity-check batch, otherwise (no
  sanity check, ``num_sanity_val_steps=0``) the first batch of the first validation dataloader, peeked in
  ``on_train_start`` through the loop's own transfer hooks; otherwise (no validation dataloader yet, e.g.
  ``check_val_every_n_epoch > 1``) at least the inputs of training batch 0, in ``on_train_batch_start``, before its
  step. A problem there raises: no step has run.
- later validation batches: a batch that only turns out to be unusable once training has started (labels or masks
  missing only from the validation batches, which the callback could not see before) is not worth the user's
  training: one warning, and the callback does nothing for the rest of the run.

Token explanations are a separate feature; until they exist, text models are refused here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor

from .._checks import check_in_choices, describe
from ..attr.registry import METHOD_NAMES, explain_batch, resolve_method
from ..data.batch import Batch, split_batch
from ..explain import require_grad_mode
from ..models import find_network, logits_of, resolve_layer

TargetChoice = Literal["label", "prediction"]
_STAGE_OF_FN = {"fit": "validate", "validate": "validate", "test": "test"}


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

    Subclasses say in which evaluation loops they explain (:meth:`explains_during`) and may add batch requirements
    (:meth:`batch_problem`); their explaining hooks return early while :attr:`skip_reason` is set.
    """

    #: Why the callback does nothing for the rest of the run (set by a problem found after training started).
    skip_reason: str | None = None
    _training_started = False
    _validation_batch_checked = False

    def explains_during(self, stage: str) -> bool:
        """Whether the callback explains batches of the ``"validate"`` or ``"test"`` loop."""
        return stage == "validate"

    def wants_batch(self) -> bool:
        """Whether the next evaluation batch would be explained (a batch that would not be is not checked)."""
        return True

    # -- what is refused ------------------------------------------------------------------------------------

    def network_problem(self, pl_module: L.LightningModule) -> str | None:
        """Why the module's network cannot be explained, when that can be read without running it."""
        try:
            network = find_network(pl_module)
        except AttributeError:
            return None  # a plain nn.Module: its batches tell
        main_input = getattr(network, "main_input_name", None)
        is_hf = getattr(network, "config", None) is not None and isinstance(main_input, str)
        if is_hf and main_input != "pixel_values":
            return f"its network {type(network).__name__} is a Hugging Face model that reads `{main_input}`, not images"
        return None

    def method_problem(self, pl_module: L.LightningModule) -> str | None:
        """Unknown constructor / ``attribute`` arguments and an unknown layer, which would otherwise only fail
        when the first maps are computed, after a training epoch."""
        cls = resolve_method(self.method)
        init = inspect.signature(cls.__init__)
        try:
            init.bind_partial(None, **self.method_args)
            inspect.signature(cls.attribute).bind_partial(None, None, **self.attribute_args)
        except TypeError as error:
            return f"the arguments of {cls.__name__} do not fit ({error})"
        layer = self.method_args.get("layer", self.layer)
        if "layer" in init.parameters and isinstance(layer, (str, int)):
            try:
                resolve_layer(pl_module, layer)
            except (ValueError, TypeError, AttributeError) as error:
                return f"the layer {layer!r} of {cls.__name__}: {error}"
        return None

    def batch_problem(self, batch: Any, evaluation: bool) -> str | None:
        """Why ``batch`` cannot be explained; ``evaluation=False`` (a training batch) checks the inputs only,
        since labels and masks of training batches say nothing about those of the validation batches."""
        try:
            parts = self.read_batch(batch)
        except (TypeError, ValueError) as error:
            return f"it cannot read the batch ({error})"
        inputs = parts.inputs
        if not isinstance(inputs, Tensor) or inputs.ndim != 4:
            return f"the batch's inputs are {describe(inputs)}"
        if evaluation and self.target == "label" and parts.target is None:
            return (
                "the batches to explain have no labels and `target='label'`; pass `target='prediction'` or "
                "batches with a `label`"
            )
        return None

    def refusal(self, problem: str) -> str:
        name = type(self).__name__
        methods = ", ".join(repr(m) for m in METHOD_NAMES)
        return (
            f"{name} cannot explain this run: {problem}. It explains images given as (B, C, H, W) tensors (the "
            f"batch's image, or what `batch_adapter=` returns) with the attribution methods {methods} or a "
            f"Captum-contract class; token and other non-image inputs are not supported. Remove {name} from the "
            "Trainer's callbacks for this model, or fix the argument or batch named above"
        )

    # -- when -------------------------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.skip_reason = None
        self._training_started = False
        self._validation_batch_checked = False
        loop = _STAGE_OF_FN.get(stage)
        if loop is None or not self.explains_during(loop):
            return
        problem = self.network_problem(pl_module) or self.method_problem(pl_module)
        if problem is not None:
            raise ValueError(self.refusal(problem))

    def check_batch(self, batch: Any, evaluation: bool = True) -> bool:
        """Whether to explain ``batch``: raises before training started, warns once and skips after."""
        if self.skip_reason is not None:
            return False
        problem = self.batch_problem(batch, evaluation)
        if problem is None:
            self._validation_batch_checked = self._validation_batch_checked or evaluation
            return True
        if not self._training_started:
            raise ValueError(self.refusal(problem))
        self.skip_reason = problem
        rank_zero_warn(
            f"{type(self).__name__} skips the rest of this run: {problem}. Training goes on without it; "
            "fix its arguments (or the batches) for the next run",
            category=UserWarning,
        )
        return False

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # every validation batch, sanity check included (the subclasses ignore sanity batches, this check does not)
        self._check_evaluation_batch("validate", batch, dataloader_idx)

    def on_test_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._check_evaluation_batch("test", batch, dataloader_idx)

    def _check_evaluation_batch(self, stage: str, batch: Any, dataloader_idx: int) -> None:
        if dataloader_idx == 0 and self.explains_during(stage) and self.wants_batch():
            self.check_batch(batch)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validation_batch_checked or not self._explains_in_fit(trainer):
            return
        batch = _first_validation_batch(trainer, pl_module)
        if batch is not None:
            self.check_batch(batch)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._training_started:
            return
        if not self._validation_batch_checked and self._explains_in_fit(trainer):
            self.check_batch(batch, evaluation=False)
        self._training_started = True

    def _explains_in_fit(self, trainer: L.Trainer) -> bool:
        return self.explains_during("validate") and trainer.enable_validation

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


def _first_validation_batch(trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
    """The first batch of the first validation dataloader as the validation loop would see it (precision
    conversion and the module's transfer hooks), or None when the loop has no dataloader yet. The global RNG is
    restored, so that a shuffling sampler leaves the user's training as it would be without the callback."""
    loaders = trainer.val_dataloaders
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    elif isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    if loaders is None:
        return None
    with isolate_rng():
        batch = next(iter(loaders), None)
    if batch is None:
        return None
    batch = trainer.precision_plugin.convert_input(batch)
    batch = pl_module._on_before_batch_transfer(batch, dataloader_idx=0)
    return trainer.strategy.batch_to_device(batch, dataloader_idx=0)
