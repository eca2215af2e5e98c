"""The demo: train models on biased synthetic shapes with and without the library's training-time methods,
explain them with every method of the library, score the explanations, and write one HTML report
(``lightning-xai demo``; ``--real`` adds the pretrained model on real photos)."""

from .config import METHODS, REAL_METHOD_SETTINGS, DemoConfig
from .run import run_demo

__all__ = ["METHODS", "REAL_METHOD_SETTINGS", "DemoConfig", "run_demo"]
