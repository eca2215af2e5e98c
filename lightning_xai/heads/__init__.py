"""Modules injected into backbones: MHEX attention gates and deep-supervision heads."""

from .mhex import (
    MHEX_ATTR,
    AttentionGate,
    MHEXBranch,
    MHEXHandle,
    MHEXHead,
    MHEXHeads,
    MHEXOptions,
    find_mhex,
    infer_num_classes,
    inject_mhex,
    load_mhex_checkpoint,
)

__all__ = [
    "MHEX_ATTR",
    "AttentionGate",
    "MHEXBranch",
    "MHEXHandle",
    "MHEXHead",
    "MHEXHeads",
    "MHEXOptions",
    "find_mhex",
    "infer_num_classes",
    "inject_mhex",
    "load_mhex_checkpoint",
]
