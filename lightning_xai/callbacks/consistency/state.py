"""What :class:`ExplanationConsistencyReweighting` keeps across a resume: the weight table and its schedule."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

#: The per-sample tables, on CPU, in the state dict.
TABLE_KEYS = ("v", "weights", "scored", "degenerate")


class WeightTableState:
    """``state_dict`` / ``load_state_dict`` of the callback's tables (``v``, ``weights``, ``scored``,
    ``degenerate``) and schedule; a checkpoint made with other settings (``config()``) warns at load."""

    v: Tensor | None
    degenerate: Tensor | None
    last_refresh_epoch: int | None
    n_refreshes: int
    batches_seen: int
    _weights_on: Tensor | None

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def degenerate_table(self, n: int) -> Tensor:
        """The samples whose last score was a degenerate map; none for a checkpoint of an earlier version."""
        return self.degenerate if self.degenerate is not None else torch.zeros(n, dtype=torch.bool)

    def state_dict(self) -> dict[str, Any]:
        return {
            **{key: None if (table := getattr(self, key)) is None else table.clone() for key in TABLE_KEYS},
            "N": None if self.v is None else int(self.v.numel()),
            "last_refresh_epoch": self.last_refresh_epoch,
            "n_refreshes": self.n_refreshes,
            "batches_seen": self.batches_seen,
            "config": self.config(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = dict(state_dict.get("config", {}))
        current = self.config()
        differ = sorted(k for k in current if k in saved and saved[k] != current[k])
        if differ:
            warnings.warn(
                f"ExplanationConsistencyReweighting: the checkpoint's weights were scored with other settings "
                f"({', '.join(f'{k}: {saved[k]!r} -> {current[k]!r}' for k in differ)}); they are kept until the "
                "next refresh",
                UserWarning,
                stacklevel=2,
            )
        for key in TABLE_KEYS:
            table = state_dict.get(key)
            setattr(self, key, None if table is None else table.detach().cpu().clone())
        self.last_refresh_epoch = state_dict.get("last_refresh_epoch")
        self.n_refreshes = int(state_dict.get("n_refreshes", 0))
        self.batches_seen = int(state_dict.get("batches_seen", 0))
        self._weights_on = None
