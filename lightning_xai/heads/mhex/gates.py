"""The modules of one MHEX branch: the attention gate, the supervision head and the branch holding both."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._checks import check_in_choices, describe
from .stages import StageKind

GateCalibration = Literal["unit", "none"]


class AttentionGate(nn.Module):
    """Channel gate ``m = σ(W_g p + b_g) / σ(b0)`` on the pooled stage output ``p`` (B, C).

    At construction ``W_g = 0`` and ``b_g = b0``, so with ``calibration="unit"`` the multiplier is exactly 1
    (the model is unchanged) and lies in (0, 1/σ(b0)) afterwards; ``calibration="none"`` is the plain
    ``m = σ(z)``. ``rank=r < C`` factorises ``W_g = U V`` with ``U = 0`` at construction (so the identity holds;
    ``V`` receives gradient from the second step on).

    Example:
        >>> import torch
        >>> gate = AttentionGate(8, rank=2)
        >>> bool((gate(torch.randn(3, 8)) == 1).all())
        True
    """

    def __init__(
        self, channels: int, rank: int | None = None, b0: float = 3.0, calibration: GateCalibration = "unit"
    ) -> None:
        super().__init__()
        check_in_choices("calibration", calibration, ("unit", "none"))
        self.channels = channels
        self.calibration = calibration
        self.b0 = float(b0)
        if rank is None or rank >= channels:
            self.weight = nn.Parameter(torch.zeros(channels, channels))
            self.up = self.down = None
            self.rank = None
        else:
            self.weight = None
            self.down = nn.Parameter(torch.randn(rank, channels) / math.sqrt(channels))
            self.up = nn.Parameter(torch.zeros(channels, rank))
            self.rank = rank
        self.bias = nn.Parameter(torch.full((channels,), self.b0))

    def pre_activation(self, pooled: Tensor) -> Tensor:
        if self.weight is not None:
            return F.linear(pooled, self.weight, self.bias)
        return F.linear(F.linear(pooled, self.down), self.up, self.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        z = self.pre_activation(pooled)
        m = torch.sigmoid(z)
        if self.calibration == "unit":
            # The same kernel on the same shape as `z`: at W_g = 0 the ratio is exactly 1, element by element.
            m = m / torch.sigmoid(torch.full_like(z, self.b0))
        return m

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rank={self.rank}, b0={self.b0}, calibration={self.calibration!r}"


class MHEXHead(nn.Module):
    """Supervision head ``logit = W2 (W1 pool(x_att)) + b`` with its equivalent matrix ``W_eq = W2 W1``.

    There is no nonlinearity between ``W1`` (``refine``, identity at construction; fixed to the identity with
    ``refine=False``) and ``W2`` (N(0, 0.01²), bias 0), so the logit equals the mean of the class activation
    map ``A[k](u) = Σ_c W_eq[k, c] x_att[c, u]`` plus ``b``.

    Example:
        >>> import torch
        >>> head = MHEXHead(8, num_classes=3)
        >>> x = torch.randn(2, 8, 4, 4)
        >>> cam = head.class_activation_map(x)
        >>> torch.allclose(head(x.mean((2, 3))), cam.mean((2, 3)) + head.classifier.bias, atol=1e-6)
        True
    """

    def __init__(self, channels: int, num_classes: int, refine: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.num_classes = num_classes
        self.refine = nn.Parameter(torch.eye(channels)) if refine else None
        self.classifier = nn.Linear(channels, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        hidden = pooled if self.refine is None else F.linear(pooled, self.refine)
        return self.classifier(hidden)

    def equivalent_matrix(self) -> Tensor:
        """``W_eq = W2 W1`` (K, C); ``W2`` itself without refinement."""
        weight = self.classifier.weight
        return weight if self.refine is None else weight @ self.refine

    def class_activation_map(self, features: Tensor) -> Tensor:
        """Raw maps of every class: (B, C, H, W) -> (B, K, H, W), or (B, T, C) tokens -> (B, K, T)."""
        w_eq = self.equivalent_matrix().to(features.dtype)
        if features.ndim == 4:
            return torch.einsum("kc,bchw->bkhw", w_eq, features)
        if features.ndim == 3:
            return torch.einsum("kc,btc->bkt", w_eq, features)
        raise ValueError(f"`features` must be (B, C, H, W) or (B, T, C), got {describe(features)}")


class MHEXBranch(nn.Module):
    """The gate and the head of one tapped stage."""

    def __init__(
        self,
        stage: str,
        kind: StageKind,
        channels: int,
        num_classes: int,
        *,
        gate_rank: int | None,
        b0: float,
        gate_calibration: GateCalibration,
        refine: bool,
        prefix_tokens: int = 0,
    ) -> None:
        super().__init__()
        self.stage = stage
        self.kind = kind
        self.prefix_tokens = prefix_tokens
        self.gate = AttentionGate(channels, gate_rank, b0, gate_calibration)
        self.head = MHEXHead(channels, num_classes, refine)

    def extra_repr(self) -> str:
        return f"stage={self.stage!r}, kind={self.kind!r}"
