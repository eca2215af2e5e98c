"""lightning_xai: explainable AI for PyTorch Lightning.

Training-time explanation methods as callbacks and modules, post-hoc methods as Captum attribution classes,
and explanation metrics as torchmetrics Metrics. Every public name is importable from here.
"""

from .attr import (
    ADVISE,
    IGOS,
    IGOSOptions,
    IGOSPlusPlus,
    IGOSPlusPlusOptions,
    MHEXAttribution,
    SAGResult,
    SelectorAttribution,
    StructuredAttentionGraph,
    XNNConceptAttribution,
)
from .callbacks import (
    ExplanationConsistencyReweighting,
    ExplanationMetrics,
    ExplanationWriter,
    LossTap,
    MultiHeadExplainer,
    SaliencyMapLogger,
    SampleWeightedLossMixin,
)
from .data import (
    ImageFolderDataset,
    IndexedDataset,
    ShapesDataModule,
    ShapesDataset,
    TokensDataModule,
    TokensDataset,
)
from .explain import (
    Normalization,
    background_pgd,
    compose,
    gaussian_blur,
    grad_cam,
    make_baseline,
    preserved_state,
)
from .heads import inject_mhex
from .models import LogitsForward, list_stages, logits_of, resolve_layer, small_resnet, tokens_to_grid
from .modules import XNN, ComprehensiveAttribution, Explainer, ImageClassifier, MHEXClassifier
from .viz import HTMLReport

__version__ = "0.1.0.dev0"

__all__ = [
    "ADVISE",
    "IGOS",
    "XNN",
    "ComprehensiveAttribution",
    "Explainer",
    "ExplanationConsistencyReweighting",
    "ExplanationMetrics",
    "ExplanationWriter",
    "HTMLReport",
    "IGOSOptions",
    "IGOSPlusPlus",
    "IGOSPlusPlusOptions",
    "ImageClassifier",
    "ImageFolderDataset",
    "IndexedDataset",
    "LogitsForward",
    "LossTap",
    "MHEXAttribution",
    "MHEXClassifier",
    "MultiHeadExplainer",
    "Normalization",
    "SAGResult",
    "SaliencyMapLogger",
    "SampleWeightedLossMixin",
    "SelectorAttribution",
    "ShapesDataModule",
    "ShapesDataset",
    "StructuredAttentionGraph",
    "TokensDataModule",
    "TokensDataset",
    "XNNConceptAttribution",
    "__version__",
    "background_pgd",
    "compose",
    "gaussian_blur",
    "grad_cam",
    "inject_mhex",
    "list_stages",
    "logits_of",
    "make_baseline",
    "preserved_state",
    "resolve_layer",
    "small_resnet",
    "tokens_to_grid",
]


def __getattr__(name: str) -> object:
    if name == "SAG":  # the SAG result's earlier name (deprecated)
        from .attr import sag

        return sag.SAG
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
