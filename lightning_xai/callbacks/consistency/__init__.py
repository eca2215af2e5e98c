"""Explanation-consistency reweighting (ECE, arXiv 2408.04600) as a callback for an unmodified Trainer script.

- ``callback``: :class:`ExplanationConsistencyReweighting`, its schedules and checkpoints;
- ``data``: where the scoring pass reads its samples;
- ``logs``: what is logged after each scoring.

The per-sample score, :func:`~lightning_xai.metrics.functional.score_consistency`, and the weights,
:func:`~lightning_xai.losses.consistency_weights`, live with the metrics and the losses; they are re-exported here.
"""

from ...losses import consistency_weights
from ...metrics.functional.background_consistency import (
    ConsistencyOptions,
    ConsistencyScores,
    score_consistency,
)
from .callback import ExplanationConsistencyReweighting

__all__ = [
    "ConsistencyOptions",
    "ConsistencyScores",
    "ExplanationConsistencyReweighting",
    "consistency_weights",
    "score_consistency",
]
