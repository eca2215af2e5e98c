"""The result of :class:`~lightning_xai.attr.StructuredAttentionGraph` for one image."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..._deprecation import warn_deprecated
from .patches import PatchSet, patch_masks


@dataclass
class SAGResult:
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
            ``forward_calls`` (model calls of the whole batch), ``depth``, ``beam_sizes``, ``baseline_prob`` (the
            target's probability on the baseline alone) and ``uninformative`` (True when the baseline alone is
            already sufficient, or scores as the image does: such an image is not searched and has no roots).
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
        warn_deprecated("SAGResult.graph", "SAGResult.to_networkx()")
        return self.to_networkx()

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph``: node key = frozenset of patches, the attributes of :attr:`nodes` and
        :attr:`edges`. networkx is imported here only."""
        try:
            import networkx as nx
        except ImportError as error:  # pragma: no cover - networkx is a dependency of the package
            raise ImportError("`SAGResult.to_networkx()` needs networkx: `pip install networkx`") from error
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
        return self._render_deprecated("SAGResult.render()", style)

    def plot(self, **style: Any) -> Any:
        """Deprecated: :func:`lightning_xai.viz.render_sag`."""
        return self._render_deprecated("SAGResult.plot()", style)

    def _render_deprecated(self, old: str, style: dict[str, Any]) -> Any:
        warn_deprecated(old, "lightning_xai.viz.render_sag(sag)", stacklevel=4)
        from ...viz.sag import render_sag

        return render_sag(self, **style)

    def save_png(self, path: str | Path, dpi: int = 150, **style: Any) -> Path:
        """Deprecated: :func:`lightning_xai.viz.save_sag_png`."""
        warn_deprecated("SAGResult.save_png()", "lightning_xai.viz.save_sag_png(sag, path)")
        from ...viz.sag import save_sag_png

        return save_sag_png(self, path, dpi=dpi, **style)

    def to_dot(self, image_dir: str | Path | None = None) -> str:
        """Deprecated: :func:`lightning_xai.viz.sag_to_dot`."""
        warn_deprecated("SAGResult.to_dot()", "lightning_xai.viz.sag_to_dot(sag)")
        from ...viz.sag import sag_to_dot

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
