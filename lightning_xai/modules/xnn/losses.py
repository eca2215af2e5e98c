"""The XNN losses: the prediction error, the sparse reconstruction penalty and the pull-away term."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..._checks import check_in_choices, check_positive, describe

__all__ = ["prediction_loss", "pull_away_term", "sparse_reconstruction_loss"]

PullAwayMode = Literal["images", "features"]
# Z = h ⊙ W_c + 1e-8, as in the reference: rows of inactive concepts stay defined under normalisation.
_PT_OFFSET = 1e-8


def _loss_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype the losses are computed in: float32, or float64 when an input is float64 (half-precision
    features are promoted; double-precision ones are not rounded down)."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def prediction_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """``mean_n (ŷ_n − y_n)²`` over every entry, in float32 (float64 for float64 inputs); the two tensors must have
    the same shape.

    Nothing is broadcast: a (B,) target against a (B, 1) prediction is a ``ValueError``, not a (B, B) matrix.

    Example:
        >>> import torch
        >>> float(prediction_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])))
        2.5
    """
    if not isinstance(prediction, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"`prediction` and `target` must be tensors, got {describe(prediction)}, {describe(target)}"
        )
    if prediction.shape != target.shape:
        raise ValueError(
            f"the XNN prediction and its target must have the same shape (B, n_out); got prediction "
            f"{tuple(prediction.shape)} and target {tuple(target.shape)}. Reshape explicitly (nothing is broadcast)"
        )
    dtype = _loss_dtype(prediction, target)
    return (prediction.to(dtype) - target.to(dtype)).pow(2).mean()


def sparse_reconstruction_loss(reconstruction: Tensor, features: Tensor, q: float = 100.0) -> Tensor:
    """The sparse reconstruction penalty ``(1/D) Σ_d log(1 + q · mean_n (x̂_{n,d} − x_{n,d})²)``.

    The squared error is averaged over the batch per feature dimension, then passed through ``log(1 + q·)`` and
    averaged over dimensions. The penalty grows only logarithmically, so a few badly reconstructed dimensions
    cost little: only part of the feature space has to be reconstructed. For tiny errors it equals ``q · MSE``.

    Example:
        >>> import torch
        >>> x = torch.zeros(2, 2)
        >>> x_hat = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> round(float(sparse_reconstruction_loss(x_hat, x, q=1.0)), 6)  # (log 2 + log 1) / 2
        0.346574
    """
    if reconstruction.shape != features.shape or features.ndim != 2:
        raise ValueError(
            f"`reconstruction` and `features` must both be (N, D) of the same shape, got "
            f"{tuple(reconstruction.shape)} and {tuple(features.shape)}"
        )
    check_positive("q", q)
    dtype = _loss_dtype(reconstruction, features)
    per_dim = (reconstruction.to(dtype) - features.to(dtype)).pow(2).mean(0)
    return torch.log1p(q * per_dim).mean()


def pull_away_term(z: Tensor, mode: PullAwayMode = "images") -> Tensor:
    """The pull-away term ``PT(Z) = 1/(N(N−1)) Σ_{n≠m} cos(z_n, z_m)²`` of the rows of ``z`` (N × k).

    ``mode="images"`` (default) compares the rows, one per image: different images are pushed towards orthogonal
    concept vectors. ``mode="features"`` compares the k columns (each a vector over the batch) and normalises by
    ``k(k−1)``. Identical rows give 1, mutually orthogonal rows 0, and scaling rows by positive factors changes
    nothing. Needs at least two rows (columns).

    Example:
        >>> import torch
        >>> float(pull_away_term(torch.ones(3, 4))), float(pull_away_term(torch.eye(3)))
        (1.0, 0.0)
    """
    check_in_choices("mode", mode, ("images", "features"))
    if not isinstance(z, Tensor) or z.ndim != 2:
        raise ValueError(f"`z` must be an (N, k) tensor, got {describe(z)}")
    rows = z.to(_loss_dtype(z)) if mode == "images" else z.to(_loss_dtype(z)).t()
    n = rows.shape[0]
    if n < 2:
        raise ValueError(
            f"the pull-away term needs at least 2 {'rows' if mode == 'images' else 'columns'}, got {n}"
        )
    unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    cos2 = (unit @ unit.t()).pow(2)
    return (cos2.sum() - cos2.diagonal().sum()) / (n * (n - 1))
