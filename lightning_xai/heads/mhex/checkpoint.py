"""MHEX heads in checkpoints: record where and how they were injected, and re-attach them before loading.

A module trained with :class:`~lightning_xai.callbacks.MultiHeadExplainer` carries the heads' weights in its
state dict (``model.mhex_heads.branches.layer1.gate.weight``, ...), which a freshly built module does not have.
The callback therefore records the heads under ``checkpoint["mhex"]`` (:func:`mhex_checkpoint_entry`), and
:func:`load_mhex_checkpoint` (used by ``lightning-xai explain --checkpoint``) injects them again before the
weights are loaded.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch import nn

from ..._checks import describe
from ...models import reserialise, safe_load
from .inject import MHEX_ATTR, MHEXHandle, find_mhex, inject_mhex
from .options import MHEXOptions

__all__ = [
    "MHEX_CHECKPOINT_KEY",
    "attach_mhex_from_checkpoint",
    "load_mhex_checkpoint",
    "mhex_checkpoint_entry",
]

#: The checkpoint entry that records the heads.
MHEX_CHECKPOINT_KEY = "mhex"
_FORMAT = 1


def mhex_checkpoint_entry(module: nn.Module) -> dict[str, Any] | None:
    """What :func:`attach_mhex_from_checkpoint` needs to inject the heads of ``module`` again: the submodule
    that holds them (``"model"``), their resolved :class:`~lightning_xai.heads.MHEXOptions` (stage names,
    number of classes) and the stage names; None when ``module`` has no heads."""
    heads = find_mhex(module)
    if heads is None:
        return None
    path = next(name for name, sub in module.named_modules() if sub is heads)
    owner = path.rpartition(".")[0]
    options = {**heads.config, "special_token_ids": list(heads.special_token_ids)}
    options.pop("lambdas", None)
    return {
        "format": _FORMAT,
        "model_path": owner,
        "options": options,
        "stages": list(heads.config["stages"]),
    }


def _mhex_keys(state_dict: dict[str, Any]) -> list[str]:
    return [key for key in state_dict if f"{MHEX_ATTR}." in key]


def attach_mhex_from_checkpoint(module: nn.Module, checkpoint: dict[str, Any]) -> MHEXHandle | None:
    """Inject into ``module`` the heads ``checkpoint`` records, so that its ``state_dict`` loads.

    Returns the handle, or None when there is nothing to do (no heads in the checkpoint, or ``module`` has
    them already). Raises RuntimeError, saying what to do, for a checkpoint whose state dict holds MHEX heads
    but that does not record how they were made (saved before lightning_xai recorded them).
    """
    if find_mhex(module) is not None:
        return None
    entry = checkpoint.get(MHEX_CHECKPOINT_KEY)
    keys = _mhex_keys(checkpoint.get("state_dict", {}))
    if entry is None:
        if not keys:
            return None
        raise RuntimeError(
            f"the checkpoint holds MHEX heads ({len(keys)} keys such as {keys[0]!r}) but does not record how "
            "they were made (it was saved before lightning_xai recorded checkpoint['mhex']), so "
            f"{type(module).__name__} cannot be given the same heads automatically. Attach them with the "
            "settings of the training run, then load the weights: `MultiHeadExplainer(<the same arguments>)"
            ".attach(module)` and `module.load_state_dict(lightning_xai.models.safe_load(path)"
            "['state_dict'])`; or resume the run once with this version (Trainer.fit(..., ckpt_path=path) "
            "with the MultiHeadExplainer callback) and save a new checkpoint, which records them."
        )
    if entry.get("format") != _FORMAT:
        raise RuntimeError(f"unknown checkpoint['mhex'] format {entry.get('format')!r}; expected {_FORMAT}")
    owner = entry["model_path"]
    try:
        target = module.get_submodule(owner) if owner else module
    except AttributeError as error:
        raise RuntimeError(
            f"the checkpoint's MHEX heads belong to the submodule {owner!r}, which "
            f"{type(module).__name__} does not have: {error}"
        ) from None
    options = dict(entry["options"])
    options["stages"] = tuple(options["stages"])
    return inject_mhex(target, options=MHEXOptions(**options))


def load_mhex_checkpoint(
    module_or_class: nn.Module | type,
    path: str | Path,
    *,
    map_location: Any = "cpu",
    strict: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Load a checkpoint of a module trained with :class:`~lightning_xai.callbacks.MultiHeadExplainer`: the
    heads it records are injected first, then every weight is loaded (``strict`` by default).

    Args:
        module_or_class: a module to load into, or a LightningModule class, built as
            ``cls.load_from_checkpoint(path, **kwargs)`` does (from the saved hyperparameters).
        path: the checkpoint.
        map_location: as for ``torch.load``.
        strict: load the state dict strictly.

    The file is read with :func:`~lightning_xai.models.safe_load` (``weights_only=True``): a checkpoint that holds
    classes or functions raises :class:`~lightning_xai.models.UnsafeCheckpointError` and none of its code runs.
    A checkpoint without heads loads as usual. Returns the module (in the mode it was built in). A
    weights-only checkpoint (``save_weights_only=True``) does not run the callback's hook and so records no
    heads: the error then says how to load it.

    Example:
        >>> import lightning as L, tempfile, torch
        >>> from lightning_xai.callbacks import MultiHeadExplainer
        >>> from lightning_xai.modules import ImageClassifier
        >>> trained = ImageClassifier("resnet18", num_classes=4)
        >>> callback = MultiHeadExplainer()
        >>> _ = callback.attach(trained)  # as training with the callback does
        >>> trainer = L.Trainer(logger=False, enable_checkpointing=False, callbacks=[callback])
        >>> trainer.strategy.connect(trained)
        >>> path = tempfile.mkdtemp() + "/mhex.ckpt"
        >>> trainer.save_checkpoint(path)
        >>> module = load_mhex_checkpoint(ImageClassifier, path)
        >>> sorted(module.model.mhex_heads.branches)
        ['layer1', 'layer2', 'layer3', 'layer4']
    """
    checkpoint = safe_load(path, map_location=map_location)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict' entry)")
    if isinstance(module_or_class, nn.Module):
        module = module_or_class
    elif isinstance(module_or_class, type) and hasattr(module_or_class, "load_from_checkpoint"):
        with warnings.catch_warnings():
            # the heads' keys are not in the fresh module yet: they are loaded strictly below
            warnings.filterwarnings("ignore", "Found keys that are not in the model state dict")
            # Lightning reads the file again, with its own weights_only default (unsafe on older PyTorch):
            # it is given what the safe load already rebuilt, never the file.
            module = module_or_class.load_from_checkpoint(
                reserialise(checkpoint), map_location=map_location, strict=False, **kwargs
            )
    else:
        raise TypeError(
            f"`module_or_class` must be an nn.Module or a LightningModule class, got {describe(module_or_class)}"
        )
    attach_mhex_from_checkpoint(module, checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=strict)
    return module
