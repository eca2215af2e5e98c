"""Heatmap overlays as images people can look at."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_tensor, describe


def _to_hwc(image: Tensor) -> np.ndarray:
    check_tensor("image", image, ndim=3)
    array = image.detach().float().cpu()
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:  # normalised inputs: stretch to [0, 1] for display only
        array = (array - low) / max(high - low, 1e-8)
    return array.permute(1, 2, 0).numpy()


def overlay(image: Tensor, heatmap: Tensor, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a heatmap over an image: (3, H, W) or (1, H, W) image, (H, W) / (1, H, W) / (h, w) heatmap.

    The heatmap is resized bilinearly to the image and min-max scaled; returns an (H, W, 3) float array in
    [0, 1].

    Example:
        >>> import torch
        >>> overlay(torch.rand(3, 16, 16), torch.rand(4, 4)).shape
        (16, 16, 3)
    """
    rgb = _to_hwc(image)
    check_tensor("heatmap", heatmap, ndim=(2, 3))
    heat = heatmap.detach().float().cpu()
    if heat.ndim == 3:
        if heat.shape[0] != 1:
            raise ValueError(f"`heatmap` must be (H, W) or (1, H, W), got {describe(heatmap)}")
        heat = heat[0]
    heat = F.interpolate(heat[None, None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-8)
    colours = plt.get_cmap(cmap)(heat.numpy())[..., :3]
    return (1 - alpha) * rgb + alpha * colours


def _grid_figure(
    images: Tensor,
    heatmaps: Tensor,
    masks: Tensor | None,
    titles: Sequence[str] | None,
    columns: int,
    alpha: float,
) -> plt.Figure:
    check_tensor("images", images, ndim=4)
    check_tensor("heatmaps", heatmaps, ndim=(3, 4))
    n = images.shape[0]
    if heatmaps.shape[0] != n or (masks is not None and masks.shape[0] != n):
        raise ValueError(f"`images`, `heatmaps` and `masks` must have the same batch size, got {n} images")
    if titles is not None and len(titles) != n:
        raise ValueError(f"`titles` must have one entry per image ({n}), got {len(titles)}")
    if heatmaps.ndim == 3:
        heatmaps = heatmaps.unsqueeze(1)
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(2.2 * 2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, columns)
        axes[r, 2 * c].imshow(_to_hwc(images[i]))
        axes[r, 2 * c + 1].imshow(overlay(images[i], heatmaps[i], alpha=alpha))
        if masks is not None:
            mask = masks[i].detach().float().cpu().reshape(images.shape[-2:])
            axes[r, 2 * c + 1].contour(mask.numpy(), levels=[0.5], colors="white", linewidths=1.0)
        if titles is not None:
            axes[r, 2 * c].set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def overlay_grid(
    images: Tensor,
    heatmaps: Tensor,
    masks: Tensor | None = None,
    titles: Sequence[str] | None = None,
    columns: int = 4,
    alpha: float = 0.5,
) -> np.ndarray:
    """The grid of :func:`save_overlay_grid` as an (H, W, 3) uint8 array (for loggers that take images).

    Example:
        >>> import torch
        >>> grid = overlay_grid(torch.rand(2, 3, 16, 16), torch.rand(2, 4, 4))
        >>> grid.dtype, grid.shape[2]
        (dtype('uint8'), 3)
    """
    fig = _grid_figure(images, heatmaps, masks, titles, columns, alpha)
    fig.set_dpi(100)
    fig.canvas.draw()
    array = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return array


def save_overlay_grid(
    path: str | Path,
    images: Tensor,
    heatmaps: Tensor,
    masks: Tensor | None = None,
    titles: Sequence[str] | None = None,
    columns: int = 4,
    alpha: float = 0.5,
) -> Path:
    """Write a PNG grid: for each sample its image and the heatmap overlay (with the object mask's outline).

    Example:
        >>> import torch, tempfile, os
        >>> path = save_overlay_grid(os.path.join(tempfile.mkdtemp(), "g.png"), torch.rand(2, 3, 16, 16),
        ...                          torch.rand(2, 1, 4, 4))
        >>> path.exists()
        True
    """
    fig = _grid_figure(images, heatmaps, masks, titles, columns, alpha)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
