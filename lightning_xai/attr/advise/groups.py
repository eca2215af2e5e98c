"""ADVISE's channel groups: the per-image details of a call and the group-wise Grad-CAMs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ADVISEDetails", "group_cams"]


@dataclass
class ADVISEDetails:
    """What :meth:`ADVISE.attribute` computed, per image (``return_details=True``).

    Groups are indexed by their peak count ``g`` = 0 … G−1 (G = the largest ``n_k`` in the batch + 1).

    Attributes:
        relevance: (B, C) ``n_k``, the number of density peaks of each channel (0: no peak or a failed KDE).
        group_sizes: (B, G) ``|K_g|``, the channels with ``n_k = g``.
        valid_groups: (B, G) the groups that compete: non-empty, with a non-zero map of ``c1``.
        group_maps: (B, G, h, w) the rescaled group maps ``L_g^{c1}`` at the layer's resolution (zeros for
            empty groups).
        runner_up_maps: (B, G, h, w) the same for ``c2`` (AVX's class-sensitivity term).
        group_scores: AVX and its components (keys of :data:`~lightning_xai.metrics.functional.avx.AVX_KEYS`),
            (B, G) each, NaN for groups that were not scored; empty with ``selection="largest_group"``.
        selected_group: (B,) the chosen ``g``; −1 where no group survived and the whole-layer Grad-CAM was
            returned.
        selected_size: (B,) ``|K_g|`` of the chosen group (C for the whole-layer fallback).
        target: (B,) the explained class ``c1``.
        runner_up: (B,) ``c2``, the most probable other class.
        dropped_fraction: (B,) the fraction of activation values the KDE ignored (outside [0, 1]).
        time_per_group: (B,) the image's share of the KDE time divided by its number of valid groups
            (ADVISE's reported cost; depends on the machine).
        timings: seconds of each stage of the call: ``forward_backward``, ``kde``, ``groups``, ``selection``.
    """

    relevance: Tensor
    group_sizes: Tensor
    valid_groups: Tensor
    group_maps: Tensor
    runner_up_maps: Tensor
    group_scores: dict[str, Tensor]
    selected_group: Tensor
    selected_size: Tensor
    target: Tensor
    runner_up: Tensor
    dropped_fraction: Tensor
    time_per_group: Tensor
    timings: dict[str, float] = field(default_factory=dict)


def group_cams(
    activations: Tensor, weights: Tensor, relevance: Tensor, num_groups: int | None = None
) -> Tensor:
    """Pre-ReLU group-wise Grad-CAMs ``Σ_{k: n_k = g} α_k A_k`` for g = 0 … G−1, (B, G, h, w).

    ``activations`` (B, C, h, w), ``weights`` (B, C) the channel weights ``α``, ``relevance`` (B, C) the
    non-negative integer group of each channel. The groups partition the channels, so the maps sum to the
    whole-layer map ``Σ_k α_k A_k``.

    Example:
        >>> import torch
        >>> acts, alpha = torch.rand(1, 4, 2, 2), torch.tensor([[1.0, 2.0, 3.0, 4.0]])
        >>> maps = group_cams(acts, alpha, torch.tensor([[0, 1, 1, 2]]))
        >>> maps.shape, torch.allclose(maps.sum(1), (alpha[:, :, None, None] * acts).sum(1))
        (torch.Size([1, 3, 2, 2]), True)
    """
    groups = int(relevance.max()) + 1 if num_groups is None else num_groups
    onehot = F.one_hot(relevance.long(), groups).to(activations.dtype)  # (B, C, G)
    weighted = onehot * weights.to(activations.dtype).unsqueeze(2)
    return torch.einsum("bcg,bchw->bghw", weighted, activations)


def rescale_maps(maps: Tensor) -> Tensor:
    """Min-max to [0, 1] over the last two dimensions; a constant map becomes 0."""
    low = maps.amin((-2, -1), keepdim=True)
    span = maps.amax((-2, -1), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic resizing of (N, 1, h, w) maps to ``size``, clamped back to [0, 1] (bicubic overshoots)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
