"""What :class:`ExplanationConsistencyReweighting` logs after each scoring: the mean consistency, quantiles of
the weights, the clipped and degenerate counts, and a weight histogram where the logger can show one."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor


def log_weights(
    callback: Any,
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    mean_v: float,
    weights: Tensor,
    clipped: Tensor,
    n_degenerate: float,
    n_scored: int,
    on_step: bool,
) -> None:
    if getattr(pl_module, "_trainer", None) is None or not weights.numel():
        return
    w = weights.detach().float().cpu()
    quantiles = torch.quantile(w, torch.tensor([0.05, 0.5, 0.95]))
    metrics = {
        "ece/consistency": 1.0 - mean_v,
        "ece/inconsistency": mean_v,
        "ece/weight_p05": float(quantiles[0]),
        "ece/weight_p50": float(quantiles[1]),
        "ece/weight_p95": float(quantiles[2]),
        "ece/clipped_fraction": float(clipped),
        "ece/n_degenerate": n_degenerate,
        "ece/n_scored": float(n_scored),
    }
    # Logged on every rank from rank-identical values (the table, or all-reduced batch sums for the means);
    # loggers write from rank 0, and nothing here is a collective.
    for name, value in metrics.items():
        pl_module.log(name, value, on_step=on_step, on_epoch=not on_step, batch_size=1, rank_zero_only=True)
    if not callback.log_histogram or not trainer.is_global_zero:
        return
    if on_step and trainer.global_step % max(1, trainer.log_every_n_steps):
        return
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if callable(getattr(experiment, "add_histogram", None)):
            experiment.add_histogram("ece/weights", w, global_step=trainer.global_step)
