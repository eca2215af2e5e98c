"""Structured Attention Graphs: several minimal sufficient explanations per image (``docs/methods/sag.md``).

A classifier often has more than one way to reach a confident prediction. SAG (Shitole et al., NeurIPS 2021,
arXiv 2011.06733) divides the image into a g×g grid of patches and searches, by beam search over patch sets
ordered by a short I-GOS run, for *minimal sufficient explanations*: sets of patches that, shown alone on a
black baseline, keep the target's probability above ``τ·p_full``, and from which no single patch can be
removed. A diverse subset of them is drawn as a graph whose children each remove one patch, so that one can
see how the confidence falls.

The search runs for the whole batch in lock-step. At every beam depth, every minimisation round and every
graph level, the candidate sets of all images are composed and scored together in chunked no-grad forwards;
each image keeps its own beam, roots and a cache ``frozenset -> p`` so that no set is ever scored twice.
"""

from __future__ import annotations

from typing import Any

from ..._deprecation import warn_deprecated
from .method import MAX_SELECTION_CANDIDATES, StructuredAttentionGraph
from .patches import PatchSet, dnf_string, parse_dnf, patch_cells, patch_masks, select_diverse
from .result import SAGResult

__all__ = [
    "MAX_SELECTION_CANDIDATES",
    "PatchSet",
    "SAGResult",
    "StructuredAttentionGraph",
    "dnf_string",
    "parse_dnf",
    "patch_cells",
    "patch_masks",
    "select_diverse",
]


def __getattr__(name: str) -> Any:
    if name == "SAG":  # the result's earlier name, which read like the method's
        warn_deprecated("SAG", "SAGResult")
        return SAGResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
