"""Captum-compatible post-hoc attribution methods."""

from .advise import ADVISE, ADVISEDetails
from .comet import SelectorAttribution
from .igos import IGOS, IGOSPlusPlus
from .mhex import MHEXAttribution
from .sag import SAG, StructuredAttentionGraph
from .xnn import XNNConceptAttribution

__all__ = [
    "ADVISE",
    "IGOS",
    "SAG",
    "ADVISEDetails",
    "IGOSPlusPlus",
    "MHEXAttribution",
    "SelectorAttribution",
    "StructuredAttentionGraph",
    "XNNConceptAttribution",
]
