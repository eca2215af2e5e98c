"""XNN: concept explanations with a sparse reconstruction autoencoder on a frozen network (spec: ``docs/methods/xnn.md``).

An explanation network embeds a layer's high-dimensional features ``x`` into a few non-negative concepts
``h = encoder(x)`` (the x-features of Qi, Khorram and Li, arXiv 1709.05360) that still reproduce the class score
(``ŷ = W h + b``), reconstruct part of the features (a log penalty tolerates large errors on some dimensions)
and are pushed apart (the pull-away term). The backbone stays frozen: only the explanation network trains.

The losses are plain functions (:func:`sparse_reconstruction_loss`, :func:`pull_away_term`,
:func:`prediction_loss`); :class:`XNNNetwork` is the encoder / decoder / head; :class:`XNN` is the
LightningModule that trains it on a frozen backbone's features; :func:`fit_xnn` is the retry heuristic for
degenerate concepts.
"""

from .concepts import ConceptModel
from .concepts import pool_features as pool_features
from .fit import balance_check, fit_xnn
from .losses import PullAwayMode as PullAwayMode
from .losses import prediction_loss, pull_away_term, sparse_reconstruction_loss
from .module import XNN
from .network import DecoderActivation as DecoderActivation
from .network import XNNNetwork

__all__ = [
    "XNN",
    "ConceptModel",
    "XNNNetwork",
    "balance_check",
    "fit_xnn",
    "prediction_loss",
    "pull_away_term",
    "sparse_reconstruction_loss",
]
