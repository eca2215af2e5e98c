"""Where the scoring pass of :class:`ExplanationConsistencyReweighting` reads its samples: a loader without
augmentation, the training set with a scoring transform swapped in, or the training set as it is."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ..._checks import describe
from ...data.batch import Batch, split_batch
from ...metrics.functional.background_consistency import ConsistencyScores


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(values: Tensor) -> tuple[Tensor, int]:
    """The 1-D ``values`` of every process, concatenated in rank order (sizes may differ), and where this
    process's rows start; as they are in one process."""
    if not distributed():
        return values, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([values.numel()], device=values.device))
    counts = [int(s) for s in sizes]
    padded = values.new_zeros(max(counts))
    padded[: values.numel()] = values
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]), sum(counts[:rank])


def _find_transform_owner(dataset: Any) -> Any:
    """The innermost dataset (through ``.dataset`` wrappers) that has a ``transform`` attribute."""
    owner, seen = None, set()
    while dataset is not None and id(dataset) not in seen:
        seen.add(id(dataset))
        if "transform" in getattr(dataset, "__dict__", {}):
            owner = dataset
        dataset = vars(dataset).get("dataset") if hasattr(dataset, "__dict__") else None
    return owner


class ScoringData:
    """The scoring pass's samples: ``score_dataloader`` (same samples and order as the training set), else the
    training set, with ``score_transform`` set as its ``transform`` while scoring."""

    def __init__(
        self,
        score_dataloader: DataLoader | None,
        score_transform: Callable[[Any], Any] | None,
        score_batch_size: int | None,
    ) -> None:
        if score_dataloader is not None and not isinstance(score_dataloader, DataLoader):
            raise TypeError(
                f"`score_dataloader` must be a torch DataLoader, got {describe(score_dataloader)}"
            )
        if score_dataloader is not None and score_transform is not None:
            raise ValueError("pass `score_dataloader` or `score_transform`, not both")
        if score_transform is not None and not callable(score_transform):
            raise TypeError(f"`score_transform` must be callable, got {describe(score_transform)}")
        if score_batch_size is not None and (
            isinstance(score_batch_size, bool)
            or not isinstance(score_batch_size, int)
            or score_batch_size < 1
        ):
            raise ValueError(f"`score_batch_size` must be None or an int >= 1, got {score_batch_size!r}")
        self.score_dataloader = score_dataloader
        self.score_transform = score_transform
        self.score_batch_size = score_batch_size
        self._warned_fallback = False

    @staticmethod
    def _train_dataset(trainer: L.Trainer) -> tuple[Dataset, DataLoader]:
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader):
            raise TypeError(
                "ExplanationConsistencyReweighting(refresh='epoch') needs a single training DataLoader, got "
                f"{describe(loader)}; pass `score_dataloader=` or use refresh='batch'"
            )
        return loader.dataset, loader

    def source(self, trainer: L.Trainer) -> tuple[Dataset, Callable[..., Any] | None, int, int]:
        """(dataset, collate_fn, batch size, N) of the scoring pass."""
        if self.score_dataloader is not None:
            dataset = self.score_dataloader.dataset
            n = len(dataset)  # type: ignore[arg-type]
            train_loader = trainer.train_dataloader
            if isinstance(train_loader, DataLoader) and len(train_loader.dataset) != n:  # type: ignore[arg-type]
                raise ValueError(
                    f"`score_dataloader` has {n} samples but the training set has {len(train_loader.dataset)}; it "  # type: ignore[arg-type]
                    "must hold the same samples in the same order (without augmentation)"
                )
            batch_size = self.score_batch_size or self.score_dataloader.batch_size or 32
            return dataset, self.score_dataloader.collate_fn, batch_size, n
        train_set, train_loader = self._train_dataset(trainer)
        n = len(train_set)  # type: ignore[arg-type]
        batch_size = self.score_batch_size or train_loader.batch_size or 32
        if self.score_transform is None and not self._warned_fallback:
            self._warned_fallback = True
            rank_zero_warn(
                "ExplanationConsistencyReweighting scores the training dataset as it is loaded for training: if it "
                "applies random augmentation, the consistency scores include that noise. Pass "
                "`score_dataloader=` (the training set without augmentation) or `score_transform=`",
                category=UserWarning,
            )
        return train_set, train_loader.collate_fn, batch_size, n

    @contextmanager
    def transform(self, dataset: Dataset) -> Iterator[None]:
        if self.score_transform is None:
            yield
            return
        owner = _find_transform_owner(dataset)
        if owner is None:
            raise ValueError(
                "`score_transform` needs a training dataset with a `transform` attribute (also inside wrappers "
                f"that keep it as `.dataset`); {type(dataset).__name__} has none. Pass `score_dataloader=` instead"
            )
        saved = owner.transform
        owner.transform = self.score_transform
        try:
            yield
        finally:
            owner.transform = saved

    def score(
        self,
        trainer: L.Trainer,
        select: Callable[[int], Tensor],
        score: Callable[[Batch], ConsistencyScores],
        batch_adapter: Callable[[Any], Batch] | None,
        device: torch.device,
    ) -> tuple[int, Tensor, Tensor, Tensor]:
        """Score the samples ``select(N)`` picks, shared among the ranks as ``DistributedSampler`` would: N, the
        sum of ``v = 1 − E``, the count of scores and of degenerate maps per sample (all-reduced)."""
        dataset, collate_fn, batch_size, n = self.source(trainer)
        indices = select(n)
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed() else (1, 0)
        # As DistributedSampler(shuffle=False, drop_last=False): pad by repeating, then rank r takes r::world.
        padded = -(-len(indices) // world) * world
        mine = torch.cat([indices, indices[: padded - len(indices)]])[rank::world]
        sum_v = torch.zeros(n, dtype=torch.float64, device=device)
        count = torch.zeros(n, dtype=torch.float64, device=device)
        degenerate = torch.zeros(n, dtype=torch.float64, device=device)
        loader = DataLoader(
            Subset(dataset, mine.tolist()), batch_size=batch_size, shuffle=False, collate_fn=collate_fn
        )
        position = 0
        with self.transform(dataset):
            for batch in loader:
                parts = split_batch(trainer.strategy.batch_to_device(batch), batch_adapter)
                size = parts.inputs.shape[0]
                idx = mine[position : position + size].to(device)
                position += size
                scores = score(parts)
                sum_v.index_add_(0, idx, 1.0 - scores.consistency)
                count.index_add_(0, idx, torch.ones_like(scores.consistency))
                degenerate.index_add_(0, idx, scores.degenerate.to(torch.float64))
        if world > 1:
            for tensor in (sum_v, count, degenerate):
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return n, sum_v, count, degenerate
