"""MHEX (lightning_xai reconstruction): attention gates, deep-supervision heads and equivalent-matrix saliency.

:func:`inject_mhex` attaches one :class:`MHEXBranch` (an :class:`AttentionGate` and an :class:`MHEXHead`) to
each chosen stage of a timm CNN, a timm ViT or a Hugging Face BERT-like encoder through forward hooks, and
returns an :class:`MHEXHandle` that removes them again. The branches live in one :class:`MHEXHeads` module
registered on the model as ``mhex_heads``, so optimisers, ``state_dict`` and ``.to()`` see them.

This is our reconstruction of *Multi-Head Explainer* (Sun and Liò, arXiv 2501.01311): the paper's exact formulas
were not available, see the method notes for what is ours.
"""

from .checkpoint import (
    MHEX_CHECKPOINT_KEY,
    attach_mhex_from_checkpoint,
    load_mhex_checkpoint,
    mhex_checkpoint_entry,
)
from .gates import AttentionGate, GateCalibration, MHEXBranch, MHEXHead
from .heads import GateMode, LayerWeights, MHEXHeads
from .inject import MHEX_ATTR, MHEXHandle, find_mhex, inject_mhex
from .model_info import infer_num_classes
from .options import MHEXOptions
from .stages import StageKind
from .training import check_lambdas, head_accuracy, lambda_list

__all__ = [
    "MHEX_ATTR",
    "MHEX_CHECKPOINT_KEY",
    "AttentionGate",
    "GateCalibration",
    "GateMode",
    "LayerWeights",
    "MHEXBranch",
    "MHEXHandle",
    "MHEXHead",
    "MHEXHeads",
    "MHEXOptions",
    "StageKind",
    "attach_mhex_from_checkpoint",
    "check_lambdas",
    "find_mhex",
    "head_accuracy",
    "infer_num_classes",
    "inject_mhex",
    "lambda_list",
    "load_mhex_checkpoint",
    "mhex_checkpoint_entry",
]
