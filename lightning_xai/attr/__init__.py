"""Captum-compatible post-hoc attribution methods."""

from .advise import ADVISE, ADVISEDetails
from .comet import SelectorAttribution
from .igos import IGOS, IGOSOptions, IGOSPlusPlus, IGOSPlusPlusOptions
from .mhex import MHEXAttribution
from .sag import SAGResult, StructuredAttentionGraph
from .xnn import XNNConceptAttribution

__all__ = [
    "ADVISE",
    "IGOS",
    "ADVISEDetails",
    "IGOSOptions",
    "IGOSPlusPlus",
    "IGOSPlusPlusOptions",
    "MHEXAttribution",
    "SAGResult",
    "SelectorAttribution",
    "StructuredAttentionGraph",
    "XNNConceptAttribution",
]


def __getattr__(name: str) -> object:
    if name == "SAG":  # the SAG result's earlier name (deprecated)
        from . import sag

        return sag.SAG
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
