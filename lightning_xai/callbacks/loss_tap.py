"""Deprecated location of the loss tap: it lives in :mod:`lightning_xai.losses` (below both the modules and the
callbacks that use it). The names keep working from here, with a ``DeprecationWarning``."""

from .. import losses
from .._deprecation import warn_deprecated
from ..losses import *  # noqa: F403 - the deprecated module re-exports every name of its new home

__all__ = losses.__all__

warn_deprecated("lightning_xai.callbacks.loss_tap", "lightning_xai.losses", stacklevel=2)
