"""The dataset indices of each training batch, recovered from the sampler: the user's data stays as it is.

A callback that keys per-sample state by dataset index reads the index from the batch when it has one;
otherwise :class:`TrainingBatchIndices` records the indices that the training loader's batch sampler yields
and hands them out batch by batch, in the order the loader yields its batches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

__all__ = ["TrainingBatchIndices"]

_ATTR = "_lightning_xai_batch_indices"


class _RecordingBatchSampler:
    """Stands in for a DataLoader's batch sampler: yields its batches unchanged and queues each one's indices.

    The main process draws indices ahead of the batches it hands out (``num_workers × prefetch_factor``
    batches with workers), but a DataLoader yields its batches in the order their indices were drawn, so a
    FIFO pairs them up. A new iteration (a new epoch's iterator, or a persistent one reset) starts a new queue.
    """

    def __init__(self, batch_sampler: Iterable[Any], source: TrainingBatchIndices) -> None:
        self.batch_sampler = batch_sampler
        self.source: TrainingBatchIndices | None = source
        self.queue: deque[Tensor | None] = deque()
        #: Batches handed out since the current iteration began.
        self.popped = 0

    def __iter__(self) -> Iterator[Any]:
        self.queue.clear()
        self.popped = 0
        for batch in self.batch_sampler:
            # `source` is None once released: a persistent iterator may still hold this object
            if self.source is not None:
                self.queue.append(_as_indices(batch))
            yield batch

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        # `set_epoch`, `sampler`, `batch_size`, `drop_last`... are the wrapped sampler's; the guard avoids a
        # recursion before `batch_sampler` exists (copy, unpickling).
        if name == "batch_sampler":
            raise AttributeError(name)
        return getattr(self.batch_sampler, name)


def _as_indices(batch: Any) -> Tensor | None:
    try:
        return torch.as_tensor(batch, dtype=torch.int64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        return None  # not integer indices: reported when a batch needs them, not inside the DataLoader


def _unrecoverable(loader: object) -> str | None:
    """Why the dataset indices of ``loader``'s batches cannot be recovered from its sampler, or None."""
    if not isinstance(loader, DataLoader):
        return f"the training data is a {type(loader).__name__}, not one torch DataLoader"
    if isinstance(loader.dataset, IterableDataset):
        return f"its dataset is an IterableDataset ({type(loader.dataset).__name__}) without item indices"
    if loader.batch_sampler is None:
        return "its DataLoader has batch_size=None, so each item is a batch, not a sample"
    if loader.num_workers > 0 and getattr(loader, "in_order", True) is False:
        return "its DataLoader has in_order=False, so batches do not arrive in the order of their indices"
    return None


class TrainingBatchIndices:
    """The dataset indices of each training batch, recorded from the batch sampler of the loader that the fit
    loop iterates (after Lightning has injected its ``DistributedSampler``): each rank gets its own batches'.

    Get it with :meth:`acquire` in a callback's ``setup`` (before the fit loop builds its training iterator)
    and give it back with :meth:`release` in ``teardown`` and ``on_exception``; the last owner's release
    restores the strategy and every recorded loader's batch sampler. :meth:`for_batch` gives the indices of
    the current training batch, and raises a clear error where they cannot be recovered: an
    ``IterableDataset``, ``batch_size=None``, ``in_order=False``, several training loaders, or a stateful loader
    resumed mid-epoch (it skips the batches already trained on inside its own iterator). On a mid-epoch resume,
    Lightning starts a plain DataLoader's iterator afresh and trains the batches left in the epoch from its
    start, so the recorded indices still match.
    """

    def __init__(self, trainer: L.Trainer) -> None:
        self.trainer = trainer
        self.owners: list[Hashable] = []
        self._recorded: list[tuple[DataLoader, _RecordingBatchSampler]] = []
        self._batch: tuple[int, Tensor] | None = None  # the current batch's indices, for several owners
        # `Strategy.process_dataloader` is the one public seam between the sampler injection and the `iter()`
        # of `FitLoop.setup_data` (which already draws `num_workers × prefetch_factor` batches of indices): no
        # callback hook runs in between. The strategy's own method still runs first.
        strategy = trainer.strategy
        self._had_instance_hook = "process_dataloader" in vars(strategy)
        self._process_dataloader = strategy.process_dataloader
        strategy.process_dataloader = self._record  # type: ignore[method-assign]

    @classmethod
    def acquire(cls, trainer: L.Trainer, owner: Hashable) -> TrainingBatchIndices:
        """The recorder of ``trainer`` (installed on first use), with ``owner`` registered."""
        found = vars(trainer.strategy).get(_ATTR)
        if found is None:
            found = cls(trainer)
            setattr(trainer.strategy, _ATTR, found)
        if not any(o is owner for o in found.owners):
            found.owners.append(owner)
        return found

    def release(self, owner: Hashable) -> None:
        """Unregister ``owner``; the last owner's release leaves the strategy and the loaders as they were."""
        self.owners = [o for o in self.owners if o is not owner]
        if self.owners:
            return
        strategy = self.trainer.strategy
        if self._had_instance_hook:
            strategy.process_dataloader = self._process_dataloader  # type: ignore[method-assign]
        else:
            vars(strategy).pop("process_dataloader", None)
        vars(strategy).pop(_ATTR, None)
        for loader, recording in self._recorded:
            recording.source = None
            if loader.batch_sampler is recording:
                object.__setattr__(loader, "batch_sampler", recording.batch_sampler)
        self._recorded = []
        self._batch = None

    def _record(self, dataloader: object) -> object:
        dataloader = self._process_dataloader(dataloader)
        if self.trainer.training and _unrecoverable(dataloader) is None:
            assert isinstance(dataloader, DataLoader)
            if getattr(dataloader.batch_sampler, "source", None) is self:
                return dataloader  # the same loader again (`reload_dataloaders_every_n_epochs`, one process)
            # DataLoader refuses a new `batch_sampler` after construction because an iterator that exists
            # already would keep the old one; none exists yet (the fit loop calls `iter()` after this hook), the
            # batches stay the same, and `release` puts the original back. Writing it past `__setattr__` is the
            # only way in: `_index_sampler` is a read-only property, and the loader (the user's, or Lightning's
            # copy with a DistributedSampler) must stay a DataLoader for Lightning and for the user's code.
            recording = _RecordingBatchSampler(dataloader.batch_sampler, self)  # type: ignore[arg-type]
            object.__setattr__(dataloader, "batch_sampler", recording)
            self._recorded.append((dataloader, recording))
        return dataloader

    def for_batch(self, batch_idx: int, batch_size: int, needed_by: str, otherwise: str = "") -> Tensor:
        """The (B,) int64 dataset indices of the current training batch (``batch_idx`` as the hooks get it).

        ``needed_by`` names the caller in errors and ``otherwise`` adds an alternative of the caller's.
        """
        key = self.trainer.fit_loop.total_batch_idx
        if self._batch is not None and self._batch[0] == key:
            return self._batch[1]
        loader = self.trainer.train_dataloader
        problem = _unrecoverable(loader)
        if problem is None and not isinstance(getattr(loader, "batch_sampler", None), _RecordingBatchSampler):
            problem = "its batch sampler was not recorded (the loader was not prepared by this fit's loop)"
        if problem is not None:
            raise ValueError(
                f"{needed_by} needs the dataset index of every training sample, but the training batch has no "
                f"`index` and {problem}. Return an `index` key from your dataset's items (or wrap a map-style "
                f"dataset in lightning_xai.data.IndexedDataset){otherwise}"
            )
        assert isinstance(loader, DataLoader)
        recording = loader.batch_sampler
        assert isinstance(recording, _RecordingBatchSampler)
        if recording.popped == 0 and batch_idx > 0 and _stateful(loader):
            raise RuntimeError(
                f"{needed_by}: the run resumed in the middle of an epoch with a stateful training loader "
                f"({type(loader).__name__} has state_dict/load_state_dict), which skips the batches already trained "
                "on inside its own iterator, so the indices its sampler yields cannot be paired with the batches. "
                "Return an `index` key from your dataset's items, or resume from an end-of-epoch checkpoint"
            )
        indices = recording.queue.popleft() if recording.queue else None
        recording.popped += 1
        if indices is None or indices.numel() != batch_size:
            got = "no indices" if indices is None else f"{indices.numel()} indices"
            raise RuntimeError(
                f"{needed_by}: the training sampler yielded {got} for a batch of {batch_size} samples, so the "
                "batches cannot be paired with dataset indices (a batch sampler that yields no integer indices, a "
                "collate_fn that adds or drops samples, or an iterator made before fit). Return an `index` key "
                "from your dataset's items instead"
            )
        self._batch = (key, indices)
        return indices


def _stateful(loader: DataLoader) -> bool:
    # Lightning saves and restores the position of a loader with both (e.g. torchdata's StatefulDataLoader)
    return all(callable(getattr(loader, name, None)) for name in ("state_dict", "load_state_dict"))
