"""Pictures: heatmap overlays, SAG graphs and the self-contained HTML report."""

from .concepts import plot_concepts
from .overlay import overlay, overlay_grid, save_overlay_grid
from .report import HTMLReport
from .sag import render_sag, sag_to_dot, save_sag_png

__all__ = [
    "HTMLReport",
    "overlay",
    "overlay_grid",
    "plot_concepts",
    "render_sag",
    "sag_to_dot",
    "save_overlay_grid",
    "save_sag_png",
]
