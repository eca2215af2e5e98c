"""Model state is sacred: everything an explanation touches is put back, also when an exception is raised."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# The per-module hook dictionaries of torch.nn.Module; anything added to them during a call is removed.
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


@contextmanager
def preserved_state(*objects: object, eval_mode: bool = False, buffers: bool = True) -> Iterator[None]:
    """Restore the ``training`` flags, parameters' ``requires_grad``, hooks and buffers of every module in
    ``objects``.

    Objects that are not modules (plain forward functions) are ignored. With ``eval_mode=True`` the modules
    are put in eval mode for the duration of the block. Buffers (BatchNorm's ``running_mean``,
    ``running_var`` and ``num_batches_tracked``, ...) are copied back, so that explaining a model in training mode
    does not fold the statistics of masked or perturbed images into it; ``buffers=False`` keeps what the block
    wrote (for blocks that train).

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 2).train()
        >>> with preserved_state(model, eval_mode=True):
        ...     model.training
        False
        >>> model.training
        True
    """
    modules = []
    seen: set[int] = set()
    for obj in objects:
        if isinstance(obj, nn.Module):
            for module in obj.modules():
                if id(module) not in seen:
                    seen.add(id(module))
                    modules.append(module)
    flags = [(m, m.training) for m in modules]
    params = [(p, p.requires_grad) for m in modules for p in m.parameters(recurse=False)]
    hooks = [(m, name, set(getattr(m, name, {}).keys())) for m in modules for name in _HOOK_DICTS]
    saved = (
        [(m, name, b.detach().clone()) for m in modules for name, b in m._buffers.items() if b is not None]
        if buffers
        else []
    )
    try:
        if eval_mode:
            for module in modules:
                module.training = False
        yield
    finally:
        for module, flag in flags:
            module.training = flag
        with torch.no_grad():
            for module, name, value in saved:
                current = module._buffers.get(name)
                if current is not None and current.shape == value.shape and current.dtype == value.dtype:
                    current.copy_(value)
                else:
                    module._buffers[name] = value
        for param, flag in params:
            param.requires_grad_(flag)
        for module, name, keys in hooks:
            registry = getattr(module, name, None)
            if registry is not None:
                for key in [k for k in registry if k not in keys]:
                    del registry[key]


def require_grad_mode(what: str) -> None:
    """Raise a clear error where gradients are impossible (inference mode, e.g. ``trainer.validate``)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{what} needs gradients, but it runs under torch.inference_mode (Lightning's validate/test/predict "
            "loops use it by default). Create the Trainer with `Trainer(inference_mode=False)` (in a "
            "LightningCLI YAML: `trainer: {inference_mode: false}`)."
        )


def warn_if_training(module: nn.Module | None, what: str) -> None:
    """Explanations of a model in training mode see dropout and batch statistics; say so, but leave it."""
    if module is not None and module.training:
        warnings.warn(
            f"{what}: the model is in training mode (dropout and batch-norm statistics change its output); "
            "call `model.eval()` first unless this is intended",
            UserWarning,
            stacklevel=3,
        )
