"""Captum-compatible post-hoc attribution methods."""

from .mhex import MHEXAttribution

__all__ = ["MHEXAttribution"]
