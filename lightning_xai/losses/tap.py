"""The :class:`LossTap`: one module's loss, shared by every callback that changes it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._checks import describe
from .inline import _SIGNATURES, INLINE_LOSSES, _InlineLossMode, _loss_name, _TappedFunction, ineligible_call
from .per_sample import AuxTerm, LossParts, PerSampleLoss, _MeanPerSample, _per_sample, _with_options

#: Attribute names searched for the module's loss, in order.
LOSS_ATTRS = ("criterion", "loss_fn", "loss_func")

_TAP_ATTR = "_lightning_xai_loss_tap"


class LossTap:
    """One module's loss, shared by every callback that needs to change it.

    Get it with :meth:`acquire` (in a callback's ``setup``) and give it back with :meth:`release` (in
    ``teardown``); the original attribute is restored when the last owner releases it. Owners open and close
    training batches (:meth:`open_batch` / :meth:`close_batch`), publish per-sample weights for the open batch
    (:meth:`set_sample_weights`) and register auxiliary terms (:meth:`add_term`).

    Example:
        >>> import torch, lightning as L
        >>> class Plain(L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.criterion = torch.nn.CrossEntropyLoss()
        >>> module, owner = Plain(), object()
        >>> tap = LossTap.acquire(module, owner)
        >>> tap.open_batch(owner)
        >>> tap.set_sample_weights(owner, torch.tensor([2.0, 0.0]))
        >>> logits, y = torch.randn(2, 3), torch.tensor([0, 1])
        >>> per_sample = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        >>> bool(torch.isclose(module.criterion(logits, y), per_sample[0]))  # (2 ℓ_0 + 0 ℓ_1) / 2
        True
        >>> tap.close_batch(owner)
        >>> tap.release(owner)
    """

    def __init__(
        self, module: nn.Module, attribute: str | None, per_sample: Callable[..., LossParts]
    ) -> None:
        self.module = module
        self.attribute = attribute
        self.per_sample_loss = per_sample
        self.owners: list[Hashable] = []
        self._open: set[int] = set()
        self._weights: dict[int, Tensor] = {}
        self._terms: dict[int, AuxTerm] = {}
        self._fallbacks: dict[int, Callable[[], Tensor]] = {}
        self._hook: RemovableHandle | None = None
        self._original: Any = None
        self._had_instance_attr = False
        #: True when the module keeps no loss attribute and the loss calls inside ``training_step`` are tapped.
        self.inline = False
        #: Calls of the tapped loss during the open training batch (inline: calls on the batch's labels).
        self.step_calls = 0
        self._batch_size: int | None = None
        self._batch_target: Any = None
        self._passed: list[str] = []

    # -- life cycle -------------------------------------------------------------------------------------------

    @classmethod
    def acquire(cls, module: nn.Module, owner: Hashable, loss_attr: str | None = None) -> LossTap:
        """The tap of ``module`` (created and wired on first use), with ``owner`` registered.

        ``loss_attr`` names the loss attribute; otherwise a :class:`SampleWeightedLossMixin` module taps itself,
        and ``criterion``, ``loss_fn``, ``loss_func`` are searched in that order.
        """
        tap = find_loss_tap(module)
        if tap is None:
            tap = cls._create(module, loss_attr)
            object.__setattr__(module, _TAP_ATTR, tap)
        elif loss_attr is not None and tap.attribute != loss_attr:
            raise ValueError(
                f"the loss of {type(module).__name__} is already tapped at `{tap.attribute}` by another callback; "
                f"callbacks sharing a module must use the same `loss_attr` (got {loss_attr!r})"
            )
        if all(o is not owner for o in tap.owners):
            tap.owners.append(owner)
        return tap

    @classmethod
    def _create(cls, module: nn.Module, loss_attr: str | None) -> LossTap:
        if loss_attr is None and isinstance(module, SampleWeightedLossMixin):
            return cls(module, None, _MeanPerSample(module.per_sample_loss))
        names = (loss_attr,) if loss_attr is not None else LOSS_ATTRS
        found = next((n for n in names if getattr(module, n, None) is not None), None)
        if found is None and loss_attr is None:
            return cls._create_inline(module)
        if found is None:
            looked = f"`{loss_attr}`" if loss_attr is not None else ", ".join(f"`{n}`" for n in LOSS_ATTRS)
            raise AttributeError(
                f"cannot reach the training loss of {type(module).__name__}: it has no attribute {looked}. Keep the "
                "loss function on the module (e.g. `self.criterion = nn.CrossEntropyLoss()` in `__init__`, and "
                "`loss = self.criterion(logits, y)` in `training_step`), name its attribute with `loss_attr=`, or "
                "mix lightning_xai.callbacks.SampleWeightedLossMixin into the module and call "
                "`self.sample_weighted_loss(logits, target)`"
            )
        criterion = getattr(module, found)
        tap = cls(module, found, PerSampleLoss(criterion, found))
        tap._original = criterion
        if isinstance(criterion, nn.Module):
            tap._hook = criterion.register_forward_hook(tap._criterion_hook, with_kwargs=True)
        else:
            tap._had_instance_attr = found in vars(module)
            object.__setattr__(module, found, _TappedFunction(tap, criterion))
        return tap

    @classmethod
    def _create_inline(cls, module: nn.Module) -> LossTap:
        step = getattr(module, "training_step", None)
        if not callable(step):
            raise AttributeError(
                f"cannot reach the training loss of {type(module).__name__}: it has no loss attribute "
                f"({', '.join(LOSS_ATTRS)}) and no `training_step`"
            )
        tap = cls(module, None, PerSampleLoss(F.cross_entropy, "cross-entropy"))
        tap.inline = True
        tap._original = step
        tap._had_instance_attr = "training_step" in vars(module)

        @functools.wraps(step)
        def training_step(*args: Any, **kwargs: Any) -> Any:
            return tap._run_training_step(step, args, kwargs)

        object.__setattr__(module, "training_step", training_step)
        rank_zero_info(
            f"lightning_xai: {type(module).__name__} keeps no loss attribute ({', '.join(LOSS_ATTRS)}); the loss "
            "function that `training_step` calls on the batch's labels (F.cross_entropy, nn.CrossEntropyLoss, …) "
            "is tapped during training batches"
        )
        return tap

    def release(self, owner: Hashable) -> None:
        """Unregister ``owner``; the last owner's release restores the module's loss attribute."""
        key = id(owner)
        self.owners = [o for o in self.owners if o is not owner]
        self._open.discard(key)
        self._weights.pop(key, None)
        self._terms.pop(key, None)
        self._fallbacks.pop(key, None)
        if self.owners:
            return
        if self.inline:
            if self._had_instance_attr:
                object.__setattr__(self.module, "training_step", self._original)
            else:
                object.__delattr__(self.module, "training_step")
        elif self._hook is not None:
            self._hook.remove()
            self._hook = None
        elif self.attribute is not None:
            if self._had_instance_attr:
                object.__setattr__(self.module, self.attribute, self._original)
            else:
                object.__delattr__(self.module, self.attribute)
        if find_loss_tap(self.module) is self:
            object.__delattr__(self.module, _TAP_ATTR)

    # -- per-batch state --------------------------------------------------------------------------------------

    def open_batch(self, owner: Hashable, target: Any = None, inputs: Any = None) -> None:
        """Mark a training batch as open for ``owner``: the tap acts until :meth:`close_batch`.

        ``target`` (the batch's labels) and ``inputs`` (for the batch size) tell the inline tap which loss call
        is the training loss; without them any call whose input has the batch size (or any call) qualifies.
        """
        self._check_owner(owner)
        self._open.add(id(owner))
        self._weights.pop(id(owner), None)
        self.step_calls = 0
        self._passed = []
        if isinstance(inputs, Tensor) and inputs.ndim:
            batch_size = int(inputs.shape[0])
        elif isinstance(target, Tensor) and target.ndim:
            batch_size = int(target.shape[0])
        else:
            batch_size = None
        if batch_size is not None:
            self._batch_size = batch_size
        if target is not None:
            self._batch_target = target

    def close_batch(self, owner: Hashable) -> None:
        """Close ``owner``'s training batch and drop the weights it published for it."""
        self._open.discard(id(owner))
        self._weights.pop(id(owner), None)
        if not self._open:
            self._batch_size = self._batch_target = None

    @property
    def active(self) -> bool:
        return bool(self._open)

    def set_sample_weights(self, owner: Hashable, weights: Tensor | None) -> None:
        """Publish (B,) non-negative weights for the open training batch (None withdraws them)."""
        self._check_owner(owner)
        if weights is None:
            self._weights.pop(id(owner), None)
            return
        if not isinstance(weights, Tensor) or weights.ndim != 1 or not weights.is_floating_point():
            raise ValueError(
                f"sample weights must be a 1-D floating-point tensor (B,), got {describe(weights)}"
            )
        if id(owner) not in self._open:
            raise RuntimeError(
                "sample weights can only be published for an open training batch (`open_batch`)"
            )
        self._weights[id(owner)] = weights.detach()

    def add_term(self, owner: Hashable, term: AuxTerm, fallback: Callable[[], Tensor] | None = None) -> None:
        """Register ``term(input, target, per_sample_loss)``, called at each tapped training loss.

        ``fallback() -> scalar`` is added instead to the loss that ``training_step`` returns when an inline
        tap saw no training-loss call in the step.
        """
        self._check_owner(owner)
        for name, fn in (("term", term), ("fallback", fallback)):
            if fn is not None and not callable(fn):
                raise TypeError(f"`{name}` must be callable, got {describe(fn)}")
        if fallback is not None and self.inline and not getattr(self.module, "automatic_optimization", True):
            raise AttributeError(
                f"{type(self.module).__name__} uses manual optimization and keeps no loss attribute, so a loss "
                "term cannot be added to what `training_step` returns. Keep the loss as `self.criterion` (or name "
                "it with `loss_attr=`), or mix in lightning_xai.callbacks.SampleWeightedLossMixin"
            )
        self._terms[id(owner)] = term
        if fallback is not None:
            self._fallbacks[id(owner)] = fallback

    def remove_term(self, owner: Hashable) -> None:
        self._terms.pop(id(owner), None)
        self._fallbacks.pop(id(owner), None)

    def describe(self) -> str:
        """Where the loss is tapped, for messages."""
        if self.inline:
            return "the loss functions called inside `training_step`"
        if self.attribute is None:
            return "`self.sample_weighted_loss`"
        return f"`self.{self.attribute}`"

    def missed_step_message(self, who: str) -> str:
        """Why no training loss was reached in the last step, with what to change."""
        module = type(self.module).__name__
        if not self.inline:
            return (
                f"{who}: the first training batch ran without calling the tapped loss {self.describe()} of {module}, "
                "so the "
                f"training loss was not reached. Compute the training loss with it (e.g. "
                f"`loss = self.{self.attribute or 'sample_weighted_loss'}(logits, y)`)"
            )
        seen = f" (calls seen and left alone: {'; '.join(self._passed)})" if self._passed else ""
        return (
            f"{who}: the first training step of {module} called no loss function that the tap can reach on the "
            f"batch's logits and labels{seen}. Tapped are {', '.join(_loss_name(f) for f in INLINE_LOSSES)} and "
            "the torch.nn loss modules, with reduction 'mean' or 'sum', an input of the batch size and the "
            "batch's labels as target. Keep the loss on the module (`self.criterion = nn.CrossEntropyLoss()`, or "
            "name it with `loss_attr=`), or mix lightning_xai.callbacks.SampleWeightedLossMixin into the module "
            "and call `self.sample_weighted_loss(logits, y)`"
        )

    def _check_owner(self, owner: Hashable) -> None:
        if all(o is not owner for o in self.owners):
            raise RuntimeError("acquire the tap first (`LossTap.acquire(module, owner)`)")

    def wants_call(self) -> bool:
        return self.active and (bool(self._terms) or any(k in self._open for k in self._weights))

    # -- the tapped loss --------------------------------------------------------------------------------------

    def _criterion_hook(self, _module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> Tensor | None:
        if self.active:
            self.step_calls += 1
        if not self.wants_call():
            return None
        args = list(args)
        input = args.pop(0) if args else kwargs.pop("input")
        target = args.pop(0) if args else kwargs.pop("target")
        return self.compute(input, target, *args, **kwargs)

    def compute(
        self, input: Tensor, target: Any, *args: Any, per_sample: LossParts | None = None, **kwargs: Any
    ) -> Tensor:
        """The tapped loss of one call: weights, per-sample and scalar terms, reduced as the criterion does.

        The auxiliary terms get the criterion with this call's extra arguments (class weights, smoothing …).
        """
        if args or kwargs:
            loss_of = _with_options(self.per_sample_loss, args, kwargs)
        else:
            loss_of = self.per_sample_loss
        parts = per_sample if per_sample is not None else loss_of(input, target)
        return self._combine(input, target, parts, loss_of)

    def _combine(
        self, input: Tensor, target: Any, parts: LossParts, loss_of: Callable[[Tensor, Any], LossParts]
    ) -> Tensor:
        values = parts.per_sample
        scalars: list[Tensor] = []
        for term in list(self._terms.values()):
            extra = term(input, target, loss_of)
            if extra.ndim == 0:
                scalars.append(extra)
            elif extra.shape == values.shape:
                values = values + extra
            else:
                raise ValueError(
                    f"an auxiliary loss term returned {describe(extra)}; expected a scalar or one value per sample "
                    f"{tuple(values.shape)}"
                )
        weights = [w for k, w in self._weights.items() if k in self._open]
        for w in weights:
            if w.shape != values.shape:
                raise ValueError(
                    f"published sample weights have shape {tuple(w.shape)} but the batch has {values.shape[0]} "
                    "samples; publish one weight per sample of the current training batch"
                )
            values = values * w.to(device=values.device, dtype=values.dtype)
        loss = values.sum() / parts.denominator.to(values.dtype)
        for scalar in scalars:
            loss = loss + scalar
        return loss

    # -- the inline tap -----------------------------------------------------------------------------------------

    def _run_training_step(self, step: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if not self.active:
            return step(*args, **kwargs)
        self.step_calls, self._passed = 0, []
        with _InlineLossMode(self):
            out = step(*args, **kwargs)
        if self.step_calls == 0 and self._fallbacks:
            out = self._add_fallbacks(out)
        return out

    def _add_fallbacks(self, out: Any) -> Any:
        if out is None:
            return out
        extra = sum(fallback() for fallback in list(self._fallbacks.values()))
        if isinstance(out, Tensor):
            return out + extra
        if isinstance(out, Mapping) and isinstance(out.get("loss"), Tensor):
            return {**out, "loss": out["loss"] + extra}
        raise TypeError(
            f"`training_step` of {type(self.module).__name__} returned {describe(out)}; the auxiliary loss terms "
            "can be added to a loss tensor or to the 'loss' entry of a dict"
        )

    def _inline_call(self, func: Callable[..., Tensor], args: tuple, kwargs: dict) -> Tensor:
        try:
            bound = _SIGNATURES[func].bind(*args, **kwargs)
        except TypeError:
            return func(*args, **kwargs)
        options = dict(bound.arguments)
        input, target = options.pop("input", None), options.pop("target", None)
        reason = ineligible_call(func, input, target, options, self._batch_size, self._batch_target)
        if reason is not None:
            self._passed.append(f"{_loss_name(func)}: {reason}")
            return func(*args, **kwargs)
        self.step_calls += 1
        if self.step_calls > 1:
            raise RuntimeError(
                f"`training_step` of {type(self.module).__name__} called {self.step_calls} loss functions on the "
                f"batch's logits and labels (the latest {_loss_name(func)}); the loss tap cannot tell which one is "
                "the training loss to reweight. Keep that loss on the module (`self.criterion = "
                "nn.CrossEntropyLoss()`, or name its attribute with `loss_attr=`), or mix "
                "lightning_xai.callbacks.SampleWeightedLossMixin into the module and call "
                "`self.sample_weighted_loss(logits, y)`"
            )
        if not self.wants_call():
            return func(*args, **kwargs)
        for legacy in ("size_average", "reduce"):
            options.pop(legacy, None)
        loss_of = _with_options(PerSampleLoss(func, _loss_name(func)), (), options)
        return self._combine(input, target, loss_of(input, target), loss_of)


def find_loss_tap(module: nn.Module) -> LossTap | None:
    """The :class:`LossTap` of ``module``, or None when no callback has tapped its loss."""
    tap = vars(module).get(_TAP_ATTR) if hasattr(module, "__dict__") else None
    return tap if isinstance(tap, LossTap) else None


class SampleWeightedLossMixin:
    """For modules whose loss the tap cannot reach through an attribute: call the tap yourself.

    Override :meth:`per_sample_loss` (cross-entropy by default) and compute the training loss with
    :meth:`sample_weighted_loss`. Without a tapping callback it is the plain mean of the per-sample losses.

    Example:
        >>> import torch, lightning as L
        >>> class Module(SampleWeightedLossMixin, L.LightningModule):
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return self.sample_weighted_loss(x, y)  # here x are already logits
        >>> module = Module()
        >>> logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
        >>> bool(torch.isclose(module.training_step((logits, y), 0), torch.nn.functional.cross_entropy(logits, y)))
        True
    """

    def per_sample_loss(self, logits: Tensor, target: Any) -> Tensor:
        """(B,) losses; cross-entropy by default."""
        return F.cross_entropy(logits, target, reduction="none")

    def sample_weighted_loss(self, logits: Tensor, target: Any, per_sample: Tensor | None = None) -> Tensor:
        """The training loss: the mean of ``per_sample`` (default :meth:`per_sample_loss`), weighted and with the
        auxiliary terms of the callbacks that tap this module during their training batches."""
        values = self.per_sample_loss(logits, target) if per_sample is None else per_sample
        values = _per_sample(values, logits.shape[0], "`per_sample_loss`")
        parts = LossParts(values, torch.tensor(float(values.shape[0]), device=values.device))
        tap = find_loss_tap(self)  # type: ignore[arg-type]
        if tap is not None and tap.active:
            tap.step_calls += 1
        if tap is None or not tap.wants_call():
            return parts.reduce()
        return tap.compute(logits, target, per_sample=parts)
