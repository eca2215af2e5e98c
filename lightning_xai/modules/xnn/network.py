"""The explanation network: encoder, decoder and linear head."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["XNNNetwork"]

DecoderActivation = Literal["auto", "relu", "identity"]

# Values of the `decoder_output_relu` buffer: the "auto" choice is made on the first training batch.
_UNDECIDED, _IDENTITY, _RELU = -1, 0, 1


class XNNNetwork(nn.Module):
    """Encoder ``D → hidden → k`` (ReLU after each Linear, dropout after the first), decoder ``k → … → D`` (ReLU
    after every Linear; the output's ReLU is optional) and the linear head ``ŷ = W h + b``.

    ``forward(x)`` returns ``(h, x̂, ŷ)`` with ``h ≥ 0`` of shape (B, k), ``x̂`` (B, D) and ``ŷ`` (B, n_out).

    Example:
        >>> import torch
        >>> net = XNNNetwork(16, num_concepts=3, num_outputs=2, hidden=(8, 4)).eval()
        >>> h, x_hat, y_hat = net(torch.rand(5, 16))
        >>> h.shape, x_hat.shape, y_hat.shape, bool((h >= 0).all())
        (torch.Size([5, 3]), torch.Size([5, 16]), torch.Size([5, 2]), True)
    """

    def __init__(
        self,
        in_features: int,
        num_concepts: int = 5,
        num_outputs: int = 1,
        hidden: Sequence[int] = (800, 100),
        dropout: float = 0.02,
        decoder_output_relu: bool | None = True,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("num_concepts", num_concepts),
            ("num_outputs", num_outputs),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        hidden = tuple(hidden)
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in hidden):
            raise ValueError(f"`hidden` must be a sequence of positive ints, got {hidden!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"`dropout` must be a number in [0, 1), got {dropout!r}")
        dims = (in_features, *hidden, num_concepts)
        self.dims = dims
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        # decoder[0] maps k back to the last hidden size, decoder[-1] ends at D
        self.decoder = nn.ModuleList(nn.Linear(b, a) for a, b in reversed(list(itertools.pairwise(dims))))
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(num_concepts, num_outputs)
        flag = _UNDECIDED if decoder_output_relu is None else (_RELU if decoder_output_relu else _IDENTITY)
        self.register_buffer("decoder_output_relu", torch.tensor(flag, dtype=torch.int8))

    @property
    def num_concepts(self) -> int:
        return self.dims[-1]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters: the tapped features are cast to it (``.double()``, ``.half()`` follow)."""
        return self.head.weight.dtype

    def encode(self, x: Tensor) -> Tensor:
        """The concepts ``h ≥ 0`` (B, k)."""
        for i, layer in enumerate(self.encoder):
            x = F.relu(layer(x))
            if i == 0:
                x = self.dropout(x)
        return x

    def decode(self, h: Tensor) -> Tensor:
        """The reconstruction ``x̂`` (B, D); an undecided ``"auto"`` output activation counts as identity."""
        last = len(self.decoder) - 1
        for i, layer in enumerate(self.decoder):
            h = layer(h)
            if i < last or int(self.decoder_output_relu) == _RELU:
                h = F.relu(h)
        return h

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.encode(x)
        return h, self.decode(h), self.head(h)

    def contributions(self, h: Tensor) -> Tensor:
        """Each concept's contribution ``h_j · W_{c,j}`` (B, n_out, k); summed over j plus the bias it is ŷ."""
        return h[:, None, :] * self.head.weight[None]
