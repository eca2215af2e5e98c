"""Differentiable building blocks shared by methods, callbacks and metrics (no Lightning import here)."""

from .baselines import compose, constant_baseline, gaussian_blur, make_baseline, mean_baseline, upsample_mask
from .degenerate import UninformativeExplanationWarning, constant_rows, unchanged_rows, warn_uninformative
from .gradcam import grad_cam
from .hooks import ActivationTap, forward_hook
from .normalization import IMAGENET, Normalization, resolve_normalization
from .pgd import background_pgd
from .state import preserved_state, require_grad_mode, warn_if_training

__all__ = [
    "IMAGENET",
    "ActivationTap",
    "Normalization",
    "UninformativeExplanationWarning",
    "background_pgd",
    "compose",
    "constant_baseline",
    "constant_rows",
    "forward_hook",
    "gaussian_blur",
    "grad_cam",
    "make_baseline",
    "mean_baseline",
    "preserved_state",
    "require_grad_mode",
    "resolve_normalization",
    "unchanged_rows",
    "upsample_mask",
    "warn_if_training",
    "warn_uninformative",
]
