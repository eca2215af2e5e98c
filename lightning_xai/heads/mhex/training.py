"""Helpers of the training integrations: the head-loss weights λ and the accuracy of one head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor


def check_lambdas(lambdas: float | Sequence[float], count: int | None = None) -> list[float] | float:
    """Every λ_l must be a positive number (a head without gradient would break DDP); a list needs one per head."""
    values = [lambdas] if isinstance(lambdas, (int, float)) and not isinstance(lambdas, bool) else lambdas
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ValueError(f"`lambdas` must be a positive number or a list of them, got {lambdas!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(
                f"every `lambdas` entry must be > 0 (leave a stage out of `stages` to drop its head), got {lambdas!r}"
            )
    if count is not None and len(values) not in (1, count):
        raise ValueError(f"`lambdas` must be one number or {count} numbers (one per head), got {lambdas!r}")
    return [float(v) for v in values] if len(values) > 1 else float(values[0])


def lambda_list(lambdas: float | Sequence[float], count: int) -> list[float]:
    checked = check_lambdas(lambdas, count)
    return list(checked) if isinstance(checked, list) else [checked] * count


def head_accuracy(logits: Tensor, target: Any) -> Tensor | None:
    """Top-1 accuracy for class-index targets; None for other targets (e.g. multi-label)."""
    if not isinstance(target, Tensor) or target.is_floating_point() or target.ndim != 1:
        return None
    if logits.ndim != 2 or logits.shape[0] != target.shape[0]:
        return None
    return (logits.argmax(1) == target.to(logits.device)).float().mean()
