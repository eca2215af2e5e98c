"""COMET (Comprehensive Attribution with a feature detector): the LightningModule and its networks.

- ``module``: :class:`ComprehensiveAttribution`, the selector–predictor–detector training;
- ``networks``: the selectors and :func:`train_detector`.

:class:`~lightning_xai.attr.SelectorAttribution` reads a trained selector's mask as a Captum attribution.
"""

from .module import ComprehensiveAttribution
from .networks import build_selector, small_selector, train_detector

__all__ = ["ComprehensiveAttribution", "build_selector", "small_selector", "train_detector"]
