"""Reading the batches users have: ``(input, target, *rest)`` tuples and dicts with common key names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .._checks import describe

INPUT_KEYS = ("image", "images", "input", "inputs", "pixel_values", "input_ids", "x")
TARGET_KEYS = ("label", "labels", "target", "targets", "y")
MASK_KEYS = ("mask", "masks", "rationale_mask")
INDEX_KEYS = ("index", "idx", "indices")


@dataclass
class Batch:
    """The parts of a batch the library uses; ``extras`` keeps every other dict entry (e.g. ``attention_mask``)."""

    inputs: Tensor
    target: Tensor | None = None
    mask: Tensor | None = None
    index: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _first_key(batch: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in batch), None)


def split_batch(batch: Any, batch_adapter: Callable[[Any], Batch] | None = None) -> Batch:
    """Split a batch into inputs, target, mask and index.

    Dicts are read by key (``image``/``input_ids``/..., ``label``/``target``, ``mask``, ``index``); tuples and
    lists as ``(input, target, *rest)`` where a last integer 1-D element after the target is the index
    (as :class:`~lightning_xai.data.IndexedDataset` appends it); a tensor is the input alone. Anything else
    needs ``batch_adapter``, a callable returning a :class:`Batch`.

    Example:
        >>> import torch
        >>> b = split_batch({"image": torch.zeros(2, 3, 8, 8), "label": torch.tensor([0, 1])})
        >>> b.inputs.shape, b.target.tolist()
        (torch.Size([2, 3, 8, 8]), [0, 1])
    """
    if batch_adapter is not None:
        out = batch_adapter(batch)
        if not isinstance(out, Batch):
            raise TypeError(f"`batch_adapter` must return a lightning_xai.data.Batch, got {describe(out)}")
        return out
    if isinstance(batch, Tensor):
        return Batch(inputs=batch)
    if isinstance(batch, Mapping):
        key = _first_key(batch, INPUT_KEYS)
        if key is None:
            raise ValueError(
                f"cannot find the inputs in a batch with keys {sorted(batch)}; use one of {INPUT_KEYS} "
                "or pass `batch_adapter`"
            )
        used = {key}
        parts: dict[str, Any] = {}
        for name, keys in (("target", TARGET_KEYS), ("mask", MASK_KEYS), ("index", INDEX_KEYS)):
            found = _first_key(batch, keys)
            if found is not None:
                parts[name] = batch[found]
                used.add(found)
        extras = {k: v for k, v in batch.items() if k not in used}
        return Batch(inputs=batch[key], extras=extras, **parts)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        inputs = batch[0]
        target = batch[1] if len(batch) > 1 else None
        rest = list(batch[2:])
        index = None
        if rest and isinstance(rest[-1], Tensor) and rest[-1].ndim == 1 and not rest[-1].is_floating_point():
            index = rest.pop()
        return Batch(inputs=inputs, target=target, index=index, extras={"rest": rest} if rest else {})
    raise TypeError(
        f"cannot read a batch of type {type(batch).__name__}; pass `batch_adapter` (a callable returning "
        "lightning_xai.data.Batch)"
    )
