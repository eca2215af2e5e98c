"""Lightning callbacks, and the loss tap through which they change the loss of a module they do not own."""

from .loss_tap import LOSS_ATTRS, LossParts, LossTap, PerSampleLoss, SampleWeightedLossMixin, find_loss_tap
from .mhex import MultiHeadExplainer

__all__ = [
    "LOSS_ATTRS",
    "LossParts",
    "LossTap",
    "MultiHeadExplainer",
    "PerSampleLoss",
    "SampleWeightedLossMixin",
    "find_loss_tap",
]
