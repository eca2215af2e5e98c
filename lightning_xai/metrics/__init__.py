"""Explanation metrics as torchmetrics ``Metric`` classes (functional forms in ``lightning_xai.metrics.functional``).

- Faithfulness (need a forward function): :class:`DeletionAUC`, :class:`InsertionAUC`, :class:`AverageDrop`,
  :class:`IncreaseInConfidence`.
- Localisation (need ground-truth masks): :class:`PointingGame`, :class:`EnergyPointingGame`, :class:`IoUAUC`,
  :class:`PixelAveragePrecision`.
- Complexity: :class:`Sparseness`, :class:`Complexity`.
- Consistency of two explanations: :class:`ExplanationConsistency`.
- ADVISE's protocol: :class:`AVX`.
- Sanity: :class:`ModelRandomizationCheck`.
"""

from .avx import AVX
from .complexity import Complexity, Sparseness
from .consistency import ExplanationConsistency
from .faithfulness import AverageDrop, DeletionAUC, IncreaseInConfidence, InsertionAUC
from .localisation import EnergyPointingGame, IoUAUC, PixelAveragePrecision, PointingGame
from .randomization import ModelRandomizationCheck

__all__ = [
    "AVX",
    "AverageDrop",
    "Complexity",
    "DeletionAUC",
    "EnergyPointingGame",
    "ExplanationConsistency",
    "IncreaseInConfidence",
    "InsertionAUC",
    "IoUAUC",
    "ModelRandomizationCheck",
    "PixelAveragePrecision",
    "PointingGame",
    "Sparseness",
]
