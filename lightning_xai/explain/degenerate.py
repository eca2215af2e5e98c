"""Explanations that carry no information, found and reported by one rule for every method.

A map that is constant (the all-zero Grad-CAM of a model whose output ignores its input, or of an all-zero
image) ranks no pixel above another, and a model whose score of the target is the same at the input and at the
method's baseline gives a path method nothing to integrate. Such results come back as usual, with one
:class:`UninformativeExplanationWarning` per call that names the images, so that they are never scored or shown
as if they were explanations.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = ["UninformativeExplanationWarning", "constant_rows", "unchanged_rows", "warn_uninformative"]

#: Why a row is uninformative, by the keyword :func:`warn_uninformative` takes.
REASONS = {
    "constant": "the map is constant (it ranks no pixel above another)",
    "unchanged": "the target's score is the same at the input and at the baseline (the model's output did not "
    "change along the method's path)",
    "baseline_sufficient": "the baseline alone already keeps the target's score above the threshold (every "
    "patch set is sufficient)",
}


class UninformativeExplanationWarning(UserWarning):
    """Some explanations of a call carry no information (see :mod:`lightning_xai.explain.degenerate`)."""


def constant_rows(maps: Tensor) -> Tensor:
    """(B,) True where every value of a row of ``maps`` (batch first, any shape) is the same."""
    flat = maps.detach().flatten(1)
    return flat.amin(1) == flat.amax(1)


def unchanged_rows(at_input: Tensor, at_baseline: Tensor) -> Tensor:
    """(B,) True where a score at the input equals the one at the baseline up to float32 rounding."""
    return torch.isclose(at_input.detach().float(), at_baseline.detach().float(), rtol=1e-5, atol=1e-7)


def warn_uninformative(method: str, *, stacklevel: int = 3, **rows: Tensor | None) -> bool:
    """One warning naming the images each reason (``constant=``, ``unchanged=``, ``baseline_sufficient=``:
    (B,) bool tensors) flags; nothing when none is flagged. Returns whether it warned."""
    parts, flagged, batch = [], set(), 0
    for reason, mask in rows.items():
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}; known: {sorted(REASONS)}")
        if mask is None:
            continue
        batch = max(batch, mask.numel())
        images = torch.nonzero(mask.reshape(-1)).flatten().tolist()
        if images:
            flagged.update(images)
            parts.append(f"image(s) {images}: {REASONS[reason]}")
    if not parts:
        return False
    warnings.warn(
        f"{method}: {len(flagged)} of {batch} explanation(s) carry no information; " + "; ".join(parts) + ". "
        "Check that the model's output depends on its input, that the input is not a single value, and the "
        "baseline",
        UninformativeExplanationWarning,
        stacklevel=stacklevel,
    )
    return True
