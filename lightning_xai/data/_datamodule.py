"""The LightningDataModule shared by the generated datasets: three splits built at construction, seeded loaders."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .._checks import check_int


class SyntheticDataModule(L.LightningDataModule):
    """Train, validation and test splits of a generated dataset; subclasses call :meth:`_build_splits` in their
    constructor (then ``save_hyperparameters()``, which reads the constructor's arguments)."""

    datasets: dict[str, Any]

    def _build_splits(
        self,
        dataset_cls: type[Dataset],
        *,
        batch_size: int,
        num_workers: int,
        sizes: dict[str, int],
        **dataset_kwargs: Any,
    ) -> None:
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        for split, n in sizes.items():
            check_int(f"{split}_size", n, 0)
        self._seed = dataset_kwargs.get("seed", 0)
        # Built here so that bad arguments fail at construction, not at the first `setup`.
        self.datasets = {split: dataset_cls(n, split=split, **dataset_kwargs) for split, n in sizes.items()}

    @property
    def num_classes(self) -> int:
        return self.datasets["train"].num_classes

    def setup(self, stage: str | None = None) -> None:
        """Nothing to prepare: items are generated on access."""

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self._seed & ((1 << 63) - 1)) if shuffle else None
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
