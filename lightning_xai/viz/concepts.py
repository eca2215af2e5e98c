"""The XNN concept figure: the input, one heatmap per concept with its contribution, and the prediction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from .._checks import check_tensor, describe
from .overlay import _to_hwc, overlay


def plot_concepts(
    images: Tensor,
    heatmaps: Tensor,
    contributions: Tensor,
    prediction: Tensor,
    *,
    bias: float | Tensor | None = None,
    order: Sequence[int] | Tensor | None = None,
    target_score: Tensor | None = None,
    head: int = 0,
    titles: Sequence[str] | None = None,
    path: str | Path | None = None,
    alpha: float = 0.5,
) -> plt.Figure:
    """Draw one row per image: the image, then each concept's heatmap titled ``concept j: h·w = value``, and the
    prediction those contributions add up to (``ŷ = Σ_j h_j·w_j + b``).

    Each heatmap is normalised on its own. Concepts inactive for that image (h_j = 0, an all-zero map) are
    drawn greyed out. Concepts appear in ``order`` (e.g. :meth:`~lightning_xai.modules.XNN.concept_order`,
    descending mean contribution); by default in index order.

    Args:
        images: (B, C, H, W).
        heatmaps: (B, k, H, W) concept heatmaps (:meth:`~lightning_xai.modules.XNN.concept_heatmaps`).
        contributions: (B, n_out, k) or (B, k) contributions h ⊙ W (:meth:`~lightning_xai.modules.XNN.contributions`).
        prediction: (B, n_out) or (B,) XNN predictions.
        bias: the head's bias for ``head`` (shown in the sum); optional.
        target_score: (B,) the original network's score, shown beside the prediction; optional.
        head: which output of a multi-output XNN to show.
        titles: one label per row (e.g. the class).
        path: also save the figure as a PNG there.

    Example:
        >>> import torch
        >>> fig = plot_concepts(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16), torch.rand(2, 1, 3),
        ...                     torch.rand(2, 1), bias=0.1)
        >>> len(fig.axes)
        10
    """
    check_tensor("images", images, ndim=4)
    check_tensor("heatmaps", heatmaps, ndim=4)
    check_tensor("contributions", contributions, ndim=(2, 3))
    check_tensor("prediction", prediction, ndim=(1, 2))
    batch, k = heatmaps.shape[:2]
    if contributions.ndim == 3:
        contributions = contributions[:, head]
    if prediction.ndim == 2:
        prediction = prediction[:, head]
    if images.shape[0] != batch or contributions.shape != (batch, k) or prediction.shape != (batch,):
        raise ValueError(
            f"`images` ({describe(images)}), `heatmaps` ({describe(heatmaps)}), `contributions` and `prediction` "
            f"must describe the same {batch} images and {k} concepts"
        )
    if titles is not None and len(titles) != batch:
        raise ValueError(f"`titles` must have one entry per image ({batch}), got {len(titles)}")
    order = list(range(k)) if order is None else [int(j) for j in order]
    if sorted(order) != list(range(k)):
        raise ValueError(f"`order` must be a permutation of the {k} concept indices, got {order}")
    bias_value = (
        None
        if bias is None
        else float(torch.as_tensor(bias).reshape(-1)[head if torch.as_tensor(bias).numel() > 1 else 0])
    )

    fig, axes = plt.subplots(batch, k + 2, figsize=(2.1 * (k + 2), 2.3 * batch), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(batch):
        axes[i, 0].imshow(_to_hwc(images[i]))
        axes[i, 0].set_title("input" if titles is None else titles[i], fontsize=8)
        for column, j in enumerate(order, start=1):
            value = float(contributions[i, j])
            active = bool(heatmaps[i, j].max() > 0)
            ax = axes[i, column]
            if active:
                ax.imshow(overlay(images[i], heatmaps[i, j], alpha=alpha))
            else:
                grey = _to_hwc(images[i]).mean(-1)
                ax.imshow(grey, cmap="gray", vmin=0, vmax=1, alpha=0.35)
            ax.set_title(f"concept {j}: h·w = {value:+.2f}", fontsize=8, color="black" if active else "0.6")
        lines = [" + ".join(f"{float(contributions[i, j]):+.2f}" for j in order)]
        if bias_value is not None:
            lines[0] += f" {bias_value:+.2f} (bias)"
        lines.append(f"= ŷ {float(prediction[i]):+.2f}")
        if target_score is not None:
            lines.append(f"network score {float(target_score[i]):+.2f}")
        axes[i, -1].text(0.0, 0.5, "\n".join(lines), fontsize=8, va="center", ha="left", wrap=True)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig
