"""Drawing structured attention graphs: a matplotlib figure (PNG) and Graphviz DOT text.

The picture follows the reference's design without needing Graphviz: a black background, the selected roots
in the top row and each further deletion level one row down, arrows from parent to child. A node shows the
image where its patches are (``img·V + 0.1·img·(1-V)`` with ``V = U(1_S)`` computed as for scoring, so the
picture is what the model saw), the cell of the patch removed from its parent outlined in red (1 / 2 / 4 px
for a confidence drop below 20 / below 60 / from 60 points), its relative confidence as a label and a frame
that is light, mid or dark grey for a confidence above 90 %, above 50 % or lower. The image with the patch
grid and patch numbers stands on the left; the DNF string is the caption.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects
from matplotlib.patches import FancyArrowPatch, Rectangle

from ..attr.sag import patch_cells, patch_masks
from .overlay import _to_hwc

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..attr.sag import PatchSet, SAGResult

__all__ = ["node_thumbnail", "render_sag", "sag_to_dot", "save_sag_png"]

_FRAME_COLOURS = ((0.9, "#e6e6e6"), (0.5, "#9a9a9a"), (-np.inf, "#4d4d4d"))
_OUTLINE_WIDTHS = ((0.2, 1.0), (0.6, 2.0), (np.inf, 4.0))
_DIM = 0.1


def _display_image(sag: SAGResult) -> np.ndarray:
    image = sag.image
    low, high = float(image.min()), float(image.max())
    if low >= -1e-3 and high <= 1 + 1e-3:
        image = image.clamp(0, 1)
    return _to_hwc(image)


def node_thumbnail(
    sag: SAGResult, patches: PatchSet | set[int], image: np.ndarray | None = None
) -> np.ndarray:
    """(H, W, 3) picture of a patch set: the image at full brightness under ``U(1_S)``, at 10 % elsewhere.

    Example:
        >>> import torch
        >>> from lightning_xai.attr import StructuredAttentionGraph
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)).eval()
        >>> sag = StructuredAttentionGraph(model).explain(torch.rand(1, 3, 8, 8), grid_size=2,
        ...                                                heuristic=torch.rand(1, 2, 2))[0]
        >>> node_thumbnail(sag, {0}).shape
        (8, 8, 3)
    """
    rgb = _display_image(sag) if image is None else image
    visible = patch_masks([set(patches)], sag.grid_size, rgb.shape[:2], sag.patch_interpolation)[0, 0]
    v = visible.numpy()[..., None]
    return np.clip(rgb * v + _DIM * rgb * (1 - v), 0, 1)


def _cell_boxes(sag: SAGResult, size: tuple[int, int]) -> dict[int, tuple[float, float, float, float]]:
    """Patch -> (x0, y0, width, height) of its cell in pixel coordinates (pixel edges at ±0.5)."""
    cells = patch_cells(sag.grid_size, size, sag.patch_interpolation)
    boxes = {}
    for patch in range(sag.grid_size**2):
        ys, xs = (cells == patch).nonzero(as_tuple=True)
        if ys.numel():
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
            boxes[patch] = (x0 - 0.5, y0 - 0.5, x1 - x0 + 1.0, y1 - y0 + 1.0)
    return boxes


def _levels(sag: SAGResult, max_per_row: int | None) -> tuple[list[list[PatchSet]], list[int]]:
    rows: dict[int, list[PatchSet]] = {}
    for key, attributes in sag.nodes.items():
        rows.setdefault(int(attributes["level"]), []).append(key)
    ordered = [rows[level] for level in sorted(rows)]
    hidden = [0] * len(ordered)
    if max_per_row is not None:
        for i, row in enumerate(ordered):
            hidden[i] = max(0, len(row) - max_per_row)
            ordered[i] = row[:max_per_row]
    return ordered, hidden


def _frame_colour(confidence: float) -> str:
    for bound, colour in _FRAME_COLOURS:
        if confidence > bound:
            return colour
    return _FRAME_COLOURS[-1][1]


def _outline_width(drop: float) -> float:
    for bound, width in _OUTLINE_WIDTHS:
        if drop < bound:
            return width
    return _OUTLINE_WIDTHS[-1][1]


def render_sag(
    sag: SAGResult,
    *,
    node_size: float = 1.0,
    max_per_row: int | None = 12,
    show_image: bool = True,
    show_patch_numbers: bool = True,
    caption: bool = True,
    title: str | None = None,
) -> Figure:
    """Draw a :class:`~lightning_xai.attr.SAGResult` as a matplotlib Figure (close it with ``plt.close(fig)``).

    Args:
        sag: the result of :meth:`~lightning_xai.attr.StructuredAttentionGraph.explain`.
        node_size: side of a node's thumbnail in inches.
        max_per_row: the most nodes drawn per level (None: all); hidden ones are counted in the row's margin.
        show_image: draw the image with its patch grid on the left.
        show_patch_numbers: number the patches on that image.
        caption: write the DNF string under the graph.
        title: a title above the graph.
    """
    image = _display_image(sag)
    height, width = image.shape[:2]
    boxes = _cell_boxes(sag, (height, width))
    rows, hidden = _levels(sag, max_per_row)
    n_rows = max(len(rows), 1)
    n_cols = max((len(r) for r in rows), default=1)
    cell_w, cell_h = 1.35 * node_size, 1.7 * node_size
    left = 2.4 * node_size if show_image else 0.3 * node_size
    top = 0.5 * node_size if title else 0.25 * node_size
    bottom = 0.6 * node_size if caption else 0.2 * node_size
    fig_w = left + n_cols * cell_w + 0.2 * node_size
    fig_h = top + n_rows * cell_h + bottom
    if show_image:
        fig_h = max(fig_h, top + 2.2 * node_size + bottom)
    fig = plt.figure(figsize=(fig_w, fig_h), facecolor="black")

    def axes_at(x: float, y: float, w: float, h: float) -> Any:
        """Axes from inches measured from the top-left corner."""
        return fig.add_axes((x / fig_w, 1 - (y + h) / fig_h, w / fig_w, h / fig_h))

    if show_image:
        side = 2.0 * node_size
        ax = axes_at(0.2 * node_size, top, side, side)
        ax.imshow(image, interpolation="nearest")
        for patch, (x0, y0, w, h) in boxes.items():
            ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor="white", linewidth=0.4, alpha=0.6))
            if show_patch_numbers:
                ax.text(
                    x0 + w / 2,
                    y0 + h / 2,
                    str(patch),
                    color="white",
                    fontsize=max(3.0, 7 * node_size * 7 / sag.grid_size),
                    ha="center",
                    va="center",
                    path_effects=[patheffects.withStroke(linewidth=1.5, foreground="black")],
                )
        ax.set_axis_off()
        ax.set_title(f"class {sag.target}, p = {sag.p_full:.3f}", color="white", fontsize=7)

    centres: dict[PatchSet, tuple[float, float, float]] = {}
    incoming: dict[PatchSet, list[tuple[int, float]]] = {}
    for _parent, child, attributes in sag.edges:
        incoming.setdefault(child, []).append((int(attributes["removed"]), float(attributes["drop"])))
    thumb = 1.0 * node_size
    for r, row in enumerate(rows):
        offset = left + (n_cols - len(row)) * cell_w / 2
        for c, key in enumerate(row):
            attributes = sag.nodes[key]
            x = offset + c * cell_w + (cell_w - thumb) / 2
            y = top + r * cell_h + 0.1 * node_size
            ax = axes_at(x, y, thumb, thumb)
            ax.imshow(node_thumbnail(sag, key, image), interpolation="nearest")
            for patch, drop in incoming.get(key, []):
                if patch in boxes:
                    x0, y0, w, h = boxes[patch]
                    ax.add_patch(
                        Rectangle((x0, y0), w, h, fill=False, edgecolor="red", linewidth=_outline_width(drop))
                    )
            ax.set_xticks([])
            ax.set_yticks([])
            colour = _frame_colour(float(attributes["confidence"]))
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if attributes["is_root"] else 2)
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_ylim(height - 0.5, -0.5)
            ax.text(
                0.5,
                -0.06,
                f"{round(100 * float(attributes['confidence']))}%",
                transform=ax.transAxes,
                color="white",
                fontsize=7 * node_size,
                ha="center",
                va="top",
            )
            centres[key] = (x + thumb / 2, y, y + thumb)
        if hidden[r]:
            fig.text(
                (left + n_cols * cell_w) / fig_w,
                1 - (top + r * cell_h + 0.6 * node_size) / fig_h,
                f"+{hidden[r]}",
                color="#9a9a9a",
                fontsize=7,
                ha="right",
            )
    for parent, child, _ in sag.edges:
        if parent in centres and child in centres:
            px, _, p_bottom = centres[parent]
            cx, c_top, _ = centres[child]
            start = (px / fig_w, 1 - (p_bottom + 0.2 * node_size) / fig_h)
            end = (cx / fig_w, 1 - (c_top - 0.02 * node_size) / fig_h)
            fig.add_artist(
                FancyArrowPatch(
                    start,
                    end,
                    transform=fig.transFigure,
                    arrowstyle="-|>",
                    mutation_scale=8,
                    color="#bbbbbb",
                    linewidth=0.8,
                )
            )
    if caption and sag.dnf:
        chars = max(20, int(fig_w * 14))
        fig.text(
            0.5,
            0.15 * node_size / fig_h,
            textwrap.fill(sag.dnf, chars),
            color="white",
            fontsize=7,
            ha="center",
            va="bottom",
            family="monospace",
        )
    elif caption:
        fig.text(
            0.5,
            0.15 * node_size / fig_h,
            "no sufficient patch set found",
            color="white",
            fontsize=7,
            ha="center",
        )
    if title:
        fig.text(0.5, 1 - 0.1 * node_size / fig_h, title, color="white", fontsize=9, ha="center", va="top")
    return fig


def save_sag_png(sag: SAGResult, path: str | Path, dpi: int = 150, **style: Any) -> Path:
    """Render ``sag`` (:func:`render_sag` with ``style``) and write a PNG; returns the path.

    Example:
        >>> import os, tempfile, torch
        >>> from lightning_xai.attr import StructuredAttentionGraph
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)).eval()
        >>> sag = StructuredAttentionGraph(model).explain(torch.rand(1, 3, 8, 8), grid_size=2,
        ...                                                heuristic=torch.rand(1, 2, 2))[0]
        >>> save_sag_png(sag, os.path.join(tempfile.mkdtemp(), "sag.png"), dpi=50).exists()
        True
    """
    fig = render_sag(sag, **style)
    try:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, facecolor=fig.get_facecolor())
    finally:
        plt.close(fig)
    return path


def sag_to_dot(sag: SAGResult, image_dir: str | Path | None = None) -> str:
    """The graph in Graphviz DOT, black background as in the reference. Nodes are ``n0, n1, …`` in
    :attr:`SAGResult.nodes` order, labelled with their patches and confidence; edges carry the removed patch.
    With ``image_dir``, each node's thumbnail is written there (``n<k>.png``) and shown in the node.

    Example:
        >>> import torch
        >>> from lightning_xai.attr import StructuredAttentionGraph
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)).eval()
        >>> sag = StructuredAttentionGraph(model).explain(torch.rand(1, 3, 8, 8), grid_size=2,
        ...                                                heuristic=torch.rand(1, 2, 2))[0]
        >>> sag_to_dot(sag).startswith("digraph SAG {")
        True
    """
    names = {key: f"n{k}" for k, key in enumerate(sag.nodes)}
    lines = [
        "digraph SAG {",
        '  graph [bgcolor="black", rankdir="TB"];',
        '  node [shape="box", style="filled", fontcolor="black", fontname="Helvetica"];',
        '  edge [color="white", fontcolor="white"];',
    ]
    if sag.dnf:
        lines.append(f'  label="{sag.dnf}"; labelloc="b"; fontcolor="white";')
    image = None
    if image_dir is not None:
        image_dir = Path(image_dir)
        image_dir.mkdir(parents=True, exist_ok=True)
        image = _display_image(sag)
    for key, attributes in sag.nodes.items():
        confidence = float(attributes["confidence"])
        patches = " ".join(f"P{p}" for p in attributes["patches"])
        label = f"{patches}\\n{round(100 * confidence)}%"
        extra = ""
        if image is not None:
            file = image_dir / f"{names[key]}.png"
            plt.imsave(file, node_thumbnail(sag, key, image))
            extra = f', image="{os.fspath(file)}", labelloc="b", imagescale=true'
        lines.append(f'  {names[key]} [label="{label}", fillcolor="{_frame_colour(confidence)}"{extra}];')
    for parent, child, attributes in sag.edges:
        width = _outline_width(float(attributes["drop"]))
        lines.append(
            f'  {names[parent]} -> {names[child]} [label="-P{attributes["removed"]}", penwidth={width:g}];'
        )
    if sag.nodes:
        roots = " ".join(names[k] for k, a in sag.nodes.items() if a["is_root"])
        lines.append(f"  {{ rank=same; {roots} }}")
    lines.append("}")
    return "\n".join(lines) + "\n"
