"""Attach the dataset index to every item, for callbacks that keep per-sample state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from lightning_xai._checks import describe
from lightning_xai.data.shapes import _normalize_index

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """Wrap a map-style dataset so that each item carries its index as an int64 scalar tensor.

    A tuple item becomes ``(*item, index)`` (a list becomes a list), a mapping gets an ``"index"``
    key (a ``ValueError`` if it already holds a different one; an equal one is kept), and anything
    else, such as a single tensor, becomes ``(item, index)``. Negative indices are reported as their
    positive equivalents, so per-sample tables keyed by ``index`` see one key per sample. Attributes
    not defined here are looked up on the wrapped dataset.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> ds = IndexedDataset(TensorDataset(torch.zeros(5, 2), torch.arange(5)))
        >>> x, y, index = ds[-1]
        >>> len(ds), int(y), int(index)
        (5, 4, 4)
    """

    def __init__(self, dataset: Dataset) -> None:
        if isinstance(dataset, IterableDataset):
            raise TypeError(
                "`dataset` must be a map-style dataset (with __getitem__ and __len__); an IterableDataset "
                "has no item indices"
            )
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(f"`dataset` must define __getitem__ and __len__, got {describe(dataset)}")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        i = _normalize_index(index, len(self.dataset))
        item = self.dataset[i]
        idx = torch.tensor(i, dtype=torch.int64)
        if isinstance(item, Mapping):
            if "index" in item and not _same_index(item["index"], i):
                raise ValueError(
                    f"item {i} of the wrapped dataset already has an `index` key with a different value "
                    f"({describe(item['index'])}); rename that key or drop the IndexedDataset wrapper"
                )
            return {**item, "index": idx}
        if isinstance(item, tuple):
            return (*item, idx)
        if isinstance(item, list):
            return [*item, idx]
        return (item, idx)

    def __getattr__(self, name: str) -> Any:
        # Guard against recursion while unpickling (in DataLoader workers) before `dataset` exists.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _same_index(value: object, index: int) -> bool:
    if isinstance(value, Tensor):
        return value.numel() == 1 and not value.is_floating_point() and int(value) == index
    return isinstance(value, int) and not isinstance(value, bool) and value == index
