"""LightningModule wrappers."""

from .classifier import ImageClassifier
from .mhex import MHEXClassifier

__all__ = ["ImageClassifier", "MHEXClassifier"]
