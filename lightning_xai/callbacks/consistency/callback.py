"""Explanation-consistency reweighting (ECE, arXiv 2408.04600) as a callback for an unmodified Trainer script.

A sample whose Grad-CAM changes when only its background is adversarially perturbed gets more weight in the
loss: ``v_i = 1 − E(x_i, x̂_i)``, ``w_i = clip(v_i / c, 0.1, 5)`` with ``c`` such that the weights average 1,
``L = (1/B) Σ_i w_i ℓ_i``; a sample whose Grad-CAM is all zero keeps weight 1. The score
reuses the library's building blocks: :func:`~lightning_xai.explain.grad_cam`,
:func:`~lightning_xai.explain.background_pgd` and the functional core of
:class:`~lightning_xai.metrics.ExplanationConsistency`. The weights reach the module's own loss through the loss
tap (:mod:`lightning_xai.losses`). The defaults are the library's (the paper does not give them);
see ``docs/methods/ece.md``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..._checks import check_in_choices, check_int, check_number, describe
from ...data.batch import Batch, split_batch
from ...explain import Normalization, resolve_normalization
from ...losses import LossTap, consistency_weights
from ...metrics.functional.background_consistency import (
    ConsistencyOptions,
    ConsistencyScores,
    score_consistency,
)
from ...metrics.functional.consistency import Similarity
from ...models import find_network, resolve_layer
from .data import ScoringData, distributed, gather_rows
from .indices import TrainingBatchIndices
from .logs import log_weights
from .state import WeightTableState

__all__ = ["ExplanationConsistencyReweighting"]

_WHO = "ExplanationConsistencyReweighting(refresh='epoch')"

Refresh = Literal["epoch", "batch"]

# The callback's own settings (besides the scoring's, in ConsistencyOptions); all of them change the weights.
_SCHEDULE_KEYS = (
    "clip",
    "seed",
    "refresh",
    "refresh_every",
    "refresh_fraction",
    "warmup_epochs",
    "every_n_steps",
)


class ExplanationConsistencyReweighting(WeightTableState, Callback):
    """Explanation-consistency reweighting (ECE, arXiv 2408.04600) for an unmodified LightningModule.

    Each sample's explanation consistency ``E`` (see :func:`score_consistency`: Grad-CAM of the label, the
    background attacked by PGD, cosine similarity of the two maps) gives the weight ``w = clip(v / c, 0.1, 5)``
    with ``v = 1 − E`` and ``c`` such that the weights average 1 (a degenerate, all-zero map says nothing about
    consistency: weight 1, out of the means; see :func:`~lightning_xai.losses.consistency_weights`), and the
    module's own loss becomes ``(1/B) Σ_i w_i ℓ_i`` on training batches, through
    the loss tap: the module keeps its loss as ``self.criterion`` (or ``loss_fn``, ``loss_func``, or
    ``loss_attr=``). Validation and test losses are never weighted.

    Two schedules:

    - ``refresh="epoch"`` (default): weight 1 for ``warmup_epochs`` epochs; then, at the start of every
      ``refresh_every``-th epoch, the training set is scored (all of it the first time, a ``refresh_fraction``
      drawn from a generator seeded by ``(seed, epoch)`` later) into a table keyed by dataset index. A
      training batch's indices are its ``index`` (a key, :class:`~lightning_xai.data.IndexedDataset`), else
      those its loader's sampler yielded (see :mod:`~lightning_xai.callbacks.consistency.indices`), so the
      data stays as it is. In DDP each rank scores its share and the tables are all-reduced, so every rank
      holds the same table.
    - ``refresh="batch"``: the current batch is scored before the user's forward every ``every_n_steps``
      batches after warm-up, normalised by the global batch mean (all-reduced across ranks); other batches use 1.

    The scoring set is ``score_dataloader``'s dataset, or the training dataset with ``score_transform`` set as its
    ``transform`` while scoring, or else the training dataset as is (with a warning: random augmentation adds
    noise to the scores); it is read in index order, ``score_batch_size`` at a time. After each refresh the callback
    logs ``ece/consistency`` (mean E), ``ece/inconsistency`` (mean v), ``ece/weight_p05|p50|p95``,
    ``ece/clipped_fraction``, ``ece/n_degenerate`` and ``ece/n_scored``, and a histogram of the weights to loggers
    that have ``add_histogram`` (TensorBoard). The table is in :meth:`state_dict`, so a resumed run continues
    with it.

    Args:
        refresh: ``"epoch"`` (a weight table) or ``"batch"`` (on-the-fly scores).
        warmup_epochs: epochs trained with weight 1 before the first scoring.
        refresh_every: epochs between refreshes (``"epoch"``).
        refresh_fraction: share of the training set re-scored at each refresh after the first (``"epoch"``).
        every_n_steps: score one training batch in this many (``"batch"``).
        layer: Grad-CAM layer of the explained network: ``"auto"`` (last spatial stage), a name, a timm
            ``feature_info`` index or a module.
        fg_threshold, fg_dilation: foreground ``H ≥ fg_threshold`` of the max-normalised map, dilated by this many
            pixels; the attack acts on the rest.
        eps, step, steps, random_start: the background PGD, in pixel units (``random_start`` draws from a generator
            seeded by ``seed`` and the epoch or batch); None: 5 × 2/255 (epoch), 1 × ``eps`` (batch mode).
        normalization, pixel_range: how model inputs map to pixels (a
            :class:`~lightning_xai.explain.Normalization` or a ``(mean, std)`` pair: ``x·std + mean``); with
            ``None`` the inputs must be pixels within ``pixel_range``, else a ``ValueError`` asks for it.
            ``mean=``/``std=`` are the deprecated spelling of ``normalization``.
        similarity: ``"cosine"`` (default), ``"pearson"`` or ``"ssim"``, as in
            :class:`~lightning_xai.metrics.ExplanationConsistency`.
        prediction_agreement: multiply E by ``1[argmax f(x̂) = argmax f(x)]``.
        clip: bounds of the normalised weights.
        seed: seed of the refresh subsets and of ``random_start``.
        score_dataloader: a loader whose dataset is the training set without augmentation (same length and
            order); only its dataset and ``collate_fn`` are used.
        score_transform: set as the training dataset's ``transform`` attribute while scoring.
        score_batch_size: batch size of the scoring passes (default: ``score_dataloader``'s, else the training loader's).
        model_attr: attribute (or dotted path) of the module holding the network to explain; by default the
            module itself when it defines ``forward``, else its shallowest timm / torchvision / Hugging Face
            submodule, whatever its name.
        loss_attr: attribute holding the loss; when None, ``criterion``, ``loss_fn``, ``loss_func``, else the
            loss functions called inside ``training_step`` (see :mod:`lightning_xai.losses`).
        batch_adapter: reads inputs, targets and indices from batches (see :func:`~lightning_xai.data.split_batch`).
        log_histogram: log the weight histogram where the logger can show one.

    Example:
        >>> import lightning as L
        >>> from lightning_xai.data import ShapesDataModule
        >>> from lightning_xai.modules import ImageClassifier
        >>> module = ImageClassifier("small_resnet", num_classes=4)
        >>> data = ShapesDataModule(batch_size=4, image_size=16, train_size=8, val_size=4, test_size=4)
        >>> ece = ExplanationConsistencyReweighting(warmup_epochs=0, score_dataloader=data.train_dataloader())
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[ece], logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        >>> trainer.fit(module, data)
        >>> ece.weights.shape, ece.n_refreshes
        (torch.Size([8]), 1)
    """

    def __init__(
        self,
        refresh: Refresh = "epoch",
        warmup_epochs: int = 5,
        refresh_every: int = 5,
        refresh_fraction: float = 0.5,
        every_n_steps: int = 1,
        layer: str | int = "auto",
        fg_threshold: float = 0.5,
        fg_dilation: int = 0,
        eps: float = 8 / 255,
        step: float | None = None,
        steps: int | None = None,
        random_start: bool = False,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        pixel_range: tuple[float, float] = (0.0, 1.0),
        similarity: Similarity = "cosine",
        prediction_agreement: bool = False,
        clip: tuple[float, float] = (0.1, 5.0),
        seed: int = 0,
        score_dataloader: DataLoader | None = None,
        score_transform: Callable[[Any], Any] | None = None,
        score_batch_size: int | None = None,
        model_attr: str | None = None,
        loss_attr: str | None = None,
        batch_adapter: Callable[[Any], Batch] | None = None,
        log_histogram: bool = True,
        normalization: Normalization | tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        check_in_choices("refresh", refresh, ("epoch", "batch"))
        self.scoring = ConsistencyOptions(
            layer=layer,
            fg_threshold=fg_threshold,
            fg_dilation=fg_dilation,
            eps=eps,
            step=(2 / 255 if refresh == "epoch" else eps) if step is None else step,
            steps=(5 if refresh == "epoch" else 1) if steps is None else steps,
            random_start=random_start,
            normalization=resolve_normalization(normalization, mean=mean, std=std),
            pixel_range=pixel_range,
            similarity=similarity,
            prediction_agreement=prediction_agreement,
        )
        for name, value, minimum in (
            ("warmup_epochs", warmup_epochs, 0),
            ("refresh_every", refresh_every, 1),
            ("every_n_steps", every_n_steps, 1),
            ("seed", seed, -(2**63)),
        ):
            check_int(name, value, minimum)
        check_number("refresh_fraction", refresh_fraction, strict=True, high=1.0, high_inclusive=True)
        if len(tuple(clip)) != 2 or not 0.0 <= float(clip[0]) <= float(clip[1]):
            raise ValueError(f"`clip` must be (low, high) with 0 <= low <= high, got {clip!r}")
        self._data = ScoringData(score_dataloader, score_transform, score_batch_size)
        for name, value in (("model_attr", model_attr), ("loss_attr", loss_attr)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"`{name}` must be None or an attribute name, got {value!r}")
        if batch_adapter is not None and not callable(batch_adapter):
            raise TypeError(f"`batch_adapter` must be callable, got {describe(batch_adapter)}")
        self.refresh = refresh
        self.warmup_epochs = warmup_epochs
        self.refresh_every = refresh_every
        self.refresh_fraction = float(refresh_fraction)
        self.every_n_steps = every_n_steps
        self.clip = (float(clip[0]), float(clip[1]))
        self.seed = seed
        self.model_attr = model_attr
        self.loss_attr = loss_attr
        self.batch_adapter = batch_adapter
        self.log_histogram = log_histogram

        # The table (epoch mode), on CPU; `_weights_on` caches the weights on the module's device.
        self.v: Tensor | None = None
        self.weights: Tensor | None = None
        self.scored: Tensor | None = None
        #: Samples whose last score was a degenerate map: weight 1, left out of the reweighting.
        self.degenerate: Tensor | None = None
        self.last_refresh_epoch: int | None = None
        self.n_refreshes = 0
        self.batches_seen = 0
        #: The weights published for the current training batch (None: weight 1).
        self.batch_weights: Tensor | None = None
        self._weights_on: Tensor | None = None
        self._tap: LossTap | None = None
        self._indices: TrainingBatchIndices | None = None
        self._first_batch_checked = False
        self._network: nn.Module | None = None

    # -- configuration -------------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """Every setting that changes the weights: the scoring's (:class:`ConsistencyOptions`) and the
        schedule's; a checkpoint made with other values warns at load."""
        schedule = {key: getattr(self, key) for key in _SCHEDULE_KEYS}
        return {**self.scoring.to_config(), **schedule, "clip": list(self.clip)}

    @property
    def next_refresh_epoch(self) -> int:
        """The epoch at whose start the table is scored next (``"epoch"`` mode)."""
        if self.last_refresh_epoch is None:
            return self.warmup_epochs
        return self.last_refresh_epoch + self.refresh_every

    def find_network(self, pl_module: nn.Module) -> nn.Module:
        """The network that is explained: ``model_attr``, the module itself if it defines ``forward``, else the
        shallowest timm / torchvision / Hugging Face submodule (see :func:`~lightning_xai.models.find_network`)."""
        if self.model_attr is None and type(pl_module).forward is not L.LightningModule.forward:
            return pl_module
        return find_network(pl_module, self.model_attr, who="ExplanationConsistencyReweighting")

    # -- hooks ---------------------------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.refresh == "epoch" and self._indices is None:
            self._indices = TrainingBatchIndices.acquire(trainer, self)  # before the fit loop's first iter()
        if stage != "fit" or self._tap is not None:
            return
        self._network = self.find_network(pl_module)
        resolve_layer(self._network, self.scoring.layer)  # an unknown layer fails here, not after the warm-up
        self._tap = LossTap.acquire(pl_module, self, self.loss_attr)
        self._first_batch_checked = False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.on_exception(trainer, pl_module, None)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: Any) -> None:
        # Lightning calls no teardown after an exception: the user's loss, loader and strategy as they were
        if self._indices is not None:
            self._indices.release(self)
            self._indices = None
        if self._tap is not None:
            self._tap.release(self)
            self._tap = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        if self.v is not None and isinstance(loader, DataLoader) and len(loader.dataset) != self.v.numel():  # type: ignore[arg-type]
            warnings.warn(
                f"ExplanationConsistencyReweighting: the restored weight table has {self.v.numel()} entries but the "
                f"training set has {len(loader.dataset)} samples; weights are 1 until the next refresh",  # type: ignore[arg-type]
                UserWarning,
                stacklevel=2,
            )
            self.weights = self._weights_on = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.refresh != "epoch" or trainer.current_epoch < self.next_refresh_epoch:
            return
        self.refresh_table(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        assert self._tap is not None
        parts = split_batch(batch, self.batch_adapter)
        self._tap.open_batch(self, target=parts.target, inputs=parts.inputs)
        if self.refresh == "epoch":
            weights = self._lookup(parts, pl_module, batch_idx)
        else:
            weights = self._score_batch(trainer, pl_module, parts)
        self.batches_seen += 1
        self.batch_weights = weights
        if weights is not None:
            self._tap.set_sample_weights(self, weights)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._tap is None:
            return
        self._tap.close_batch(self)
        if not self._first_batch_checked and self._tap.step_calls == 0:
            raise RuntimeError(
                self._tap.missed_step_message("ExplanationConsistencyReweighting")
                + "; the sample weights would not act"
            )
        self._first_batch_checked = True

    # -- epoch mode ----------------------------------------------------------------------------------------------

    def _lookup(self, parts: Batch, pl_module: L.LightningModule, batch_idx: int) -> Tensor | None:
        index = parts.index
        if index is None:  # every batch, warm-up included: the recorded indices are consumed in order
            assert self._indices is not None
            index = self._indices.for_batch(batch_idx, len(parts.inputs), _WHO, ", or use refresh='batch'")
        if self.weights is None:
            return None
        if self._weights_on is None or self._weights_on.device != pl_module.device:
            self._weights_on = self.weights.to(pl_module.device)
        index = index.to(self._weights_on.device).long().reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self._weights_on.numel()):
            raise ValueError(
                f"a training batch holds dataset indices in [{int(index.min())}, {int(index.max())}] but the "
                f"weight table has {self._weights_on.numel()} entries (the training set's length when it was scored)"
            )
        return self._weights_on[index]

    def refresh_indices(self, n: int, epoch: int) -> Tensor:
        """The sorted dataset indices scored at ``epoch``: all of them at the first refresh, later a
        ``refresh_fraction`` drawn from a generator seeded by ``(seed, epoch)`` (the same on every rank)."""
        if self.n_refreshes == 0 or self.refresh_fraction >= 1.0:
            return torch.arange(n)
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) & ((1 << 63) - 1))
        count = max(1, math.ceil(self.refresh_fraction * n))
        return torch.randperm(n, generator=generator)[:count].sort().values

    def refresh_table(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Score (part of) the training set and recompute every weight; called by all ranks."""
        epoch = trainer.current_epoch
        device = pl_module.device
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch + 1) & ((1 << 63) - 1))
        n, sum_v, count, degenerate = self._data.score(
            trainer,
            lambda n: self.refresh_indices(n, epoch),
            lambda parts: self._score(pl_module, parts, generator),
            self.batch_adapter,
            device,
        )
        if self.v is None or self.v.numel() != n:
            self.v = torch.zeros(n, dtype=torch.float64)
            self.scored, self.degenerate = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
        v, degenerate_table = self.v.to(device), self.degenerate_table(n).to(device)
        seen = count > 0
        v[seen] = sum_v[seen] / count[seen]
        degenerate_table[seen] = degenerate[seen] > 0
        # a degenerate map says nothing about the sample's consistency: weight 1, out of the means
        weights, clipped = consistency_weights(v, self.clip, informative=~degenerate_table)
        if distributed():
            # Identical ops give identical tables, but a broadcast makes them bitwise equal whatever happened.
            dist.broadcast(v, src=0)
            dist.broadcast(weights, src=0)
        assert self.scored is not None
        self.scored |= seen.cpu()
        self.v, self.degenerate = v.cpu(), degenerate_table.cpu()
        self.weights = weights.cpu()
        self._weights_on = weights
        self.last_refresh_epoch = epoch
        self.n_refreshes += 1
        n_seen, mean_v = int(seen.sum()), float(self.v.mean())
        log_weights(
            self, trainer, pl_module, mean_v, self.weights, clipped, float(degenerate.sum()), n_seen, False
        )

    # -- batch mode ----------------------------------------------------------------------------------------------

    def _score_batch(self, trainer: L.Trainer, pl_module: L.LightningModule, parts: Batch) -> Tensor | None:
        if trainer.current_epoch < self.warmup_epochs or self.batches_seen % self.every_n_steps:
            return None
        generator = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.batches_seen) & ((1 << 63) - 1)
        )
        scores = self._score(pl_module, parts, generator)
        # the weights of the global batch (every rank computes the same), then this rank's rows
        v, start = gather_rows(1.0 - scores.consistency.to(torch.float64))
        informative = gather_rows((~scores.degenerate).to(torch.float64))[0] > 0
        weights, clipped = consistency_weights(v, self.clip, informative=informative)
        mean_v = float(v[informative].mean()) if bool(informative.any()) else 0.0
        n_degenerate = float((~informative).sum())
        log_weights(self, trainer, pl_module, mean_v, weights, clipped, n_degenerate, v.numel(), True)
        return weights[start : start + scores.consistency.numel()]

    # -- shared --------------------------------------------------------------------------------------------------

    def _score(
        self, pl_module: L.LightningModule, parts: Batch, generator: torch.Generator
    ) -> ConsistencyScores:
        if parts.target is None:
            raise ValueError(
                "ExplanationConsistencyReweighting needs the labels of each batch (a `label`/`target` key or an "
                "(input, target) tuple), or a `batch_adapter`"
            )
        network = self._network if self._network is not None else self.find_network(pl_module)
        return score_consistency(
            network, parts.inputs, parts.target, options=self.scoring, generator=generator
        )

    def __repr__(self) -> str:
        return (
            f"ExplanationConsistencyReweighting(refresh={self.refresh!r}, warmup_epochs={self.warmup_epochs}, "
            f"n_refreshes={self.n_refreshes})"
        )
