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

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from captum.attr import PerturbationAttribution
from torch import Tensor
from tqdm import tqdm

from .._checks import (
    check_flag,
    check_in_choices,
    check_inputs_on_model_device,
    check_int,
    check_internal_batch_size,
    check_number,
    check_tensor,
    describe,
    format_target,
)
from .._deprecation import warn_deprecated
from ..explain import Normalization, compose, preserved_state, upsample_mask
from ..models import LogitsForward, check_logits
from ._base import NormalizedAttribution
from ._common import (
    check_baselines_not_target,
    chunk_bounds,
    clean_scores,
    format_additional_forward_args,
    format_inputs,
    format_output,
    forward_module,
    select_forward_args,
    warn_if_training,
)
from .igos import IGOS, IGOSOptions

__all__ = ["SAG", "StructuredAttentionGraph", "parse_dnf", "patch_cells", "patch_masks", "select_diverse"]

PatchSet = frozenset[int]
Interpolation = Literal["bilinear", "nearest"]
Minimize = Literal["best_first", "index_sweep"]
ChildSelection = Literal["first_by_index", "largest_drop"]

#: Roots beyond this many (in discovery order) are not considered by the diversity selection.
MAX_SELECTION_CANDIDATES = 64

# The I-GOS settings of the reference's heuristic ordering (spec §2.1).
_SET_BY_SEARCH = {"mask_size", "seed", "internal_batch_size"}
_IGOS_ORDERING = IGOSOptions(
    n_iterations=2,
    n_steps=20,
    l1_coeff=1.0,
    tv_coeff=20.0,
    max_step=200.0,
    line_search="plain",
    l1_schedule=False,
    noise_std=0.2,
)


# ----------------------------------------------------------------------------------------------------------
# Patch sets as pixel masks
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# Diversity selection and the DNF string
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# The result
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SAG:
    """The structured attention graph of one image.

    Attributes:
        target: the explained class.
        p_full: its softmax probability on the clean image.
        grid_size: the side g of the patch grid (patch ``P = row·g + col``).
        prob_threshold: the relative threshold τ: a set is sufficient if ``p > τ·p_full``.
        heuristic: (g, g) patch importance that ordered the search (higher = tried first).
        ranking: the patch indices in search order.
        roots: the selected minimal sufficient explanations, in selection order.
        root_probs, root_confidences: their probabilities and relative confidences ``p / p_full``.
        candidate_roots, candidate_probs: every root found, in discovery order, and its probability.
        dnf: ``"P1 & P2 | P7 & P9"``, the selected roots as a disjunction of conjunctions.
        nodes: graph nodes keyed by patch set, with attributes ``patches`` (sorted tuple), ``prob``,
            ``confidence``, ``is_root``, ``level`` (fewest removals from a root) and ``expanded``.
        edges: ``(parent, child, {"removed": patch, "drop": parent confidence - child confidence})``.
        image: (C, H, W) display image (de-normalised when ``normalization`` was given), on CPU.
        patch_interpolation: how patch indicators were upsampled (``"bilinear"`` or ``"nearest"``).
        stats: ``scored_sets`` (model rows of this image's search, each a distinct set), ``heuristic_rows``,
            ``forward_calls`` (model calls of the whole batch), ``depth``, ``beam_sizes``.
    """

    target: int
    p_full: float
    grid_size: int
    prob_threshold: float
    heuristic: Tensor
    ranking: tuple[int, ...]
    roots: list[PatchSet]
    root_probs: list[float]
    root_confidences: list[float]
    candidate_roots: list[PatchSet]
    candidate_probs: list[float]
    dnf: str
    nodes: dict[PatchSet, dict[str, Any]]
    edges: list[tuple[PatchSet, PatchSet, dict[str, Any]]]
    image: Tensor
    patch_interpolation: str = "bilinear"
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def graph(self) -> Any:
        """Deprecated: :meth:`to_networkx` (a new graph on each access)."""
        warn_deprecated("SAG.graph", "SAG.to_networkx()")
        return self.to_networkx()

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph``: node key = frozenset of patches, the attributes of :attr:`nodes` and
        :attr:`edges`. networkx is imported here only."""
        try:
            import networkx as nx
        except ImportError as error:  # pragma: no cover - networkx is a dependency of the package
            raise ImportError("`SAG.to_networkx()` needs networkx: `pip install networkx`") from error
        graph = nx.DiGraph(dnf=self.dnf, target=self.target, p_full=self.p_full)
        for key, attributes in self.nodes.items():
            graph.add_node(key, **attributes)
        for parent, child, attributes in self.edges:
            graph.add_edge(parent, child, **attributes)
        return graph

    def patch_mask(self, patches: Iterable[int]) -> Tensor:
        """``U(1_S)`` at the image's size, (H, W), with the interpolation used for scoring."""
        size = self.image.shape[-2:]
        return patch_masks([set(patches)], self.grid_size, size, self.patch_interpolation)[0, 0]

    # Drawing lives in lightning_xai.viz, above this module; these shims keep the earlier methods working.
    def render(self, **style: Any) -> Any:
        """Deprecated: :func:`lightning_xai.viz.render_sag`."""
        return self._render_deprecated("SAG.render()", style)

    def plot(self, **style: Any) -> Any:
        """Deprecated: :func:`lightning_xai.viz.render_sag`."""
        return self._render_deprecated("SAG.plot()", style)

    def _render_deprecated(self, old: str, style: dict[str, Any]) -> Any:
        warn_deprecated(old, "lightning_xai.viz.render_sag(sag)", stacklevel=4)
        from ..viz.sag import render_sag

        return render_sag(self, **style)

    def save_png(self, path: str | Path, dpi: int = 150, **style: Any) -> Path:
        """Deprecated: :func:`lightning_xai.viz.save_sag_png`."""
        warn_deprecated("SAG.save_png()", "lightning_xai.viz.save_sag_png(sag, path)")
        from ..viz.sag import save_sag_png

        return save_sag_png(self, path, dpi=dpi, **style)

    def to_dot(self, image_dir: str | Path | None = None) -> str:
        """Deprecated: :func:`lightning_xai.viz.sag_to_dot`."""
        warn_deprecated("SAG.to_dot()", "lightning_xai.viz.sag_to_dot(sag)")
        from ..viz.sag import sag_to_dot

        return sag_to_dot(self, image_dir=image_dir)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dictionary of everything but the image."""

        def key(s: PatchSet) -> list[int]:
            return sorted(s)

        return {
            "target": self.target,
            "p_full": self.p_full,
            "grid_size": self.grid_size,
            "prob_threshold": self.prob_threshold,
            "heuristic": self.heuristic.tolist(),
            "ranking": list(self.ranking),
            "roots": [key(r) for r in self.roots],
            "root_probs": list(self.root_probs),
            "root_confidences": list(self.root_confidences),
            "candidate_roots": [key(r) for r in self.candidate_roots],
            "candidate_probs": list(self.candidate_probs),
            "dnf": self.dnf,
            "patch_interpolation": self.patch_interpolation,
            "nodes": [
                {"patches": key(k), **{a: v for a, v in n.items() if a != "patches"}}
                for k, n in self.nodes.items()
            ],
            "edges": [{"parent": key(p), "child": key(c), **a} for p, c, a in self.edges],
            "stats": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.stats.items()},
        }


# ----------------------------------------------------------------------------------------------------------
# Batched scoring with per-image caches
# ----------------------------------------------------------------------------------------------------------


class _CountingForward:
    """Counts the model rows that pass through; keeps the model reachable as ``forward_func``."""

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        self.forward_func = forward_func
        self.rows = 0

    def __call__(self, inputs: Tensor, *args: Any, **kwargs: Any) -> Any:
        self.rows += int(inputs.shape[0])
        return self.forward_func(inputs, *args, **kwargs)


class _Scorer:
    """``p(S)`` of patch sets for the images of one batch; every (image, set) is scored at most once."""

    def __init__(
        self,
        forward: LogitsForward,
        inputs: Tensor,
        baselines: Tensor,
        target: Tensor,
        extra: tuple[Any, ...],
        grid_size: int,
        mode: Interpolation,
        chunk: int | None,
    ) -> None:
        self.forward = forward
        self.inputs = inputs
        self.baselines = baselines
        self.target = target
        self.extra = extra
        self.grid_size = grid_size
        self.mode = mode
        self.chunk = chunk
        self.caches: list[dict[PatchSet, float]] = [{} for _ in range(inputs.shape[0])]
        self.calls = 0

    def score(self, requests: Iterable[tuple[int, PatchSet]]) -> None:
        todo: list[tuple[int, PatchSet]] = []
        pending: set[tuple[int, PatchSet]] = set()
        for image, patches in requests:
            if patches not in self.caches[image] and (image, patches) not in pending:
                pending.add((image, patches))
                todo.append((image, patches))
        batch = self.inputs.shape[0]
        size = self.inputs.shape[-2:]
        for begin, stop in chunk_bounds(len(todo), self.chunk):
            part = todo[begin:stop]
            index = torch.tensor([image for image, _ in part], device=self.inputs.device)
            masks = patch_masks(
                [patches for _, patches in part],
                self.grid_size,
                size,
                self.mode,
                dtype=self.inputs.dtype,
                device=self.inputs.device,
            )
            composed = compose(self.inputs[index], self.baselines[index], masks)
            extra = select_forward_args(self.extra, index, batch)
            logits = check_logits(self.forward(composed, *extra), len(part))
            probs = logits.softmax(-1).gather(1, self.target[index][:, None])[:, 0].tolist()
            self.calls += 1
            for (image, patches), p in zip(part, probs, strict=True):
                self.caches[image][patches] = p

    def __call__(self, image: int, patches: PatchSet) -> float:
        return self.caches[image][patches]


@dataclass
class _Search:
    """The beam search state of one image."""

    image: int
    threshold: float
    ranking: tuple[int, ...]
    beam: list[PatchSet] = field(default_factory=lambda: [frozenset()])
    roots: list[PatchSet] = field(default_factory=list)
    root_keys: set[PatchSet] = field(default_factory=set)
    beam_sizes: list[int] = field(default_factory=list)
    depth: int = 0
    done: bool = False


@dataclass
class _Trim:
    """One sufficient set being minimised."""

    search: _Search
    patches: PatchSet
    order: list[int] = field(default_factory=list)
    position: int = 0
    removed: bool = False


# ----------------------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------------------


class StructuredAttentionGraph(NormalizedAttribution, PerturbationAttribution):
    r"""Structured Attention Graphs (Shitole et al., NeurIPS 2021, arXiv 2011.06733).

    Searches each image for several *minimal sufficient explanations* (MSEs): sets ``S`` of g×g grid patches
    such that the image showing only ``S`` (the black baseline elsewhere, ``I_S = b + (x - b)·U(1_S)``) keeps
    the target's softmax probability above ``τ·p_full``, while removing any one patch of ``S`` does not.
    Patches are ordered by a short I-GOS run; a beam search adds one patch per depth to each of ``beam_width``
    states, trying the ``num_successors`` highest-ranked patches not yet in the state; every sufficient
    successor is trimmed to a minimal one and kept as a root. A diverse subset of the roots (pairwise overlap at
    most ``overlap_threshold``) is selected and expanded into a graph whose children remove one patch.

    :meth:`explain` returns one :class:`SAG` per image; :meth:`attribute` returns a Captum-shaped map: the mean
    of the selected roots' pixel masks ``U(1_R)``, i.e. for each pixel the fraction of the selected MSEs that
    show it (all zeros, with a warning, where no root was found).

    Args:
        forward_func: the model, or any callable returning logits (or a ``ModelOutput``).
        normalization: the model's input normalisation (a :class:`~lightning_xai.explain.Normalization` or a
            ``(mean, std)`` pair per channel); it makes ``baselines="black"`` black in pixel space and
            de-normalises the display image. ``input_normalization=`` is its deprecated name.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
        ...                             torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
        >>> sag = StructuredAttentionGraph(model)
        >>> x = torch.rand(2, 3, 16, 16)
        >>> results = sag.explain(x, grid_size=4, heuristic=torch.rand(2, 4, 4), prob_threshold=0.8)
        >>> len(results), results[0].grid_size
        (2, 4)
        >>> sag.attribute(x, grid_size=4, heuristic=torch.rand(2, 4, 4), prob_threshold=0.8).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        normalization: Normalization | tuple[Sequence[float], Sequence[float]] | None = None,
        *,
        input_normalization: object = None,
    ) -> None:
        super().__init__(forward_func, normalization, input_normalization=input_normalization)
        self._counter = _CountingForward(forward_func)
        # I-GOS gives the heuristic ordering and resolves the baseline.
        self._igos = IGOS(self._counter, self.normalization)

    # -- public entry points ------------------------------------------------------------------------------

    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: str | float | Tensor | tuple = "black",
        target: int | list[int] | Tensor | None = None,
        additional_forward_args: Any = None,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, ...]:
        """The mean of ``U(1_R)`` over the selected roots of each image, in [0, 1], of the inputs' shape.

        Takes every argument of :meth:`explain`. An image without any root gets all zeros and a warning.
        """
        (x,), is_tuple = format_inputs(inputs, max_tensors=1, ndim=4)
        check_baselines_not_target(baselines)
        results = self.explain(x, target, baselines, additional_forward_args, **kwargs)
        maps = torch.zeros(x.shape[0], 1, *x.shape[-2:], dtype=x.dtype, device=x.device)
        empty = []
        for i, result in enumerate(results):
            if not result.roots:
                empty.append(i)
                continue
            masks = patch_masks(
                result.roots,
                result.grid_size,
                x.shape[-2:],
                result.patch_interpolation,
                dtype=x.dtype,
                device=x.device,
            )
            maps[i] = masks.mean(0)
        if empty:
            warnings.warn(
                f"StructuredAttentionGraph: no sufficient patch set was found for image(s) {empty}; their "
                "attributions are all zeros (lower `prob_threshold` or raise `max_root_size`)",
                UserWarning,
                stacklevel=2,
            )
        return format_output(is_tuple, (maps.clamp_(0, 1).expand_as(x).contiguous(),))

    def explain(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: int | list[int] | Tensor | None = None,
        baselines: str | float | Tensor | tuple = "black",
        additional_forward_args: Any = None,
        grid_size: int = 7,
        prob_threshold: float = 0.9,
        beam_width: int = 3,
        num_successors: int = 15,
        max_roots: int = 10,
        max_root_size: int | None = None,
        overlap_threshold: int = 1,
        num_roots_shown: int = 3,
        node_threshold: float = 0.4,
        max_children: int = 3,
        child_selection: ChildSelection = "first_by_index",
        minimize: Minimize = "best_first",
        patch_interpolation: Interpolation = "bilinear",
        heuristic: str | Tensor | Callable[[Tensor, Tensor], Tensor] = "igos",
        heuristic_kwargs: dict[str, Any] | None = None,
        seed: int | None = None,
        internal_batch_size: int | None = None,
        show_progress: bool = False,
    ) -> list[SAG]:
        r"""Search every image of the batch and return one :class:`SAG` per image.

        Args:
            inputs: (B, C, H, W) model inputs, or a 1-tuple of them.
            target: class per image (int, list or (B,) tensor); None explains the top-1 class.
            baselines: what a removed patch shows: ``"black"`` (pixel value 0, i.e. ``-mean/std`` with
                ``normalization``; the reference's choice), ``"blur"``, ``"zeros"``, ``"mean"``, a number
                or a tensor broadcastable to the inputs.
            additional_forward_args: extra forward arguments; tensors with one row per image follow that
                image's candidate rows.
            grid_size: side g of the patch grid (g² patches, index ``row·g + col``).
            prob_threshold: τ; a set is sufficient if ``p(S) > τ·p_full``.
            beam_width: states kept per depth.
            num_successors: q, the successors of a state: it plus one of the first q ranked patches not in it.
            max_roots: stop after the depth at which more than this many distinct roots exist.
            max_root_size: the deepest depth searched (largest root); None is g².
            overlap_threshold: k, the largest overlap ``|R_i ∩ R_j|`` between two selected roots.
            num_roots_shown: the most roots selected (and drawn).
            node_threshold: a graph node with more than one patch is expanded if its relative confidence
                ``p / p_full`` exceeds this.
            max_children: the most children of a node.
            child_selection: ``"first_by_index"`` (remove each of the first ``max_children`` patches of the
                node in index order; the reference) or ``"largest_drop"`` (score all removals, keep the
                ``max_children`` with the largest confidence drop).
            minimize: ``"best_first"`` (each round removes the patch whose removal keeps the highest ``p``,
                while sufficient; one batch per round) or ``"index_sweep"`` (the reference: sweep the patches
                in index order, dropping any that keep the set sufficient, until a sweep removes nothing).
            patch_interpolation: ``"bilinear"`` (``align_corners=True``, the reference) or ``"nearest"``.
            heuristic: ``"igos"`` (I-GOS on a g×g mask with the search baseline, the reference's settings:
                2 iterations, 20 path steps, λ = (1, 20), first step 200, plain line search, noise 0.2), a
                (B, g, g) / (g, g) importance tensor (higher = more important), or a callable
                ``f(inputs, target) -> (B, [1,] h, w)`` (e.g. Grad-CAM) whose output is area-resized to g×g.
                With a tensor or a callable that needs no gradients, the search runs without gradients.
            heuristic_kwargs: overrides of the I-GOS arguments above (``"igos"`` only).
            seed: seed of the I-GOS noise.
            internal_batch_size: model inputs per forward call (None: one call per step).
            show_progress: a tqdm bar over the beam depths.
        """
        (x,), _ = format_inputs(inputs, max_tensors=1, ndim=4)
        batch = x.shape[0]
        height, width = x.shape[-2:]
        grid_size = check_int("grid_size", grid_size, 2)
        if grid_size > min(height, width):
            raise ValueError(
                f"`grid_size` must be at most the image side {min(height, width)}, got {grid_size}"
            )
        n_patches = grid_size * grid_size
        tau = check_number("prob_threshold", prob_threshold, strict=True)
        beam_width = check_int("beam_width", beam_width, 1)
        num_successors = check_int("num_successors", num_successors, 1)
        max_roots = check_int("max_roots", max_roots, 1)
        depth_limit = n_patches if max_root_size is None else check_int("max_root_size", max_root_size, 1)
        depth_limit = min(depth_limit, n_patches)
        overlap_threshold = check_int("overlap_threshold", overlap_threshold, 0)
        num_roots_shown = check_int("num_roots_shown", num_roots_shown, 1)
        node_threshold = check_number("node_threshold", node_threshold)
        max_children = check_int("max_children", max_children, 1)
        check_in_choices("child_selection", child_selection, ("first_by_index", "largest_drop"))
        check_in_choices("minimize", minimize, ("best_first", "index_sweep"))
        check_in_choices("patch_interpolation", patch_interpolation, ("bilinear", "nearest"))
        check_internal_batch_size(internal_batch_size)
        check_flag("show_progress", show_progress)
        if heuristic_kwargs is not None and not isinstance(heuristic_kwargs, dict):
            raise TypeError(f"`heuristic_kwargs` must be a dict or None, got {describe(heuristic_kwargs)}")
        if set(heuristic_kwargs or ()) & _SET_BY_SEARCH:
            raise ValueError(
                f"`heuristic_kwargs` cannot set {sorted(set(heuristic_kwargs) & _SET_BY_SEARCH)}: the search sets "
                "them (`mask_size` from `grid_size`, and `seed`, `internal_batch_size`)"
            )
        if heuristic_kwargs:
            _IGOS_ORDERING.replace(**heuristic_kwargs)  # names and values checked before any model call
        precomputed = self._check_heuristic(heuristic, batch, grid_size, x)
        format_target(target, batch, None, x.device)
        extra = format_additional_forward_args(additional_forward_args)
        module = forward_module(self.forward_func)
        check_inputs_on_model_device("inputs", x, module)
        warn_if_training(module, type(self).__name__)
        baseline = self._igos._baselines(x, baselines).detach()
        x = x.detach()

        with preserved_state(module):
            forward = LogitsForward(self._counter)
            with torch.no_grad():
                labels, p_full = clean_scores(
                    forward, x, target, extra, internal_batch_size=internal_batch_size
                )
            self._counter.rows = 0
            importance = self._importance(
                heuristic,
                precomputed,
                x,
                labels,
                baseline,
                extra,
                grid_size,
                heuristic_kwargs or {},
                seed,
                internal_batch_size,
            )
            heuristic_rows = self._counter.rows
            scorer = _Scorer(
                forward, x, baseline, labels, extra, grid_size, patch_interpolation, internal_batch_size
            )
            p_full_list = p_full.tolist()
            rankings = torch.sort(importance.flatten(1), dim=1, descending=True, stable=True).indices.tolist()
            searches = [
                _Search(image=i, threshold=tau * p_full_list[i], ranking=tuple(rankings[i]))
                for i in range(batch)
            ]
            with torch.no_grad():
                self._beam_search(
                    scorer,
                    searches,
                    depth_limit,
                    beam_width,
                    num_successors,
                    max_roots,
                    minimize,
                    show_progress,
                )
                selected = [
                    [
                        s.roots[k]
                        for k in select_diverse(s.roots[:MAX_SELECTION_CANDIDATES], overlap_threshold)
                    ][:num_roots_shown]
                    for s in searches
                ]
                graphs = self._build_graphs(
                    scorer, searches, selected, p_full_list, node_threshold, max_children, child_selection
                )

        display = x.detach().cpu()
        if self.normalization is not None:
            display = self.normalization.denormalize(display)
        results = []
        for s in searches:
            i = s.image
            roots = selected[i]
            probs = [scorer(i, r) for r in roots]
            nodes, edges = graphs[i]
            results.append(
                SAG(
                    target=int(labels[i]),
                    p_full=p_full_list[i],
                    grid_size=grid_size,
                    prob_threshold=tau,
                    heuristic=importance[i].detach().cpu(),
                    ranking=s.ranking,
                    roots=roots,
                    root_probs=probs,
                    root_confidences=[p / p_full_list[i] for p in probs],
                    candidate_roots=list(s.roots),
                    candidate_probs=[scorer(i, r) for r in s.roots],
                    dnf=dnf_string(roots),
                    nodes=nodes,
                    edges=edges,
                    image=display[i],
                    patch_interpolation=patch_interpolation,
                    stats={
                        "scored_sets": len(scorer.caches[i]),
                        "heuristic_rows": heuristic_rows / batch,
                        "forward_calls": scorer.calls,
                        "depth": s.depth,
                        "beam_sizes": list(s.beam_sizes),
                    },
                )
            )
        return results

    # -- heuristic ----------------------------------------------------------------------------------------

    @staticmethod
    def _check_heuristic(heuristic: object, batch: int, grid_size: int, x: Tensor) -> Tensor | None:
        if isinstance(heuristic, str):
            check_in_choices("heuristic", heuristic, ("igos",))
            return None
        if isinstance(heuristic, Tensor):
            check_tensor("heuristic", heuristic, floating=True)
            values = heuristic
            if values.ndim == 4 and values.shape[1] == 1:
                values = values[:, 0]
            if values.ndim == 2:
                values = values.unsqueeze(0)
            if (
                values.ndim != 3
                or tuple(values.shape[1:]) != (grid_size, grid_size)
                or values.shape[0] not in (1, batch)
            ):
                raise ValueError(
                    f"`heuristic` as a tensor must be (g, g), (B, g, g) or (B, 1, g, g) with g = grid_size "
                    f"{grid_size} and B = {batch}, got {describe(heuristic)}"
                )
            return values.detach().to(device=x.device, dtype=x.dtype).expand(batch, -1, -1)
        if callable(heuristic):
            return None
        raise TypeError(f"`heuristic` must be 'igos', a tensor or a callable, got {describe(heuristic)}")

    def _importance(
        self,
        heuristic: object,
        precomputed: Tensor | None,
        x: Tensor,
        labels: Tensor,
        baseline: Tensor,
        extra: tuple[Any, ...],
        grid_size: int,
        heuristic_kwargs: dict[str, Any],
        seed: int | None,
        internal_batch_size: int | None,
    ) -> Tensor:
        """(B, g, g) patch importance, higher = tried first."""
        if precomputed is not None:
            return precomputed
        if callable(heuristic) and not isinstance(heuristic, str):
            values = heuristic(x, labels)
            check_tensor("the heuristic's output", values, floating=True)
            if values.ndim == 3:
                values = values.unsqueeze(1)
            if values.ndim != 4 or values.shape[0] != x.shape[0] or values.shape[1] != 1:
                raise ValueError(
                    f"a callable `heuristic` must return (B, h, w) or (B, 1, h, w) maps, got {describe(values)}"
                )
            return F.adaptive_avg_pool2d(values.detach().to(x.dtype), grid_size)[:, 0]
        fixed = {"mask_size": grid_size, "seed": seed, "internal_batch_size": internal_batch_size}
        options = _IGOS_ORDERING.replace(**heuristic_kwargs, **fixed)
        _, mask = self._igos.attribute(
            x,
            baselines=baseline,
            target=labels,
            additional_forward_args=extra if extra else None,
            options=options,
            return_mask=True,
        )
        # the ranking is by ascending mask value: most salient (most deleted) first
        return (1 - mask[:, 0]).detach()

    # -- search -------------------------------------------------------------------------------------------

    @staticmethod
    def _beam_search(
        scorer: _Scorer,
        searches: list[_Search],
        depth_limit: int,
        beam_width: int,
        num_successors: int,
        max_roots: int,
        minimize: str,
        show_progress: bool,
    ) -> None:
        progress = tqdm(range(1, depth_limit + 1), desc="StructuredAttentionGraph", disable=not show_progress)
        for depth in progress:
            active = [s for s in searches if not s.done]
            if not active:
                break
            pools: list[tuple[_Search, list[PatchSet]]] = []
            for s in active:
                pool: list[PatchSet] = []
                seen: set[PatchSet] = set()
                for state in s.beam:
                    added = 0
                    for patch in s.ranking:
                        if added == num_successors:
                            break
                        if patch in state:
                            continue
                        added += 1
                        successor = state | {patch}
                        if successor not in seen:
                            seen.add(successor)
                            pool.append(successor)
                s.depth = depth
                if pool:
                    pools.append((s, pool))
                else:
                    s.done = True
            scorer.score((s.image, successor) for s, pool in pools for successor in pool)
            trims: list[_Trim] = []
            for s, pool in pools:
                probs = [scorer(s.image, successor) for successor in pool]
                order = sorted(range(len(pool)), key=lambda k, probs=probs: -probs[k])
                s.beam = [pool[k] for k in order if not probs[k] > s.threshold][:beam_width]
                s.beam_sizes.append(len(s.beam))
                trims.extend(_Trim(s, pool[k]) for k in order if probs[k] > s.threshold)
            _minimise(scorer, trims, minimize)
            for trim in trims:
                s = trim.search
                if trim.patches not in s.root_keys:
                    s.root_keys.add(trim.patches)
                    s.roots.append(trim.patches)
            for s, _ in pools:
                if len(s.roots) > max_roots or not s.beam or depth == depth_limit:
                    s.done = True
        progress.close()

    @staticmethod
    def _build_graphs(
        scorer: _Scorer,
        searches: list[_Search],
        selected: list[list[PatchSet]],
        p_full: list[float],
        node_threshold: float,
        max_children: int,
        child_selection: str,
    ) -> list[tuple[dict[PatchSet, dict[str, Any]], list[tuple[PatchSet, PatchSet, dict[str, Any]]]]]:
        """The patch-deletion DAG of every image, breadth first, one batch per level across images."""
        graphs: list[tuple[dict, list]] = [({}, []) for _ in searches]

        def add_node(image: int, patches: PatchSet, level: int, is_root: bool) -> None:
            p = scorer(image, patches)
            graphs[image][0][patches] = {
                "patches": tuple(sorted(patches)),
                "prob": p,
                "confidence": p / p_full[image],
                "is_root": is_root,
                "level": level,
                "expanded": False,
            }

        frontier: list[tuple[int, PatchSet]] = []
        for s in searches:
            for root in selected[s.image]:
                if root not in graphs[s.image][0]:
                    add_node(s.image, root, 0, True)
                    frontier.append((s.image, root))
        level = 0
        while frontier:
            expand = [
                (image, node)
                for image, node in frontier
                if len(node) > 1 and graphs[image][0][node]["confidence"] > node_threshold
            ]
            if child_selection == "largest_drop":
                scorer.score((image, node - {p}) for image, node in expand for p in sorted(node))
                removals = []
                for image, node in expand:
                    drops = sorted(sorted(node), key=lambda p, i=image, n=node: scorer(i, n - {p}))
                    removals.append(sorted(drops[:max_children]))
            else:
                removals = [sorted(node)[:max_children] for _, node in expand]
            scorer.score(
                (image, node - {p}) for (image, node), ps in zip(expand, removals, strict=True) for p in ps
            )
            next_frontier: list[tuple[int, PatchSet]] = []
            for (image, node), patches in zip(expand, removals, strict=True):
                nodes, edges = graphs[image]
                nodes[node]["expanded"] = True
                for patch in patches:
                    child = node - {patch}
                    if child not in nodes:
                        add_node(image, child, level + 1, False)
                        next_frontier.append((image, child))
                    edges.append(
                        (
                            node,
                            child,
                            {
                                "removed": patch,
                                "drop": nodes[node]["confidence"] - nodes[child]["confidence"],
                            },
                        )
                    )
            frontier = next_frontier
            level += 1
        return graphs


def _minimise(scorer: _Scorer, trims: list[_Trim], mode: str) -> None:
    """Trim every sufficient set to a 1-minimal one, all sets of all images in lock-step."""
    if mode == "best_first":
        active = [t for t in trims if len(t.patches) > 1]
        while active:
            scorer.score((t.search.image, t.patches - {p}) for t in active for p in t.patches)
            still = []
            for t in active:
                best, best_p = -1, -math.inf
                for p in sorted(t.patches):
                    value = scorer(t.search.image, t.patches - {p})
                    if value > best_p:
                        best, best_p = p, value
                if best_p > t.search.threshold:
                    t.patches = t.patches - {best}
                    if len(t.patches) > 1:
                        still.append(t)
            active = still
        return
    # index sweep: one removal per set and step, in index order, restarted until a sweep removes nothing
    active = []
    for t in trims:
        if len(t.patches) > 1:
            t.order = sorted(t.patches)
            active.append(t)
    while active:
        scorer.score((t.search.image, t.patches - {t.order[t.position]}) for t in active)
        still = []
        for t in active:
            patch = t.order[t.position]
            if scorer(t.search.image, t.patches - {patch}) > t.search.threshold:
                t.patches = t.patches - {patch}
                t.removed = True
            t.position += 1
            if len(t.patches) <= 1:
                continue
            if t.position == len(t.order):
                if not t.removed:
                    continue
                t.order, t.position, t.removed = sorted(t.patches), 0, False
            still.append(t)
        active = still
