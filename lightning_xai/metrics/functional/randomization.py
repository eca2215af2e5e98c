"""Cascading model-parameter randomisation (Adebayo et al., *Sanity Checks for Saliency Maps*, arXiv 1810.03292).

Defaults follow Quantus' ``MPRT``: absolute maps normalised by their maximum, compared with the Spearman rank
correlation and with SSIM in scikit-image's conventions, while the layers are re-initialised from the output
towards the input.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..._checks import (
    check_in_choices,
    check_inputs_on_model_device,
    check_tensor,
    describe,
)
from ...explain import preserved_state, require_grad_mode
from .._common import resolve_target, to_maps
from .similarity import _SIMILARITY_FNS

Similarity = Literal["spearman", "ssim"]
Order = Literal["top_down", "bottom_up"]
MapNormalization = Literal["max", "none"]
ExplainFn = Callable[[nn.Module, Tensor, Tensor], Any]

SIMILARITIES = ("spearman", "ssim")
ORIGINAL_KEY = "original"
LAST_KEY = "last"
ROOT_NAME = "model"

# --------------------------------------------------------------------------------------------------------------
# Layers


def _is_norm(module: nn.Module) -> bool:
    norm_types: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    if hasattr(nn, "RMSNorm"):
        norm_types = (*norm_types, nn.RMSNorm)
    # Library norm layers (timm, HF) that do not subclass torch's still carry "Norm" in their class name.
    return isinstance(module, norm_types) or "norm" in type(module).__name__.lower()


def _is_resettable(module: nn.Module, skip_norm_layers: bool) -> bool:
    owns_parameters = next(module.parameters(recurse=False), None) is not None
    resettable = callable(getattr(module, "reset_parameters", None))
    return owns_parameters and resettable and not (skip_norm_layers and _is_norm(module))


def _resettable_in(module: nn.Module, prefix: str, skip_norm_layers: bool) -> tuple[str, ...]:
    return tuple(
        name for name, sub in module.named_modules(prefix=prefix) if _is_resettable(sub, skip_norm_layers)
    )


def _display_name(name: str) -> str:
    return name if name else ROOT_NAME


def randomization_layers(
    model: nn.Module,
    layers: str | Sequence[str] | None = None,
    order: Order = "top_down",
    skip_norm_layers: bool = False,
) -> list[tuple[str, tuple[str, ...]]]:
    """The cascade of a :class:`ModelRandomizationCheck`: ``(step name, names of the modules it resets)``.

    ``layers=None`` takes every module that owns parameters and defines ``reset_parameters`` (normalisation
    layers included unless ``skip_norm_layers``); ``"blocks"`` takes the top-level blocks (the children of the
    model, looking through single-child wrappers) and resets every such module inside each; a list of module
    names takes those modules (each with every resettable module inside it). Steps follow ``named_modules``
    order, reversed for ``order="top_down"``.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> [name for name, _ in randomization_layers(model)]
        ['2', '0']
    """
    check_in_choices("order", order, ("top_down", "bottom_up"))
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {describe(model)}")
    if layers is None:
        steps = [(_display_name(n), (n,)) for n in _resettable_in(model, "", skip_norm_layers)]
    elif isinstance(layers, str):
        if layers != "blocks":
            raise ValueError(f"`layers` must be None, 'blocks' or a list of module names, got {layers!r}")
        root, root_name = model, ""
        # A wrapper (LightningModule holding `self.model`) has one child: its blocks are that child's.
        while next(root.parameters(recurse=False), None) is None:
            children = [(n, c) for n, c in root.named_children() if next(c.parameters(), None) is not None]
            if len(children) != 1:
                break
            name, root = children[0]
            root_name = f"{root_name}.{name}" if root_name else name
        steps = []
        if _is_resettable(root, skip_norm_layers):
            steps.append((_display_name(root_name), (root_name,)))
        for name, child in root.named_children():
            full = f"{root_name}.{name}" if root_name else name
            members = _resettable_in(child, full, skip_norm_layers)
            if members:
                steps.append((full, members))
    else:
        if not isinstance(layers, Sequence) or not all(isinstance(n, str) for n in layers):
            raise TypeError(
                f"`layers` must be None, 'blocks' or a list of module names, got {describe(layers)}"
            )
        modules = dict(model.named_modules())
        position = {name: i for i, name in enumerate(modules)}
        unknown = [n for n in layers if n not in modules]
        if unknown:
            raise ValueError(f"`layers` names modules the model does not have: {unknown}")
        steps = []
        for name in sorted(dict.fromkeys(layers), key=position.__getitem__):
            members = _resettable_in(modules[name], name, skip_norm_layers)
            if not members:
                raise ValueError(
                    f"`layers` entry {name!r} ({type(modules[name]).__name__}) holds no module that owns "
                    "parameters and defines `reset_parameters`"
                    + (
                        " (normalisation layers are skipped: skip_norm_layers=True)"
                        if skip_norm_layers
                        else ""
                    )
                )
            steps.append((_display_name(name), members))
    if not steps:
        raise ValueError(
            "`model` has no module that owns parameters and defines `reset_parameters`; nothing to randomise"
        )
    return steps[::-1] if order == "top_down" else steps


def _cpu_clone(module: nn.Module) -> nn.Module:
    # Pre-filled memo: deepcopy reuses these CPU tensors instead of copying every tensor on its device first.
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        cpu = tensor.detach().to("cpu", copy=True)
        memo[id(tensor)] = (
            nn.Parameter(cpu, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else cpu
        )
    return copy.deepcopy(module, memo)


@torch.no_grad()
def _reset_step(modules: dict[str, nn.Module], members: Sequence[str], seed: int) -> None:
    """Re-initialise ``members`` on CPU copies under a CPU generator seeded with ``seed``, then copy the values
    back to the module's device, so every device and rank draws the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        for name in members:
            module = modules[name]
            clone = _cpu_clone(module)
            clone.reset_parameters()
            if callable(getattr(clone, "reset_running_stats", None)):
                clone.reset_running_stats()
            fresh = dict(itertools.chain(clone.named_parameters(), clone.named_buffers()))
            for tensor_name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
                tensor.copy_(fresh[tensor_name])


class _SavedState:
    """Every parameter and buffer of a model on CPU, and its gradients detached, for an in-place run."""

    def __init__(self, model: nn.Module) -> None:
        self.tensors = [
            (t, t.detach().to("cpu", copy=True)) for t in itertools.chain(model.parameters(), model.buffers())
        ]
        self.grads = [(p, p.grad) for p in model.parameters()]
        for param in model.parameters():
            # Gradients an explainer accumulates must not land in the user's `.grad`.
            param.grad = None

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, saved in self.tensors:
            tensor.copy_(saved)
        for param, grad in self.grads:
            param.grad = grad


# --------------------------------------------------------------------------------------------------------------
# Update / compute


def _check_similarities(similarity: str | Sequence[str]) -> tuple[str, ...]:
    names = (similarity,) if isinstance(similarity, str) else tuple(similarity)
    if not names:
        raise ValueError("`similarity` must name at least one of ['spearman', 'ssim'], got an empty sequence")
    for name in names:
        check_in_choices("similarity", name, SIMILARITIES)
    return tuple(dict.fromkeys(names))


def _check_randomization_args(
    explain_fn: object, seed: object, normalize: str, channel_reduction: str
) -> None:
    if not callable(explain_fn):
        raise TypeError(
            f"`explain_fn` must be callable as explain_fn(model, inputs, target), got {describe(explain_fn)}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int, got {describe(seed)}")
    check_in_choices("normalize", normalize, ("max", "none"))
    check_in_choices("channel_reduction", channel_reduction, ("sum", "sum_abs", "max_abs"))


def _prepare_maps(
    attributions: object, *, use_abs: bool, normalize: str, channel_reduction: str, batch_size: int, step: str
) -> Tensor:
    if isinstance(attributions, (tuple, list)) and len(attributions) == 1:
        attributions = attributions[0]
    name = f"explain_fn output ({step})"
    if not isinstance(attributions, Tensor):
        raise TypeError(
            f"`explain_fn` must return an attribution tensor, got {describe(attributions)} at {step}"
        )
    maps = to_maps(attributions.detach(), channel_reduction, name=name)
    if maps.shape[0] != batch_size:
        raise ValueError(
            f"`explain_fn` must return one map per input ({batch_size}), got {describe(attributions)}"
        )
    if use_abs:
        maps = maps.abs()
    if normalize == "max":
        peak = maps.abs().amax((1, 2), keepdim=True)
        # An all-zero map stays zero rather than turning into NaN.
        maps = torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), maps)
    return maps


def _randomization_update(
    model: nn.Module,
    explain_fn: ExplainFn,
    inputs: Tensor,
    target: object,
    steps: Sequence[tuple[str, tuple[str, ...]]],
    *,
    similarities: Sequence[str],
    seed: int,
    use_abs: bool,
    normalize: str,
    channel_reduction: str,
    skip_layers: bool,
    inplace: bool,
    force_eval: bool,
) -> tuple[dict[str, Tensor], int]:
    """Run the cascade on one batch; return, per similarity, the sum over samples of each entry (original, then
    each scored step; with ``skip_layers`` only the fully randomised model), and the number of samples."""
    require_grad_mode("ModelRandomizationCheck (the explanations are recomputed on a randomised model)")
    check_tensor("inputs", inputs)
    if inputs.ndim == 0 or inputs.shape[0] == 0:
        raise ValueError(f"`inputs` must be a non-empty batch (B, ...), got {describe(inputs)}")
    check_inputs_on_model_device("inputs", inputs, model)
    batch = inputs.shape[0]

    def explain(work: nn.Module, targets: Tensor, step: str) -> Tensor:
        with torch.enable_grad():
            out = explain_fn(work, inputs, targets)
        return _prepare_maps(
            out,
            use_abs=use_abs,
            normalize=normalize,
            channel_reduction=channel_reduction,
            batch_size=batch,
            step=step,
        )

    rows: list[list[Tensor]] = [[] for _ in similarities]

    def score(reference: Tensor, maps: Tensor, step: str) -> None:
        if maps.shape != reference.shape:
            raise ValueError(
                f"`explain_fn` returned maps of shape {tuple(maps.shape)} at {step}, but {tuple(reference.shape)} "
                "on the trained model"
            )
        for row, name in zip(rows, similarities, strict=True):
            row.append(_SIMILARITY_FNS[name](reference, maps).sum())

    saved = _SavedState(model) if inplace else None
    try:
        # Everything runs on the working model, so whatever the explainer does (train-mode batch norm updating
        # its running statistics included) never reaches the user's weights.
        work = model if inplace else copy.deepcopy(model)
        modules = dict(work.named_modules())
        with preserved_state(work, eval_mode=force_eval):
            targets, _ = resolve_target(work, inputs, target)
            original = explain(work, targets, "the trained model")
            step = "the trained model, recomputed"
            score(original, explain(work, targets, step), step)
            for index, (name, members) in enumerate(steps, start=1):
                _reset_step(modules, members, seed + index)
                if not skip_layers or index == len(steps):
                    step = f"layer {name!r}"
                    score(original, explain(work, targets, step), step)
    finally:
        if saved is not None:
            saved.restore()
    # Results in the maps' precision (at least float32), whatever precision the similarities used.
    dtype = torch.promote_types(original.dtype, torch.float32)
    sums = {name: torch.stack(row).to(dtype) for name, row in zip(similarities, rows, strict=True)}
    return sums, batch


def _randomization_compute(
    sums: dict[str, Tensor], count: Tensor | int, entry_names: Sequence[str]
) -> dict[str, dict[str, Tensor]]:
    """Means per similarity and entry, plus ``"last"`` (the fully randomised model)."""
    out: dict[str, dict[str, Tensor]] = {}
    for similarity, total in sums.items():
        means = total / count
        values = dict(zip(entry_names, means.unbind(0), strict=True))
        values[LAST_KEY] = means[-1]
        out[similarity] = values
    return out


def _entry_names(steps: Sequence[tuple[str, tuple[str, ...]]], skip_layers: bool) -> list[str]:
    if skip_layers:
        return [ORIGINAL_KEY, LAST_KEY]
    return [ORIGINAL_KEY, *(name for name, _ in steps)]


def model_randomization_check(
    model: nn.Module,
    explain_fn: ExplainFn,
    inputs: Tensor,
    target: object = None,
    *,
    similarity: str | Sequence[str] = ("spearman", "ssim"),
    order: Order = "top_down",
    layers: str | Sequence[str] | None = None,
    seed: int = 42,
    abs: bool = True,
    normalize: MapNormalization = "max",
    skip_layers: bool = False,
    skip_norm_layers: bool = False,
    inplace: bool = False,
    channel_reduction: str = "sum",
    force_eval: bool = True,
) -> dict[str, dict[str, Tensor]]:
    """Cascading model-parameter randomisation check on one batch (see :class:`ModelRandomizationCheck`).

    Returns ``{similarity: {entry: mean over the batch}}``, the entries being ``"original"`` (the explanation
    recomputed on the trained model, ≈ 1), each randomised layer (or only ``"last"`` with ``skip_layers``),
    and ``"last"``.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics.functional import model_randomization_check
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
        ...                             torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))
        >>> def saliency(model, inputs, target):
        ...     inputs = inputs.clone().requires_grad_()
        ...     score = model(inputs).gather(1, target[:, None]).sum()
        ...     return torch.autograd.grad(score, inputs)[0] * inputs
        >>> result = model_randomization_check(model, saliency, torch.rand(2, 1, 8, 8), target=0)
        >>> list(result["spearman"])
        ['original', '3', '0', 'last']
        >>> round(result["spearman"]["original"].item(), 4)
        1.0
    """
    similarities = _check_similarities(similarity)
    _check_randomization_args(explain_fn, seed, normalize, channel_reduction)
    steps = randomization_layers(model, layers, order, skip_norm_layers)
    sums, count = _randomization_update(
        model,
        explain_fn,
        inputs,
        target,
        steps,
        similarities=similarities,
        seed=seed,
        use_abs=abs,
        normalize=normalize,
        channel_reduction=channel_reduction,
        skip_layers=skip_layers,
        inplace=inplace,
        force_eval=force_eval,
    )
    return _randomization_compute(sums, count, _entry_names(steps, skip_layers))
