"""MHEX (lightning_xai reconstruction) as a callback: deep supervision for a module you do not change."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from .._checks import describe
from ..data.batch import Batch, split_batch
from ..heads.mhex import (
    MHEX_CHECKPOINT_KEY,
    GateCalibration,
    GateMode,
    MHEXHandle,
    MHEXHeads,
    MHEXOptions,
    attach_mhex_from_checkpoint,
    check_lambdas,
    find_mhex,
    head_accuracy,
    inject_mhex,
    lambda_list,
    mhex_checkpoint_entry,
)
from ..losses import LossParts, LossTap
from ..models.layers import find_network

__all__ = ["MultiHeadExplainer"]


class MultiHeadExplainer(Callback):
    """MHEX (lightning_xai reconstruction) for an unmodified LightningModule: gates and deep-supervision heads
    injected into its timm / Hugging Face model, trained through the module's own loss.

    In ``setup`` (before the optimisers are configured, so the new parameters are trained) the heads are injected
    into the module's classifier (``self.model`` or ``model_attr``) with :func:`~lightning_xai.heads.inject_mhex`,
    and the module's loss attribute (``self.criterion`` / ``loss_fn`` / ``loss_func``, or ``loss_attr``) is tapped
    (see :mod:`lightning_xai.losses`). Each training loss then becomes
    ``ℓ(z_main, y) + Σ_l λ_l ℓ(z_l, y)`` with the module's own criterion ``ℓ``. Logs ``train_head_<stage>_loss``,
    ``train_head_<stage>_acc`` and ``val_head_<stage>_acc``. On ``teardown`` the loss attribute is restored;
    the heads stay (in-path gates are part of the trained model), so that
    :class:`~lightning_xai.attr.MHEXAttribution` explains the trained model and a checkpoint loads back.

    Args:
        stages, num_classes, gate_mode, gate_calibration, b0, gate_rank, refine, refine_max_channels,
            detach_heads, special_token_ids: see :func:`~lightning_xai.heads.inject_mhex`.
        lambdas: weight λ_l of each head's loss, one number or one per head, all > 0.
        model_attr: attribute (or dotted path) of the module holding the classifier; when None, the shallowest
            timm / torchvision / Hugging Face submodule, whatever its name (``model``, ``net``, ``backbone`` …).
        loss_attr: attribute holding the loss; when None, ``criterion``, ``loss_fn``, ``loss_func``, else the
            loss functions called inside ``training_step`` (see :mod:`lightning_xai.losses`), else
            the heads' cross-entropy added to the loss ``training_step`` returns.
        batch_adapter: reads the targets of validation batches for the head accuracies (see
            :func:`~lightning_xai.data.split_batch`).
        log_heads: log each head's loss and accuracy.

    Checkpoints record the heads under ``checkpoint["mhex"]`` (the resolved options and stage names, see
    :func:`~lightning_xai.heads.mhex.mhex_checkpoint_entry`). Resuming with ``Trainer.fit(..., ckpt_path=)``
    re-attaches them before the weights are loaded; outside a Trainer, load with
    :func:`~lightning_xai.heads.load_mhex_checkpoint` (``load_mhex_checkpoint(ImageClassifier, path)``), which
    ``lightning-xai explain --checkpoint`` uses too, or attach the heads yourself
    (``MultiHeadExplainer(...).attach(module)``) and then ``module.load_state_dict(ckpt["state_dict"])``.

    Example:
        >>> import lightning as L
        >>> from lightning_xai.data import ShapesDataModule
        >>> from lightning_xai.modules import ImageClassifier
        >>> module = ImageClassifier("resnet18", num_classes=4)
        >>> data = ShapesDataModule(batch_size=4, image_size=32, train_size=8, val_size=4, test_size=4)
        >>> trainer = L.Trainer(max_steps=1, callbacks=[MultiHeadExplainer()], logger=False,
        ...                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...                     limit_val_batches=0)
        >>> trainer.fit(module, data)
        >>> sorted(module.model.mhex_heads.branches)
        ['layer1', 'layer2', 'layer3', 'layer4']
    """

    def __init__(
        self,
        stages: str | list[int | str] = "auto",
        num_classes: int | None = None,
        gate_mode: GateMode = "in_path",
        gate_calibration: GateCalibration = "unit",
        b0: float | None = None,
        gate_rank: int | None = 32,
        refine: bool | Literal["auto"] = "auto",
        refine_max_channels: int = 256,
        detach_heads: bool = False,
        lambdas: float | list[float] = 0.3,
        special_token_ids: list[int] | None = None,
        model_attr: str | None = None,
        loss_attr: str | None = None,
        batch_adapter: Callable[[Any], Batch] | None = None,
        log_heads: bool = True,
    ) -> None:
        super().__init__()
        check_lambdas(lambdas)
        for name, value in (("model_attr", model_attr), ("loss_attr", loss_attr)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"`{name}` must be None or an attribute name, got {value!r}")
        if batch_adapter is not None and not callable(batch_adapter):
            raise TypeError(f"`batch_adapter` must be callable, got {describe(batch_adapter)}")
        #: The injection settings (checked here, applied by :meth:`attach`).
        self.options = MHEXOptions(
            stages=stages,
            num_classes=num_classes,
            gate_mode=gate_mode,
            gate_calibration=gate_calibration,
            b0=b0,
            gate_rank=gate_rank,
            refine=refine,
            refine_max_channels=refine_max_channels,
            detach_heads=detach_heads,
            special_token_ids=special_token_ids,
        )
        self.lambdas = lambdas
        self.model_attr = model_attr
        self.loss_attr = loss_attr
        self.batch_adapter = batch_adapter
        self.log_heads = log_heads
        self.handle: MHEXHandle | None = None
        self._tap: LossTap | None = None
        self._lambdas: list[float] = []
        self._batch_start_id = 0
        self._stats: dict[str, tuple[Tensor, Tensor | None]] = {}
        self._batch_size = 0
        self._batch_target: Any = None
        self._term_calls = 0
        self._first_batch_checked = False
        self._train_batches = 0

    # -- injection -----------------------------------------------------------------------------------------

    @property
    def heads(self) -> MHEXHeads | None:
        return None if self.handle is None else self.handle.heads

    def find_model(self, pl_module: nn.Module) -> nn.Module:
        """The classifier inside ``pl_module`` that gets the heads (see
        :func:`~lightning_xai.models.find_network`)."""
        return find_network(pl_module, self.model_attr, who="MultiHeadExplainer")

    def attach(self, pl_module: nn.Module) -> MHEXHandle:
        """Inject the heads into ``pl_module``'s classifier (once; later calls return the same handle)."""
        model = self.find_model(pl_module)
        if self.handle is not None and not self.handle.removed:
            if find_mhex(model) is self.handle.heads:
                return self.handle
            raise RuntimeError(
                "this MultiHeadExplainer is already attached to another model; use one per model"
            )
        if find_mhex(model) is not None:
            raise ValueError(
                f"{type(model).__name__} already has MHEX heads (from MHEXClassifier, inject_mhex or another "
                "MultiHeadExplainer); use only one of them"
            )
        self.handle = inject_mhex(model, options=self.options)
        self._lambdas = lambda_list(self.lambdas, len(self.handle.stages))
        return self.handle

    def remove(self) -> None:
        """Remove the heads from the model (e.g. side-branch heads after training)."""
        if self.handle is not None:
            self.handle.remove()

    # -- hooks ---------------------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.attach(pl_module)
        if stage == "fit" and self._tap is None:
            tap = LossTap.acquire(pl_module, self, self.loss_attr)
            try:
                tap.add_term(self, self._deep_supervision, fallback=self._fallback_supervision)
            except AttributeError as error:
                tap.release(self)
                raise AttributeError(f"MultiHeadExplainer: {error}") from None
            self._tap = tap
            self._first_batch_checked = False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.on_exception(trainer, pl_module, None)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: Any) -> None:
        # Lightning calls no teardown after an exception: the user's loss as it was
        if self._tap is not None:
            self._tap.release(self)
            self._tap = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        assert self._tap is not None and self.handle is not None
        self._stats = {}
        self._term_calls = 0
        self._batch_start_id = self.handle.heads.forward_id
        try:
            parts = split_batch(batch, self.batch_adapter)
        except (TypeError, ValueError):
            self._batch_target, inputs = None, None
        else:
            self._batch_target, inputs = parts.target, parts.inputs
        self._tap.open_batch(self, target=self._batch_target, inputs=inputs)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        assert self._tap is not None
        self._tap.close_batch(self)
        self._train_batches += 1
        if not self._first_batch_checked and self._term_calls == 0:
            raise RuntimeError(
                self._tap.missed_step_message("MultiHeadExplainer") + "; the heads got no deep supervision"
            )
        self._first_batch_checked = True
        if self.log_heads and self._stats:
            # Every rank computes the same keys, so the epoch values are averaged over ranks (`sync_dist`).
            size = self._batch_size
            for key, (loss, acc) in self._stats.items():
                pl_module.log(
                    f"train_head_{key}_loss",
                    loss,
                    on_step=True,
                    on_epoch=True,
                    batch_size=size,
                    sync_dist=True,
                )
                if acc is not None:
                    pl_module.log(
                        f"train_head_{key}_acc",
                        acc,
                        on_step=False,
                        on_epoch=True,
                        batch_size=size,
                        sync_dist=True,
                    )

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.log_heads or self.handle is None or trainer.sanity_checking:
            return
        heads = self.handle.heads
        try:
            target = split_batch(batch, self.batch_adapter).target
        except (TypeError, ValueError):
            return
        if target is None or heads.batch_size != getattr(target, "shape", (None,))[0]:
            return
        for key, logits in heads.head_logits.items():
            acc = head_accuracy(logits, target)
            if acc is not None:
                pl_module.log(
                    f"val_head_{key}_acc",
                    acc,
                    on_step=False,
                    on_epoch=True,
                    batch_size=int(target.shape[0]),
                    sync_dist=True,
                )

    # -- the loss term ---------------------------------------------------------------------------------------

    def _deep_supervision(
        self, input: Tensor, target: Any, per_sample_loss: Callable[[Tensor, Any], LossParts]
    ) -> Tensor:
        """Σ_l λ_l ℓ_i(z_l, y) per sample, with the module's criterion; once per forward."""
        assert self.handle is not None
        heads = self.handle.heads
        head_logits = heads.latest_head_logits(main_logits=input, since=self._batch_start_id)
        self._term_calls += 1
        if heads.consumed_id == heads.forward_id:
            warnings.warn(
                "MultiHeadExplainer: the criterion was called twice on the same forward; the deep-supervision "
                "terms are added to the first call only",
                UserWarning,
                stacklevel=2,
            )
            return input.new_zeros(input.shape[0])
        losses = self._head_losses(head_logits, input.shape, target, per_sample_loss)
        total: Tensor | None = None
        for lam, parts in zip(self._lambdas, losses.values(), strict=True):
            term = lam * parts.per_sample
            total = term if total is None else total + term
        assert total is not None
        return total

    def _fallback_supervision(self) -> Tensor:
        """Σ_l λ_l CE(z_l, y), for a ``training_step`` whose loss the tap could not reach: added to its loss."""
        assert self.handle is not None and self._tap is not None
        target = self._batch_target
        if target is None:
            raise RuntimeError(
                "MultiHeadExplainer: the training loss could not be tapped and the batch's labels could not be "
                "read, so the heads cannot be supervised; pass `batch_adapter=` returning a Batch with `target`"
            )
        heads = self.handle.heads
        head_logits = heads.latest_head_logits(since=self._batch_start_id)
        self._term_calls += 1
        first = next(iter(head_logits.values()))
        losses = self._head_losses(head_logits, first.shape, target, self._tap.per_sample_loss)
        return sum(lam * parts.reduce() for lam, parts in zip(self._lambdas, losses.values(), strict=True))

    def _head_losses(
        self,
        head_logits: dict[str, Tensor],
        shape: tuple[int, ...],
        target: Any,
        per_sample_loss: Callable[[Tensor, Any], LossParts],
    ) -> dict[str, LossParts]:
        """Each head's losses (recorded for logging), the forward marked as consumed."""
        assert self.handle is not None
        heads = self.handle.heads
        heads.consumed_id = heads.forward_id
        self._batch_size = int(shape[0])
        losses = {}
        for key, logits in head_logits.items():
            if logits.shape != shape:
                raise ValueError(
                    f"MHEX head {key!r} gives logits of shape {tuple(logits.shape)} but the model's logits are "
                    f"{tuple(shape)}; pass the model's number of classes as `num_classes`"
                )
            losses[key] = parts = per_sample_loss(logits, target)
            self._stats[key] = (parts.reduce().detach(), head_accuracy(logits.detach(), target))
        return losses

    # -- checkpoints -----------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        config = dict(self.handle.heads.config) if self.handle is not None else self.options.to_config()
        config["lambdas"] = self.lambdas
        return config

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        entry = mhex_checkpoint_entry(pl_module)
        if entry is not None:
            checkpoint[MHEX_CHECKPOINT_KEY] = entry

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Runs before the state dict is loaded. `setup` has attached the heads already in `fit`; any other
        # way in gets them from the checkpoint's record.
        if self.heads is None or self.handle.removed:
            handle = attach_mhex_from_checkpoint(pl_module, checkpoint)
            if handle is not None:
                self.handle = handle
                self._lambdas = lambda_list(self.lambdas, len(handle.stages))

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config(), "train_batches": self._train_batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = dict(state_dict.get("config", {}))
        current = self.config()
        # Before `attach`, "auto" stages and an unset number of classes are not resolved yet: not a mismatch.
        unresolved = set() if self.handle is not None else {"stages", "num_classes"}
        differ = sorted(
            k for k in set(saved) | set(current) if k not in unresolved and saved.get(k) != current.get(k)
        )
        if differ:
            warnings.warn(
                f"MultiHeadExplainer: the checkpoint was trained with a different configuration ({differ}: "
                f"{[(saved.get(k), current.get(k)) for k in differ]}); the heads' weights may not match",
                UserWarning,
                stacklevel=2,
            )
        self._train_batches = int(state_dict.get("train_batches", self._train_batches))

    def __repr__(self) -> str:
        attached = self.handle is not None and not self.handle.removed
        return f"MultiHeadExplainer(stages={self.options.stages!r}, attached={attached})"
