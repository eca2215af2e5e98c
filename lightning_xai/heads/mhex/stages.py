"""Which stages MHEX taps: the kind of a model's stages and the selection of ``stages=``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

from ..._checks import describe
from ...models import Stage, list_stages
from ...models.layers import _is_hf, _timm_feature_info

StageKind = Literal["grid", "vit", "tokens"]

_AUTO_STAGES = 4


def _stage_kind(model: nn.Module) -> StageKind:
    if _is_hf(model):
        return "tokens"
    if _timm_feature_info(model) and hasattr(model, "num_prefix_tokens") and hasattr(model, "blocks"):
        return "vit"
    return "grid"


def _evenly_spaced(count: int, total: int) -> list[int]:
    if total <= count:
        return list(range(total))
    return [round((i + 1) * total / count) - 1 for i in range(count)]


def _select_stages(model: nn.Module, stages: str | Sequence[int | str], kind: StageKind) -> list[Stage]:
    all_stages = list_stages(model)
    if isinstance(stages, str):
        if stages != "auto":
            stages = [stages]
        elif kind == "grid":
            return all_stages[-_AUTO_STAGES:]
        else:
            return [all_stages[i] for i in _evenly_spaced(_AUTO_STAGES, len(all_stages))]
    if not isinstance(stages, Sequence) or not stages:
        raise ValueError(
            f"`stages` must be 'auto' or a non-empty list of stage indices or names, got {describe(stages)}"
        )
    names = [s.name for s in all_stages]
    chosen: list[int] = []
    for item in stages:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise TypeError(f"`stages` entries must be ints or names, got {describe(item)}")
        if isinstance(item, int):
            if not -len(all_stages) <= item < len(all_stages):
                raise ValueError(
                    f"`stages` index {item} is out of range for {len(all_stages)} stages: {names}"
                )
            index = item % len(all_stages)
        elif item in names:
            index = names.index(item)
        else:
            raise ValueError(f"`stages` entry {item!r} is not a stage of the model; stages: {names}")
        if index in chosen:
            raise ValueError(f"`stages` names stage {names[index]!r} twice")
        chosen.append(index)
    return [all_stages[i] for i in sorted(chosen)]
