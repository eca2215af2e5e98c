"""Per-sample losses of a criterion, and the denominator of its reduction."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.loss import _Loss

from .._checks import describe

_CLASS_INDEX_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)
_CLASS_INDEX_FUNCTIONS = (F.cross_entropy, F.nll_loss)


@dataclass
class LossParts:
    """Per-sample losses (B,) and the denominator ``D`` of the criterion's reduction: the criterion's value is
    ``per_sample.sum() / denominator``."""

    per_sample: Tensor
    denominator: Tensor

    def reduce(self) -> Tensor:
        return self.per_sample.sum() / self.denominator


#: ``term(input, target, per_sample_loss) -> Tensor``: a (B,) per-sample term or a scalar.
AuxTerm = Callable[[Tensor, Any, Callable[[Tensor, Any], LossParts]], Tensor]


def _class_index_denominator(
    per_element: Tensor, target: Any, weight: Tensor | None, ignore_index: int
) -> Tensor:
    """Denominator of the ``"mean"`` reduction of cross-entropy / NLL: the weight mass of the counted targets
    (their number without class weights); probability targets divide by the number of elements."""
    if not isinstance(target, Tensor) or target.is_floating_point():
        return torch.tensor(float(per_element.numel()), device=per_element.device)
    counted = target != ignore_index
    if weight is None:
        return counted.sum().to(per_element.dtype)
    safe = torch.where(counted, target, torch.zeros_like(target))
    return (weight.to(per_element.device)[safe] * counted).sum().to(per_element.dtype)


def _per_sample(per_element: Tensor, batch: int, what: str) -> Tensor:
    if per_element.ndim == 0 or per_element.shape[0] != batch:
        raise TypeError(
            f"{what} did not return one loss per sample with `reduction='none'` (got {describe(per_element)} for "
            f"a batch of {batch}); the loss tap needs a criterion that honours `reduction`, or a module with "
            "SampleWeightedLossMixin"
        )
    return per_element.reshape(batch, -1).sum(1) if per_element.ndim > 1 else per_element


class PerSampleLoss:
    """Per-sample losses of a criterion: ``PerSampleLoss(nn.CrossEntropyLoss())(logits, y) -> LossParts``.

    Raises a ``TypeError`` at construction for criteria that cannot give per-sample losses (see the module
    notes for what is supported).

    Example:
        >>> import torch
        >>> loss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        >>> logits, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
        >>> parts = PerSampleLoss(loss)(logits, y)
        >>> parts.per_sample.shape, bool(torch.isclose(parts.reduce(), loss(logits, y)))
        (torch.Size([4]), True)
    """

    def __init__(self, criterion: Callable[..., Tensor], name: str = "criterion") -> None:
        self.criterion = criterion
        self.name = name
        if isinstance(criterion, _Loss):
            reduction = getattr(criterion, "reduction", None)
            allowed = _reductions(isinstance(criterion, nn.KLDivLoss))
            if reduction not in allowed:
                raise TypeError(
                    f"the loss `{name}` ({type(criterion).__name__}) has reduction={reduction!r}; the loss tap "
                    f"supports {list(allowed)}"
                )
            self.kind = "module"
        elif isinstance(criterion, nn.Module):
            raise TypeError(
                f"the loss `{name}` is a {type(criterion).__name__}, not a torch.nn loss with a `reduction`; the "
                "loss tap cannot split it into per-sample losses. Use a torch.nn loss (e.g. nn.CrossEntropyLoss), "
                "or mix lightning_xai.callbacks.SampleWeightedLossMixin into your LightningModule and call "
                "`self.sample_weighted_loss(logits, target)` in `training_step`"
            )
        elif callable(criterion) and _accepts_reduction(criterion):
            self.kind = "function"
        else:
            raise TypeError(
                f"the loss `{name}` ({describe(criterion)}) takes no `reduction` argument, so the loss tap cannot "
                "get per-sample losses from it. Use a torch.nn loss module or a function such as "
                "torch.nn.functional.cross_entropy, or mix lightning_xai.callbacks.SampleWeightedLossMixin into "
                "your LightningModule and call `self.sample_weighted_loss(logits, target)`"
            )

    def __call__(self, input: Tensor, target: Any, *args: Any, **kwargs: Any) -> LossParts:
        if self.kind == "module":
            return self._module_parts(input, target, *args, **kwargs)
        return self._function_parts(input, target, *args, **kwargs)

    def _module_parts(self, input: Tensor, target: Any, *args: Any, **kwargs: Any) -> LossParts:
        criterion = self.criterion
        reduction = criterion.reduction
        criterion.reduction = "none"
        try:
            # `forward`, not `__call__`: the tap's own hook on this module must not run again.
            per_element = criterion.forward(input, target, *args, **kwargs)
        finally:
            criterion.reduction = reduction
        if reduction == "sum":
            denominator = torch.tensor(1.0, device=per_element.device)
        elif reduction == "batchmean":
            denominator = torch.tensor(float(input.shape[0]), device=per_element.device)
        elif isinstance(criterion, _CLASS_INDEX_LOSSES):
            denominator = _class_index_denominator(
                per_element, target, getattr(criterion, "weight", None), criterion.ignore_index
            )
        else:
            denominator = torch.tensor(float(per_element.numel()), device=per_element.device)
        return LossParts(_per_sample(per_element, input.shape[0], f"the loss `{self.name}`"), denominator)

    def _function_parts(self, input: Tensor, target: Any, *args: Any, **kwargs: Any) -> LossParts:
        reduction = kwargs.pop("reduction", "mean")
        allowed = _reductions(self.criterion is F.kl_div)
        if reduction not in allowed:
            raise TypeError(
                f"the loss tap supports reduction {' or '.join(map(repr, allowed))}, got {reduction!r}"
            )
        per_element = self.criterion(input, target, *args, reduction="none", **kwargs)
        if reduction == "sum":
            denominator = torch.tensor(1.0, device=per_element.device)
        elif reduction == "batchmean":
            denominator = torch.tensor(float(input.shape[0]), device=per_element.device)
        elif self.criterion in _CLASS_INDEX_FUNCTIONS:
            denominator = _class_index_denominator(
                per_element, target, kwargs.get("weight"), kwargs.get("ignore_index", -100)
            )
        else:
            denominator = torch.tensor(float(per_element.numel()), device=per_element.device)
        return LossParts(_per_sample(per_element, input.shape[0], f"the loss `{self.name}`"), denominator)


def _reductions(kl_divergence: bool) -> tuple[str, ...]:
    """The reductions the tap can split into per-sample losses (KL divergence also has ``"batchmean"``)."""
    return ("mean", "sum", "batchmean") if kl_divergence else ("mean", "sum")


def _accepts_reduction(fn: Callable[..., Any]) -> bool:
    try:
        return "reduction" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class _MeanPerSample:
    """Per-sample losses of a :class:`SampleWeightedLossMixin` module, reduced by the mean over the batch."""

    def __init__(self, fn: Callable[[Tensor, Any], Tensor]) -> None:
        self.fn = fn

    def __call__(self, input: Tensor, target: Any, *args: Any, **kwargs: Any) -> LossParts:
        per_sample = _per_sample(self.fn(input, target), input.shape[0], "`per_sample_loss`")
        return LossParts(per_sample, torch.tensor(float(per_sample.shape[0]), device=per_sample.device))


def _with_options(
    loss: Callable[..., LossParts], args: tuple, options: dict
) -> Callable[[Tensor, Any], LossParts]:
    """``loss`` with a call's extra arguments bound: ``(input, target) -> LossParts``."""

    def loss_of(input: Tensor, target: Any) -> LossParts:
        return loss(input, target, *args, **options)

    return loss_of
