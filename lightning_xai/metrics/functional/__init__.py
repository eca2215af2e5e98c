"""Functional forms of the explanation metrics: one call on one batch, same math as the ``Metric`` classes."""

from .avx import avx_score
from .background_consistency import ConsistencyOptions, ConsistencyScores, score_consistency
from .complexity import complexity, sparseness
from .confidence import average_drop, increase_in_confidence
from .consistency import explanation_consistency
from .faithfulness import deletion_auc, insertion_auc
from .localisation import energy_pointing_game, iou_auc, pointing_game
from .pxap import pixel_average_precision
from .randomization import model_randomization_check
from .similarity import spearman_similarity, ssim_similarity

__all__ = [
    "ConsistencyOptions",
    "ConsistencyScores",
    "average_drop",
    "avx_score",
    "complexity",
    "deletion_auc",
    "energy_pointing_game",
    "explanation_consistency",
    "increase_in_confidence",
    "insertion_auc",
    "iou_auc",
    "model_randomization_check",
    "pixel_average_precision",
    "pointing_game",
    "score_consistency",
    "sparseness",
    "spearman_similarity",
    "ssim_similarity",
]
