"""The batched SAG search: cached scoring of patch sets, the beam search, minimisation to minimal sufficient
sets, and the patch-deletion graphs; every image of a batch advances in lock-step."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ...explain import compose
from ...models import LogitsForward, check_logits
from ...models.scoring import chunk_bounds, select_forward_args
from .patches import Interpolation, PatchSet, patch_masks


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


def beam_search(
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
        minimise(scorer, trims, minimize)
        for trim in trims:
            s = trim.search
            if trim.patches not in s.root_keys:
                s.root_keys.add(trim.patches)
                s.roots.append(trim.patches)
        for s, _ in pools:
            if len(s.roots) > max_roots or not s.beam or depth == depth_limit:
                s.done = True
    progress.close()


def build_graphs(
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


def minimise(scorer: _Scorer, trims: list[_Trim], mode: str) -> None:
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
