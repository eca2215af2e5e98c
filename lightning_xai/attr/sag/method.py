"""The Structured Attention Graph method: checks, the clean forward, the patch ordering, and the results."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from captum.attr import PerturbationAttribution
from captum.log import log_usage
from torch import Tensor

from ..._checks import (
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
from ...explain import (
    Normalization,
    UninformativeExplanationWarning,
    preserved_state,
    unchanged_rows,
    warn_if_training,
    warn_uninformative,
)
from ...models import LogitsForward, forward_module
from .._base import NormalizedAttribution
from .._common import (
    check_baselines_not_target,
    clean_and_baseline_scores,
    format_additional_forward_args,
    format_inputs,
    format_output,
)
from ..igos import IGOS, IGOSOptions
from .patches import Interpolation, dnf_string, patch_masks, select_diverse
from .result import SAGResult
from .search import _CountingForward, _Scorer, _Search, beam_search, build_graphs

Minimize = Literal["best_first", "index_sweep"]
ChildSelection = Literal["first_by_index", "largest_drop"]

#: Roots beyond this many (in discovery order) are not considered by the diversity selection.
MAX_SELECTION_CANDIDATES = 64

# The I-GOS settings of the heuristic ordering: the reference's (spec §2.1) but with I-GOS's default 5-point
# Gauss–Legendre path instead of its 20-point Riemann sum (a quarter of the gradient rows);
# ``heuristic_kwargs=IGOSOptions.reference_fields`` restores the reference's.
_SET_BY_SEARCH = {"mask_size", "seed", "internal_batch_size"}
_IGOS_ORDERING = IGOSOptions(
    n_iterations=2,
    n_steps=5,
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


class StructuredAttentionGraph(NormalizedAttribution, PerturbationAttribution):
    r"""Structured Attention Graphs (Shitole et al., NeurIPS 2021, arXiv 2011.06733).

    Searches each image for several *minimal sufficient explanations* (MSEs): sets ``S`` of g×g grid patches
    such that the image showing only ``S`` (the black baseline elsewhere, ``I_S = b + (x - b)·U(1_S)``) keeps
    the target's softmax probability above ``τ·p_full``, while removing any one patch of ``S`` does not.
    Patches are ordered by a short I-GOS run; a beam search adds one patch per depth to each of ``beam_width``
    states, trying the ``num_successors`` highest-ranked patches not yet in the state; every sufficient
    successor is trimmed to a minimal one and kept as a root. A diverse subset of the roots (pairwise overlap at
    most ``overlap_threshold``) is selected and expanded into a graph whose children remove one patch.

    :meth:`explain` returns one :class:`SAGResult` per image; :meth:`attribute` returns a Captum-shaped map: the mean
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

    @log_usage()
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
                if not result.stats.get("uninformative"):  # those were named by `explain`'s warning
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
    ) -> list[SAGResult]:
        r"""Search every image of the batch and return one :class:`SAGResult` per image.

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
                2 iterations, λ = (1, 20), first step 200, plain line search, noise 0.2, except the path: 5
                Gauss–Legendre points instead of a 20-point Riemann sum, a quarter of the cost;
                ``heuristic_kwargs=dict(IGOSOptions.reference_fields)`` gives the reference's), a
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
                labels, p_full, p_baseline = clean_and_baseline_scores(
                    forward, x, baseline, target, extra, internal_batch_size=internal_batch_size
                )
            # Showing nothing already keeps the score above τ·p_full: every patch (even one of the background)
            # would be a "sufficient" root and the graph would explain nothing, so these images are not searched.
            unchanged = unchanged_rows(p_full, p_baseline)
            baseline_sufficient = (p_baseline > tau * p_full) & ~unchanged
            uninformative = (unchanged | baseline_sufficient).tolist()
            warn_uninformative(
                type(self).__name__, unchanged=unchanged, baseline_sufficient=baseline_sufficient
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
                _Search(
                    image=i, threshold=tau * p_full_list[i], ranking=tuple(rankings[i]), done=uninformative[i]
                )
                for i in range(batch)
            ]
            with torch.no_grad():
                beam_search(
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
                graphs = build_graphs(
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
                SAGResult(
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
                        "baseline_prob": float(p_baseline[i]),
                        "uninformative": uninformative[i],
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
        with warnings.catch_warnings():
            # the search's own check (in `explain`) names these images already
            warnings.simplefilter("ignore", UninformativeExplanationWarning)
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
