"""``inject_mhex`` (attaching the branches to a model by hooks), its handle and ``find_mhex``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..._checks import check_int, describe
from ...models import Stage
from ...models.layers import _unwrap
from .gates import GateCalibration, MHEXBranch
from .heads import GateMode, MHEXHeads
from .model_info import _special_ids_from_config, infer_num_classes
from .options import MHEXOptions
from .stages import _select_stages, _stage_kind

_DEFAULTS = {field: getattr(MHEXOptions, field) for field in MHEXOptions.__dataclass_fields__}

#: Attribute under which the heads are registered on the model.
MHEX_ATTR = "mhex_heads"


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
    options: MHEXOptions | None = None,
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
        options: all of the above as one :class:`~lightning_xai.heads.MHEXOptions` (then pass none of them).

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
    given = {
        "stages": stages,
        "num_classes": num_classes,
        "gate_mode": gate_mode,
        "gate_calibration": gate_calibration,
        "b0": b0,
        "gate_rank": gate_rank,
        "refine": refine,
        "refine_max_channels": refine_max_channels,
        "detach_heads": detach_heads,
        "special_token_ids": special_token_ids,
    }
    if options is None:
        options = MHEXOptions(**given)
    elif not isinstance(options, MHEXOptions):
        raise TypeError(f"`options` must be an MHEXOptions or None, got {describe(options)}")
    elif any(value != _DEFAULTS[name] for name, value in given.items()):
        raise ValueError("pass the settings either as `options=` or as keyword arguments, not both")
    stages, num_classes, gate_mode = options.stages, options.num_classes, options.gate_mode
    gate_calibration, b0, gate_rank, refine = (
        options.gate_calibration,
        options.b0,
        options.gate_rank,
        options.refine,
    )
    refine_max_channels, detach_heads = options.refine_max_channels, options.detach_heads
    special_token_ids = options.special_token_ids

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
    check_int("num_classes", num_classes, 1)
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
    dtype = param.dtype if param is not None else torch.float32  # the heads in the model's precision
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
    config = {**options.to_config(), "stages": [s.name for s in chosen], "num_classes": num_classes}
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
