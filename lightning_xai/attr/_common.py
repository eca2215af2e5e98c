"""Plumbing shared by the Captum-compatible attribution methods: input and output structure, extra forward
arguments, targets, chunked model calls, noise generators and model-state warnings.

Every method formats its arguments with these helpers, so that all of them accept the same things and fail
with the same messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum._utils.common import _format_additional_forward_args, _format_output, _is_tuple
from torch import Tensor

from .._checks import check_nonempty_batch, check_tensor, describe, format_target
from ..models.scoring import Score
from ..models.scoring import clean_scores as _clean_scores


def format_inputs(
    inputs: Tensor | tuple[Tensor, ...], *, max_tensors: int | None = None, ndim: int | None = None
) -> tuple[tuple[Tensor, ...], bool]:
    """Captum's input convention: a tensor or a tuple of tensors, returned as a tuple plus whether the caller
    gave a tuple (so that the output can take the same structure with :func:`format_output`).

    ``max_tensors`` bounds the tuple's length for methods that explain one tensor; ``ndim`` fixes the rank.
    """
    is_tuple = _is_tuple(inputs)
    tensors = inputs if is_tuple else (inputs,)
    if not tensors:
        raise ValueError("`inputs` must be a tensor or a non-empty tuple of tensors, got an empty tuple")
    if max_tensors is not None and len(tensors) > max_tensors:
        raise ValueError(
            f"`inputs` must be a tensor or a tuple of at most {max_tensors} tensor(s) for this method, "
            f"got a tuple of {len(tensors)}"
        )
    for i, tensor in enumerate(tensors):
        name = "inputs" if not is_tuple else f"inputs[{i}]"
        check_tensor(name, tensor, ndim=ndim, floating=True)
        check_nonempty_batch(name, tensor)
        if tensor.shape[0] != tensors[0].shape[0]:
            raise ValueError(
                f"every tensor of `inputs` must have the same batch size {tensors[0].shape[0]}, "
                f"got {describe(tensor)} at position {i}"
            )
    return tuple(tensors), is_tuple


def format_output(is_tuple: bool, outputs: tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    """Give ``outputs`` the structure of the inputs: a tuple for tuple inputs, else the single tensor."""
    return _format_output(is_tuple, tuple(outputs))


def format_additional_forward_args(args: object) -> tuple[Any, ...]:
    """Captum's convention for extra forward arguments: None, one object, or a tuple of them."""
    formatted = _format_additional_forward_args(args)
    return () if formatted is None else tuple(formatted)


def check_baselines_not_target(baselines: object) -> None:
    """Class indices passed where ``baselines`` go: ``attribute(x, labels)`` in the order before Captum's."""
    as_ints = (
        isinstance(baselines, (list, tuple))
        and bool(baselines)
        and all(isinstance(b, int) and not isinstance(b, bool) for b in baselines)
    )
    if as_ints or (isinstance(baselines, Tensor) and not baselines.is_floating_point()):
        raise TypeError(
            "`baselines` got class indices; `attribute` takes Captum's order (inputs, baselines, target, "
            "additional_forward_args): pass them as `target=`"
        )


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded by ``seed``; None takes the seed from the global CPU RNG, so
    ``torch.manual_seed`` still makes a run repeatable."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int or None, got {describe(seed)}")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def clean_and_baseline_scores(
    forward: Callable[..., Any],
    inputs: Tensor,
    baselines: Tensor,
    target: object,
    additional_forward_args: tuple[Any, ...] = (),
    *,
    score: Score = "softmax",
    internal_batch_size: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The (B,) target (``None`` becomes the argmax), its (B,) score at the inputs and at ``baselines`` (the start of a path method's path),
    from the same no-grad pass over the 2B rows (per-row extra arguments are repeated for the baseline rows)."""
    batch = inputs.shape[0]
    formatted = format_target(target, batch, None, inputs.device)
    doubled = tuple(
        torch.cat([arg, arg]) if isinstance(arg, Tensor) and arg.ndim > 0 and arg.shape[0] == batch else arg
        for arg in additional_forward_args
    )
    labels, scores = _clean_scores(
        forward,
        torch.cat([inputs, baselines.to(inputs.dtype).expand_as(inputs)]),
        None if formatted is None else formatted.repeat(2),
        score=score,
        internal_batch_size=internal_batch_size,
        additional_forward_args=doubled,
    )
    labels = labels[:batch]
    target_scores = scores.gather(1, labels.repeat(2)[:, None])[:, 0]
    return labels, target_scores[:batch], target_scores[batch:]
