"""The patch grid of Structured Attention Graphs: patch sets as masks, diverse root selection, DNF strings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ...explain import upsample_mask

PatchSet = frozenset[int]
Interpolation = Literal["bilinear", "nearest"]


def patch_masks(
    sets: Sequence[Iterable[int]],
    grid_size: int,
    size: Sequence[int],
    mode: Interpolation = "bilinear",
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The pixel masks ``U(1_S)`` of patch sets, (N, 1, H, W) in [0, 1].

    ``1_S`` is the g×g indicator of ``S`` (patch ``P = row·g + col``); ``U`` is bilinear upsampling with
    ``align_corners=True`` (soft "tent" borders, patch centres on a grid from pixel 0 to pixel H-1) or nearest
    upsampling (H/g blocks when H is divisible by g).

    Example:
        >>> m = patch_masks([{0}, {0, 3}], grid_size=2, size=(4, 4), mode="nearest")
        >>> m.shape, m[1, 0].sum().item()
        (torch.Size([2, 1, 4, 4]), 8.0)
    """
    indicator = torch.zeros(len(sets), grid_size * grid_size, dtype=dtype, device=device)
    for row, patches in enumerate(sets):
        index = list(patches)
        if index:
            indicator[row, index] = 1.0
    indicator = indicator.view(-1, 1, grid_size, grid_size)
    if mode == "nearest":
        return F.interpolate(indicator, size=tuple(size), mode="nearest")
    return upsample_mask(indicator, tuple(size))


def patch_cells(grid_size: int, size: Sequence[int], mode: Interpolation = "bilinear") -> Tensor:
    """(H, W) map of the patch whose upsampled indicator is the largest at each pixel (its *cell*).

    ``"nearest"``: the H/g blocks; ``"bilinear"``: squares of side (H-1)/(g-1) centred on the tent centres,
    half-size at the border. Ties go to the lower patch index.

    Example:
        >>> patch_cells(2, (4, 4), "nearest").tolist()
        [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    """
    maps = patch_masks([{p} for p in range(grid_size * grid_size)], grid_size, size, mode)
    return maps[:, 0].argmax(0)


def select_diverse(sets: Sequence[Iterable[int]], overlap_threshold: int = 1) -> list[int]:
    """Indices of the largest subset of ``sets`` whose pairwise overlaps ``|A ∩ B|`` are at most
    ``overlap_threshold``; among subsets of that size, the lexicographically smallest index sequence.

    An exact maximum-clique search on the compatibility graph (depth first in index order, include before
    exclude, pruned by a greedy-colouring bound), so it returns the same subset as the reference's exhaustive
    search.

    Example:
        >>> select_diverse([{1, 2, 3}, {3, 4}, {1, 2}, {5}], overlap_threshold=0)
        [1, 2, 3]
        >>> select_diverse([{1, 2, 3}, {3, 4}, {1, 2}, {5}], overlap_threshold=1)
        [0, 1, 3]
    """
    frozen = [frozenset(s) for s in sets]
    n = len(frozen)
    compatible = [0] * n
    for i in range(n):
        for j in range(i + 1, n):
            if len(frozen[i] & frozen[j]) <= overlap_threshold:
                compatible[i] |= 1 << j
                compatible[j] |= 1 << i
    best: list[int] = []
    chosen: list[int] = []

    def colour_bound(allowed: int) -> int:
        """Colours of a greedy colouring of the candidates: a clique takes at most one vertex per colour."""
        colours = 0
        while allowed:
            colours += 1
            pending = allowed
            while pending:
                low = pending & -pending
                allowed &= ~low
                pending &= ~low & ~compatible[low.bit_length() - 1]
        return colours

    def search(allowed: int) -> None:
        nonlocal best
        if len(chosen) + allowed.bit_count() <= len(best):
            return
        if allowed and len(chosen) + colour_bound(allowed) <= len(best):
            return
        if allowed == 0:
            best = list(chosen)
            return
        j = (allowed & -allowed).bit_length() - 1
        chosen.append(j)
        search(allowed & compatible[j] & ~((1 << (j + 1)) - 1))
        chosen.pop()
        search(allowed & ~(1 << j))

    search((1 << n) - 1)
    return best


def dnf_string(sets: Sequence[Iterable[int]]) -> str:
    """``P{i} & P{j} & … | …``: one conjunction per set (indices ascending), in the given order.

    Example:
        >>> dnf_string([{44, 18, 35}, {10}])
        'P18 & P35 & P44 | P10'
    """
    return " | ".join(" & ".join(f"P{p}" for p in sorted(s)) for s in sets)


def parse_dnf(dnf: str) -> list[PatchSet]:
    """The patch sets of a DNF string written by :func:`dnf_string` (empty string: no set).

    Example:
        >>> parse_dnf("P18 & P35 | P10") == [frozenset({18, 35}), frozenset({10})]
        True
    """
    if not dnf.strip():
        return []
    return [
        frozenset(int(term.strip()[1:]) for term in conjunction.split("&")) for conjunction in dnf.split("|")
    ]
