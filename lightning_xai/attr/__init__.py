"""Captum-compatible post-hoc attribution methods."""

from .igos import IGOS, IGOSPlusPlus
from .mhex import MHEXAttribution

__all__ = ["IGOS", "IGOSPlusPlus", "MHEXAttribution"]
