"""Captum-compatible post-hoc attribution methods."""

from .advise import ADVISE, ADVISEDetails
from .comet import SelectorAttribution
from .igos import IGOS, IGOSOptions, IGOSPlusPlus, IGOSPlusPlusOptions
from .mhex import MHEXAttribution
from .sag import SAG, StructuredAttentionGraph
from .xnn import XNNConceptAttribution

__all__ = [
    "ADVISE",
    "IGOS",
    "SAG",
    "ADVISEDetails",
    "IGOSOptions",
    "IGOSPlusPlus",
    "IGOSPlusPlusOptions",
    "MHEXAttribution",
    "SelectorAttribution",
    "StructuredAttentionGraph",
    "XNNConceptAttribution",
]
