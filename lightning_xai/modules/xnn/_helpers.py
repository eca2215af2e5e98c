"""Private helpers of :class:`~lightning_xai.modules.xnn.XNN`: pretraining, layer widths and targets."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ...models import list_stages
from .concepts import _final_linear


@torch.no_grad()
def _centre_biases(layer: nn.Linear, inputs: Tensor) -> None:
    """Data-dependent bias initialisation: each unit's pre-activation is centred on its median over ``inputs``,
    so every ReLU unit starts active on about half of the data (none starts dead)."""
    layer.bias.sub_((inputs @ layer.weight.T + layer.bias).median(dim=0).values)


def _epochs(total: int, epochs: int, batch_size: int, device: torch.device) -> Iterator[Tensor]:
    """Index chunks of ``batch_size`` rows of a fresh random permutation per epoch."""
    for _ in range(epochs):
        order = torch.randperm(total, device=device)
        yield from order.split(max(batch_size, 1))


def _layer_width(model: nn.Module, module: nn.Module) -> int | None:
    for attr in ("out_features", "out_channels", "num_features"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    try:
        stages = list_stages(model)
    except ValueError:
        return None
    for stage in stages:
        if stage.module is module:
            return stage.channels
    return None


def _resolve_targets(target_class: object, backbone: nn.Module, num_classes: int | None) -> list[int]:
    if target_class == "all":
        out = getattr(_final_linear_or_none(backbone), "out_features", None) or num_classes
        if out is None:
            raise ValueError(
                "`target_class='all'` needs `num_classes=` when the backbone has no final nn.Linear"
            )
        return list(range(int(out)))
    if isinstance(target_class, int) and not isinstance(target_class, bool):
        targets = [target_class]
    elif (
        isinstance(target_class, (list, tuple))
        and target_class
        and all(isinstance(t, int) and not isinstance(t, bool) for t in target_class)
    ):
        targets = list(target_class)
    else:
        raise ValueError(
            f"`target_class` must be an int, a non-empty list of ints or 'all', got {target_class!r}"
        )
    if min(targets) < 0 or len(set(targets)) != len(targets):
        raise ValueError(
            f"`target_class` must hold distinct non-negative class indices, got {target_class!r}"
        )
    return targets


def _final_linear_or_none(model: nn.Module) -> nn.Module | None:
    try:
        return _final_linear(model)
    except ValueError:
        return None
