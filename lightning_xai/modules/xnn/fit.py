"""The retry heuristic: train XNNs until no single concept carries the prediction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor

from ..._checks import check_int, check_number, describe
from .module import XNN

__all__ = ["balance_check", "fit_xnn"]


def balance_check(mean_contribution: Tensor, min_positive: int = 2, min_ratio: float = 0.3) -> bool:
    """Whether no single concept carries the prediction: for every head, with the mean contributions sorted in
    descending order ``m_(1) ≥ m_(2) ≥ …``, at least ``min_positive`` are > 0, ``m_(1) > 0`` and
    ``m_(2) / m_(1) ≥ min_ratio``.

    Example:
        >>> import torch
        >>> balance_check(torch.tensor([[1.0, 0.5, -0.2]])), balance_check(torch.tensor([[1.0, 0.1, 0.0]]))
        (True, False)
    """
    m = torch.as_tensor(mean_contribution, dtype=torch.float64)
    if m.ndim == 1:
        m = m[None]
    for row in m:
        ordered = row.sort(descending=True).values
        if ordered[0] <= 0 or int((row > 0).sum()) < min_positive:
            return False
        if ordered.numel() < 2 or ordered[1] / ordered[0] < min_ratio:
            return False
    return True


def fit_xnn(
    module_factory: Callable[..., XNN],
    trainer_factory: Callable[[], L.Trainer],
    datamodule: L.LightningDataModule | None = None,
    max_attempts: int = 5,
    min_positive: int = 2,
    min_ratio: float = 0.3,
    recon_growth: float = 1.2,
    pt_decay: float = 0.8,
    *,
    alpha_rec: float = 10.0,
    alpha_pt: float = 10.0,
    **fit_kwargs: Any,
) -> tuple[XNN, list[dict[str, Any]]]:
    """Train XNNs until one passes :func:`balance_check`, as in the reference (up to ``max_attempts``).

    Attempt ``t`` (0-based) calls ``module_factory(alpha_rec=alpha_rec·recon_growth^t, alpha_pt=alpha_pt·pt_decay^t)``
    and ``trainer_factory()``, fits from scratch (pretraining included) and checks the module's
    ``mean_contribution``. Returns the first module that passes, otherwise the last one, and the attempt log
    (one dict per attempt: ``attempt``, ``alpha_rec``, ``alpha_pt``, ``mean_contribution``, ``passed``).
    ``fit_kwargs`` go to ``trainer.fit`` (e.g. ``train_dataloaders=``).
    """
    check_int("max_attempts", max_attempts, 1)
    check_int("min_positive", min_positive, 1)
    check_number("min_ratio", min_ratio)
    check_number("recon_growth", recon_growth, strict=True)
    check_number("pt_decay", pt_decay, strict=True)
    log: list[dict[str, Any]] = []
    module = None
    for attempt in range(max_attempts):
        rec, pt = alpha_rec * recon_growth**attempt, alpha_pt * pt_decay**attempt
        module = module_factory(alpha_rec=rec, alpha_pt=pt)
        if not isinstance(module, XNN):
            raise TypeError(f"`module_factory` must return an XNN, got {describe(module)}")
        trainer = trainer_factory()
        if datamodule is not None:
            fit_kwargs = {**fit_kwargs, "datamodule": datamodule}
        trainer.fit(module, **fit_kwargs)
        mean = module.mean_contribution.detach().cpu().clone()
        passed = balance_check(mean, min_positive, min_ratio)
        log.append(
            {
                "attempt": attempt,
                "alpha_rec": rec,
                "alpha_pt": pt,
                "mean_contribution": mean,
                "passed": passed,
            }
        )
        if passed:
            break
    assert module is not None
    return module, log
