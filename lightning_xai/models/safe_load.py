"""Read checkpoints and weight files without running code from them.

A full unpickling load rebuilds whatever objects the file names, so a crafted checkpoint runs its code while it is
read. Every file the library reads goes through :func:`safe_load`, which only rebuilds tensors and
plain containers (``weights_only=True``), and turns the refusal into an error that names what the file holds
instead of PyTorch's, which suggests the unsafe form.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["UnsafeCheckpointError", "reserialise", "safe_load"]

# How the unpickler names a global it refuses ("Unsupported global: GLOBAL io.open was not an allowed global",
# "Trying to load unsupported GLOBAL posix.system whose module posix is blocked").
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class UnsafeCheckpointError(ValueError):
    """A checkpoint or weights file holds objects that a weights-only load does not rebuild (classes,
    functions): it was refused without running any of its code."""


def _refused_names(message: str) -> list[str]:
    return list(dict.fromkeys(_GLOBAL.findall(message)))


def safe_load(file: str | Path | IO[bytes], *, map_location: Any = "cpu") -> Any:
    """``torch.load(file, map_location, weights_only=True)``: tensors, numbers, strings and containers only.

    A file that holds anything else (a pickled class instance, a function: what a crafted checkpoint uses to run
    code) raises :class:`UnsafeCheckpointError` naming the objects, and nothing of it is executed. There is no
    switch to load such a file: re-save its state dict (``torch.save(module.state_dict(), path)``) from the
    code that made it, or, for a Lightning checkpoint, keep only plain values in ``save_hyperparameters``.

    Example:
        >>> import tempfile, torch
        >>> path = tempfile.mkdtemp() + "/w.pt"
        >>> torch.save({"weight": torch.ones(2), "epoch": 3}, path)
        >>> safe_load(path)["epoch"]
        3
    """
    name = str(file) if isinstance(file, (str, Path)) else "the checkpoint"
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_names(str(error))
        what = ", ".join(refused) if refused else "a class or function"
        raise UnsafeCheckpointError(
            f"{name} holds objects that are not allowed in a weights-only load ({what}): it was refused and "
            "none of its code ran. lightning_xai reads only tensors, numbers, strings, lists and dicts from "
            "checkpoints; re-save the weights as a plain state dict (torch.save(module.state_dict(), path)) "
            "with the code that made the file, or keep only plain values in the module's hyperparameters"
        ) from None


def reserialise(checkpoint: Any) -> io.BytesIO:
    """``checkpoint`` (already read by :func:`safe_load`) as an in-memory file, for loaders that insist on
    reading a file themselves: it holds only what a weights-only load rebuilt, so reading it again is safe
    whatever ``weights_only`` default the reader's PyTorch has."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return buffer
