"""LightningModule wrappers."""

from .classifier import ImageClassifier
from .comet import ComprehensiveAttribution, small_selector, train_detector
from .explainer import Explainer
from .mhex import MHEXClassifier
from .xnn import XNN, fit_xnn

__all__ = [
    "XNN",
    "ComprehensiveAttribution",
    "Explainer",
    "ImageClassifier",
    "MHEXClassifier",
    "fit_xnn",
    "small_selector",
    "train_detector",
]
