"""Scores of a model on many inputs: chunked no-grad forwards, softmax or logit scores, per-row extra arguments.

One implementation for the attribution methods and the metrics, so both score a batch, a target and their extra
forward arguments the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor

from .._checks import format_target
from .outputs import check_logits, logits_of

__all__ = [
    "Score",
    "chunk_bounds",
    "chunked_scores",
    "clean_scores",
    "scores_from_logits",
    "select_forward_args",
]

Score = Literal["softmax", "logit"]


def chunk_bounds(total: int, chunk: int | None) -> Iterator[tuple[int, int]]:
    """``(begin, stop)`` of consecutive chunks of at most ``chunk`` rows (None: one chunk)."""
    size = total if chunk is None else chunk
    for begin in range(0, total, max(size, 1)):
        yield begin, min(begin + size, total)


def scores_from_logits(logits: Tensor, score: Score) -> Tensor:
    """Softmax probabilities or raw logits, (N, K)."""
    return logits.softmax(-1) if score == "softmax" else logits


def select_forward_args(args: tuple[Any, ...], index: Tensor, batch_size: int) -> tuple[Any, ...]:
    """The extra forward arguments of the model inputs built from samples ``index``: tensors with one row per
    sample (first dimension ``batch_size``) are gathered row by row; anything else is passed as it is."""
    return tuple(
        arg.index_select(0, index.to(arg.device))
        if isinstance(arg, Tensor) and arg.ndim > 0 and arg.shape[0] == batch_size
        else arg
        for arg in args
    )


def chunked_scores(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    target: Tensor | None = None,
    *,
    score: Score = "softmax",
    internal_batch_size: int | None = None,
    additional_forward_args: tuple[Any, ...] = (),
) -> Tensor:
    """Score ``inputs`` (N, ...) under ``no_grad`` in chunks of ``internal_batch_size`` rows (None: one call).

    Returns the score of ``target`` (N,) per row, or the (N, K) scores when ``target`` is None. Extra forward
    arguments with one row per input follow their rows into the chunks.
    """
    batch = inputs.shape[0]
    outputs = []
    with torch.no_grad():
        for begin, stop in chunk_bounds(batch, internal_batch_size):
            index = torch.arange(begin, stop, device=inputs.device)
            extra = select_forward_args(additional_forward_args, index, batch)
            logits = check_logits(logits_of(forward_func(inputs[begin:stop], *extra)), stop - begin)
            scores = scores_from_logits(logits, score)
            if target is not None:
                scores = scores.gather(1, target[begin:stop, None])[:, 0]
            outputs.append(scores)
    return torch.cat(outputs)


def clean_scores(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    target: object,
    *,
    score: Score = "softmax",
    internal_batch_size: int | None = None,
    additional_forward_args: tuple[Any, ...] = (),
) -> tuple[Tensor, Tensor]:
    """One pass over the clean inputs: the (B,) target (an int, a list, a (B,) tensor, or None for the argmax),
    checked against the number of classes the model returned, and the (B, K) scores."""
    formatted = format_target(target, inputs.shape[0], None, inputs.device)
    scores = chunked_scores(
        forward_func,
        inputs,
        score=score,
        internal_batch_size=internal_batch_size,
        additional_forward_args=additional_forward_args,
    )
    if formatted is None:
        formatted = scores.argmax(1)
    elif formatted.numel() and int(formatted.max()) >= scores.shape[1]:
        raise ValueError(
            f"`target` must be below the number of classes ({scores.shape[1]}), got maximum {int(formatted.max())}"
        )
    return formatted, scores
