"""lightning_xai: explainable AI for PyTorch Lightning.

Training-time explanation methods as callbacks and modules, post-hoc methods as Captum attribution classes,
and explanation metrics as torchmetrics Metrics. Every public name is importable from here.
"""

from .data import IndexedDataset, ShapesDataModule, ShapesDataset, TokensDataModule, TokensDataset
from .explain import background_pgd, compose, gaussian_blur, grad_cam, make_baseline, preserved_state
from .models import LogitsForward, list_stages, logits_of, resolve_layer, tokens_to_grid

__version__ = "0.1.0.dev0"

__all__ = [
    "IndexedDataset",
    "LogitsForward",
    "ShapesDataModule",
    "ShapesDataset",
    "TokensDataModule",
    "TokensDataset",
    "__version__",
    "background_pgd",
    "compose",
    "gaussian_blur",
    "grad_cam",
    "list_stages",
    "logits_of",
    "make_baseline",
    "preserved_state",
    "resolve_layer",
    "tokens_to_grid",
]
