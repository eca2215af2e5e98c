"""Lightning callbacks, and the loss tap through which they change the loss of a module they do not own."""

from ..losses import LOSS_ATTRS, LossParts, LossTap, PerSampleLoss, SampleWeightedLossMixin, find_loss_tap
from .consistency import ExplanationConsistencyReweighting
from .explanation_metrics import ExplanationMetrics
from .mhex import MultiHeadExplainer
from .saliency import SaliencyMapLogger
from .writer import ExplanationWriter

__all__ = [
    "LOSS_ATTRS",
    "ExplanationConsistencyReweighting",
    "ExplanationMetrics",
    "ExplanationWriter",
    "LossParts",
    "LossTap",
    "MultiHeadExplainer",
    "PerSampleLoss",
    "SaliencyMapLogger",
    "SampleWeightedLossMixin",
    "find_loss_tap",
]
