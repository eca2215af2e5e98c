"""Pictures: heatmap overlays (and later SAG graphs and the HTML report)."""

from .overlay import overlay, save_overlay_grid

__all__ = ["overlay", "save_overlay_grid"]
