"""``inject_mhex`` (attaching the branches to a model by hooks), its handle and ``find_mhex``."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..._checks import check_in_choices, describe
from ...models import Stage
from ...models.layers import _unwrap
from .gates import GateCalibration, MHEXBranch
from .heads import GateMode, MHEXHeads
from .model_info import _special_ids_from_config, infer_num_classes
from .stages import _select_stages, _stage_kind

#: Attribute under which the heads are registered on the model.
MHEX_ATTR = "mhex_heads"

_DEFAULT_B0 = {"unit": 3.0, "none": 6.0}


class _StageHook:
    """Forward hook of one stage. A small object rather than a closure, so that ``copy.deepcopy`` of the model
    gives hooks that point at the copied heads."""

    def __init__(self, heads: MHEXHeads, key: str) -> None:
        self.heads = heads
        self.key = key

    def __call__(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        return self.heads._on_stage_output(self.key, output)


class MHEXHandle:
    """What :func:`inject_mhex` returns: the heads, their stages, and :meth:`remove`.

    Usable as a context manager that removes the heads on exit.
    """

    def __init__(self, model: nn.Module, heads: MHEXHeads, hooks: list[RemovableHandle], stages: list[Stage]):
        self.model = model
        self.heads = heads
        self.stages = stages
        self._hooks = hooks
        self.removed = False

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def head_logits(self) -> dict[str, Tensor]:
        """Head logits of the last forward, shallow to deep."""
        return dict(self.heads.head_logits)

    def equivalent_matrices(self) -> dict[str, Tensor]:
        return self.heads.equivalent_matrices()

    def saliency(self, target: Tensor, input_size: tuple[int, int] | None = None, **kwargs: Any) -> Tensor:
        return self.heads.saliency(target, input_size, **kwargs)

    def remove(self) -> None:
        """Remove the hooks and the ``mhex_heads`` submodule: the model is the original again."""
        if self.removed:
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if getattr(self.model, MHEX_ATTR, None) is self.heads:
            delattr(self.model, MHEX_ATTR)
        self.removed = True

    def __enter__(self) -> MHEXHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else "attached"
        return f"MHEXHandle({type(self.model).__name__}, stages={self.stage_names}, {state})"


def find_mhex(model: nn.Module) -> MHEXHeads | None:
    """The :class:`MHEXHeads` injected somewhere in ``model`` (None when there are none)."""
    if not isinstance(model, nn.Module):
        return None
    for module in model.modules():
        if isinstance(module, MHEXHeads):
            return module
    return None


def _check_refine(refine: bool | str) -> None:
    if not isinstance(refine, bool) and refine != "auto":
        raise ValueError(f"`refine` must be True, False or 'auto', got {refine!r}")


def inject_mhex(
    model: nn.Module,
    stages: str | Sequence[int | str] = "auto",
    num_classes: int | None = None,
    *,
    gate_mode: GateMode = "in_path",
    gate_calibration: GateCalibration = "unit",
    b0: float | None = None,
    gate_rank: int | None = 32,
    refine: bool | Literal["auto"] = "auto",
    refine_max_channels: int = 256,
    detach_heads: bool = False,
    special_token_ids: Sequence[int] | None = None,
) -> MHEXHandle:
    """Attach MHEX gates and heads to stages of a timm CNN / ViT, a torchvision ResNet or a HF BERT-like encoder.

    Args:
        model: the classifier (wrappers holding it as ``.model`` / ``.module`` are looked through).
        stages: ``"auto"`` (the last four ``feature_info`` stages of a CNN; four evenly spaced blocks ending at
            the last for a ViT or an encoder), or a list of stage indices / names of
            :func:`~lightning_xai.models.list_stages`.
        num_classes: K of the heads; read from the model when None.
        gate_mode: ``"in_path"`` (the backbone sees gated features) or ``"side_branch"`` (only the heads do;
            the main logits never change).
        gate_calibration: ``"unit"`` (``m = σ(z)/σ(b0)``, exactly 1 at injection) or ``"none"`` (``σ(z)``).
        b0: initial gate bias; 3.0 for ``"unit"``, 6.0 for ``"none"`` when None.
        gate_rank: rank r of ``W_g = U V`` (2Cr parameters instead of C²); None or ``r >= C`` is a full matrix.
        refine: learn ``W1`` (True), fix it to the identity (False), or ``"auto"``: learn it on stages with at
            most ``refine_max_channels`` channels.
        detach_heads: stop head gradients at the stage output (the backbone then learns from the main loss only).
        special_token_ids: token ids whose saliency is 0 (e.g. ``tokenizer.all_special_ids``); default: the
            ``pad/bos/eos/cls/sep/mask`` ids of the model's config.

    Returns:
        an :class:`MHEXHandle`; ``handle.remove()`` restores the original model.

    Example:
        >>> import timm, torch
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=4).eval()
        >>> x = torch.rand(2, 3, 32, 32)
        >>> before = model(x)
        >>> handle = inject_mhex(model)
        >>> bool((model(x) == before).all()), handle.stage_names
        (True, ['layer1', 'layer2', 'layer3', 'layer4'])
        >>> [tuple(z.shape) for z in handle.head_logits.values()]
        [(2, 4), (2, 4), (2, 4), (2, 4)]
        >>> handle.remove()
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {describe(model)}")
    check_in_choices("gate_mode", gate_mode, ("in_path", "side_branch"))
    check_in_choices("gate_calibration", gate_calibration, ("unit", "none"))
    _check_refine(refine)
    if gate_rank is not None and (
        isinstance(gate_rank, bool) or not isinstance(gate_rank, int) or gate_rank < 1
    ):
        raise ValueError(f"`gate_rank` must be None or a positive int, got {gate_rank!r}")
    if (
        isinstance(refine_max_channels, bool)
        or not isinstance(refine_max_channels, int)
        or refine_max_channels < 1
    ):
        raise ValueError(f"`refine_max_channels` must be a positive int, got {refine_max_channels!r}")
    if not isinstance(detach_heads, bool):
        raise TypeError(f"`detach_heads` must be a bool, got {describe(detach_heads)}")
    b0 = _DEFAULT_B0[gate_calibration] if b0 is None else b0
    if isinstance(b0, bool) or not isinstance(b0, (int, float)) or not math.isfinite(b0):
        raise ValueError(f"`b0` must be a finite number, got {b0!r}")

    inner = _unwrap(model)
    existing = find_mhex(inner)
    if existing is not None:
        raise ValueError(
            "the model already has MHEX heads; remove them first (`handle.remove()`) or reuse them"
        )
    if num_classes is None:
        num_classes = infer_num_classes(inner)
        if num_classes is None:
            raise ValueError(
                f"cannot read the number of classes of a {type(inner).__name__}; pass `num_classes=`"
            )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}")
    kind = _stage_kind(inner)
    chosen = _select_stages(inner, stages, kind)

    prefix_tokens = int(getattr(inner, "num_prefix_tokens", 0)) if kind == "vit" else 0
    grid_size = None
    patch_embed = getattr(inner, "patch_embed", None)
    if kind == "vit" and patch_embed is not None and getattr(patch_embed, "grid_size", None) is not None:
        grid_size = tuple(int(g) for g in patch_embed.grid_size)
    if special_token_ids is None:
        special_token_ids = _special_ids_from_config(inner) if kind == "tokens" else ()

    param = next((p for p in inner.parameters() if p.is_floating_point()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = torch.float64 if param is not None and param.dtype == torch.float64 else torch.float32
    branches = {}
    for stage in chosen:
        do_refine = refine if isinstance(refine, bool) else stage.channels <= refine_max_channels
        branches[stage.name.replace(".", "_")] = MHEXBranch(
            stage.name,
            kind,
            stage.channels,
            num_classes,
            gate_rank=gate_rank,
            b0=float(b0),
            gate_calibration=gate_calibration,
            refine=do_refine,
            prefix_tokens=prefix_tokens,
        )
    config = {
        "stages": [s.name for s in chosen],
        "num_classes": num_classes,
        "gate_mode": gate_mode,
        "gate_calibration": gate_calibration,
        "b0": float(b0),
        "gate_rank": gate_rank,
        "refine": refine,
        "refine_max_channels": refine_max_channels,
        "detach_heads": detach_heads,
    }
    heads = MHEXHeads(
        branches,
        kind=kind,
        gate_mode=gate_mode,
        detach_heads=detach_heads,
        num_classes=num_classes,
        special_token_ids=special_token_ids,
        grid_size=grid_size,
        config=config,
    ).to(device=device, dtype=dtype)
    if kind == "tokens":
        try:
            heads._root_signature = inspect.signature(inner.forward)
        except (TypeError, ValueError):
            heads._root_signature = None
    inner.add_module(MHEX_ATTR, heads)

    hooks = [
        inner.register_forward_pre_hook(heads._root_pre_hook, with_kwargs=True),
        inner.register_forward_hook(heads._root_post_hook),
        chosen[0].module.register_forward_pre_hook(heads._first_stage_pre_hook),
    ]
    hooks += [
        stage.module.register_forward_hook(_StageHook(heads, key))
        for key, stage in zip(branches, chosen, strict=True)
    ]
    return MHEXHandle(inner, heads, hooks, chosen)
