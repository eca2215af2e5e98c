"""MHEX (lightning_xai reconstruction): attention gates, deep-supervision heads and equivalent-matrix saliency.

:func:`inject_mhex` attaches one :class:`MHEXBranch` (an :class:`AttentionGate` and an :class:`MHEXHead`) to
each chosen stage of a timm CNN, a timm ViT or a Hugging Face BERT-like encoder through forward hooks, and
returns an :class:`MHEXHandle` that removes them again. The branches live in one :class:`MHEXHeads` module
registered on the model as ``mhex_heads``, so optimisers, ``state_dict`` and ``.to()`` see them.

This is our reconstruction of *Multi-Head Explainer* (Sun and Liò, arXiv 2501.01311): the paper's exact formulas
were not available, see the method notes for what is ours.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._checks import check_in_choices, check_positive, describe
from ..models import Stage, list_stages, logits_of
from ..models.layers import _is_hf, _is_torchvision_resnet, _timm_feature_info, _unwrap

__all__ = [
    "MHEX_ATTR",
    "AttentionGate",
    "MHEXBranch",
    "MHEXHandle",
    "MHEXHead",
    "MHEXHeads",
    "check_lambdas",
    "find_mhex",
    "head_accuracy",
    "infer_num_classes",
    "inject_mhex",
    "lambda_list",
]

GateMode = Literal["in_path", "side_branch"]
GateCalibration = Literal["unit", "none"]
StageKind = Literal["grid", "vit", "tokens"]
LayerWeights = Literal["uniform", "inverse_depth"] | Sequence[float]

#: Attribute under which the heads are registered on the model.
MHEX_ATTR = "mhex_heads"

_DEFAULT_B0 = {"unit": 3.0, "none": 6.0}
_AUTO_STAGES = 4
_RUNTIME_STATE = (
    "forward_id",
    "head_logits",
    "record_ids",
    "batch_size",
    "consumed_id",
    "captured",
    "capture",
    "_pending_tokens",
    "pool_mask",
    "token_ids",
    "_logits_refs",
)
_SPECIAL_TOKEN_ATTRS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "cls_token_id",
    "sep_token_id",
    "mask_token_id",
)


class AttentionGate(nn.Module):
    """Channel gate ``m = σ(W_g p + b_g) / σ(b0)`` on the pooled stage output ``p`` (B, C).

    At construction ``W_g = 0`` and ``b_g = b0``, so with ``calibration="unit"`` the multiplier is exactly 1
    (the model is unchanged) and lies in (0, 1/σ(b0)) afterwards; ``calibration="none"`` is the plain
    ``m = σ(z)``. ``rank=r < C`` factorises ``W_g = U V`` with ``U = 0`` at construction (so the identity holds;
    ``V`` receives gradient from the second step on).

    Example:
        >>> import torch
        >>> gate = AttentionGate(8, rank=2)
        >>> bool((gate(torch.randn(3, 8)) == 1).all())
        True
    """

    def __init__(
        self, channels: int, rank: int | None = None, b0: float = 3.0, calibration: GateCalibration = "unit"
    ) -> None:
        super().__init__()
        check_in_choices("calibration", calibration, ("unit", "none"))
        self.channels = channels
        self.calibration = calibration
        self.b0 = float(b0)
        if rank is None or rank >= channels:
            self.weight = nn.Parameter(torch.zeros(channels, channels))
            self.up = self.down = None
            self.rank = None
        else:
            self.weight = None
            self.down = nn.Parameter(torch.randn(rank, channels) / math.sqrt(channels))
            self.up = nn.Parameter(torch.zeros(channels, rank))
            self.rank = rank
        self.bias = nn.Parameter(torch.full((channels,), self.b0))

    def pre_activation(self, pooled: Tensor) -> Tensor:
        if self.weight is not None:
            return F.linear(pooled, self.weight, self.bias)
        return F.linear(F.linear(pooled, self.down), self.up, self.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        z = self.pre_activation(pooled)
        m = torch.sigmoid(z)
        if self.calibration == "unit":
            # The same kernel on the same shape as `z`: at W_g = 0 the ratio is exactly 1, element by element.
            m = m / torch.sigmoid(torch.full_like(z, self.b0))
        return m

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rank={self.rank}, b0={self.b0}, calibration={self.calibration!r}"


class MHEXHead(nn.Module):
    """Supervision head ``logit = W2 (W1 pool(x_att)) + b`` with its equivalent matrix ``W_eq = W2 W1``.

    There is no nonlinearity between ``W1`` (``refine``, identity at construction; fixed to the identity with
    ``refine=False``) and ``W2`` (N(0, 0.01²), bias 0), so the logit equals the mean of the class activation
    map ``A[k](u) = Σ_c W_eq[k, c] x_att[c, u]`` plus ``b``.

    Example:
        >>> import torch
        >>> head = MHEXHead(8, num_classes=3)
        >>> x = torch.randn(2, 8, 4, 4)
        >>> cam = head.class_activation_map(x)
        >>> torch.allclose(head(x.mean((2, 3))), cam.mean((2, 3)) + head.classifier.bias, atol=1e-6)
        True
    """

    def __init__(self, channels: int, num_classes: int, refine: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.num_classes = num_classes
        self.refine = nn.Parameter(torch.eye(channels)) if refine else None
        self.classifier = nn.Linear(channels, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        hidden = pooled if self.refine is None else F.linear(pooled, self.refine)
        return self.classifier(hidden)

    def equivalent_matrix(self) -> Tensor:
        """``W_eq = W2 W1`` (K, C); ``W2`` itself without refinement."""
        weight = self.classifier.weight
        return weight if self.refine is None else weight @ self.refine

    def class_activation_map(self, features: Tensor) -> Tensor:
        """Raw maps of every class: (B, C, H, W) -> (B, K, H, W), or (B, T, C) tokens -> (B, K, T)."""
        w_eq = self.equivalent_matrix().to(features.dtype)
        if features.ndim == 4:
            return torch.einsum("kc,bchw->bkhw", w_eq, features)
        if features.ndim == 3:
            return torch.einsum("kc,btc->bkt", w_eq, features)
        raise ValueError(f"`features` must be (B, C, H, W) or (B, T, C), got {describe(features)}")


class MHEXBranch(nn.Module):
    """The gate and the head of one tapped stage."""

    def __init__(
        self,
        stage: str,
        kind: StageKind,
        channels: int,
        num_classes: int,
        *,
        gate_rank: int | None,
        b0: float,
        gate_calibration: GateCalibration,
        refine: bool,
        prefix_tokens: int = 0,
    ) -> None:
        super().__init__()
        self.stage = stage
        self.kind = kind
        self.prefix_tokens = prefix_tokens
        self.gate = AttentionGate(channels, gate_rank, b0, gate_calibration)
        self.head = MHEXHead(channels, num_classes, refine)

    def extra_repr(self) -> str:
        return f"stage={self.stage!r}, kind={self.kind!r}"


def _autocast_off(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return torch.autocast(device_type="cpu", enabled=False)


class MHEXHeads(nn.Module):
    """All branches of one injection, plus the state of the last forward (head logits, optional maps).

    Registered on the model as ``mhex_heads``; :func:`inject_mhex` builds it and wires the hooks. Head logits of
    the last forward are in :attr:`head_logits` (keyed like :attr:`branches`, shallow to deep); inside
    :meth:`capturing` the gated stage outputs are kept as well, for :meth:`saliency`.
    """

    def __init__(
        self,
        branches: dict[str, MHEXBranch],
        *,
        kind: StageKind,
        gate_mode: GateMode,
        detach_heads: bool,
        num_classes: int,
        special_token_ids: Sequence[int] = (),
        grid_size: tuple[int, int] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleDict(branches)
        self.kind = kind
        self.gate_mode = gate_mode
        self.detach_heads = detach_heads
        self.num_classes = num_classes
        self.special_token_ids = tuple(int(i) for i in special_token_ids)
        self.grid_size = grid_size
        self.config = dict(config or {})
        self._reset_state()

    # -- state of the last forward (plain attributes: never saved, never moved) -------------------------------

    def _reset_state(self) -> None:
        self.forward_id = 0
        self.head_logits: dict[str, Tensor] = {}
        self.record_ids: dict[str, int] = {}
        self.batch_size: int | None = None
        self.consumed_id = -1
        self.captured: dict[str, Tensor] = {}
        self.capture = False
        self._pending_tokens: tuple[Tensor | None, Tensor | None] | None = None
        self.pool_mask: Tensor | None = None
        self.token_ids: Tensor | None = None
        self._logits_refs: list[tuple[int, weakref.ref]] = []

    def __getstate__(self) -> dict:
        # Tensors of the last forward may hold autograd graphs (not copyable) and weak references (not
        # picklable); a copy starts with a fresh state.
        state = self.__dict__.copy()
        for name in _RUNTIME_STATE:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._reset_state()

    @property
    def keys(self) -> list[str]:
        return list(self.branches.keys())

    @contextmanager
    def capturing(self) -> Iterator[None]:
        """Keep each stage's gated output during the block (needed by :meth:`saliency`)."""
        previous = self.capture
        self.capture = True
        self.captured = {}
        try:
            yield
        finally:
            self.capture = previous

    # -- hooks ----------------------------------------------------------------------------------------------

    def _root_pre_hook(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.kind != "tokens":
            return
        bound = self._bind_root(args, kwargs)
        self._pending_tokens = (bound.get("attention_mask"), bound.get("input_ids"))

    def _bind_root(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        signature = getattr(self, "_root_signature", None)
        if signature is None:
            return dict(kwargs)
        try:
            return dict(signature.bind_partial(*args, **kwargs).arguments)
        except TypeError:
            return dict(kwargs)

    def _root_post_hook(self, _module: nn.Module, _args: tuple, output: Any) -> None:
        try:
            logits = logits_of(output)
        except TypeError:
            return
        self._logits_refs = [*self._logits_refs[-7:], (self.forward_id, weakref.ref(logits))]

    def _first_stage_pre_hook(self, _module: nn.Module, _args: Any) -> None:
        # Counted here rather than at the model's own forward, so that calls such as
        # `model.forward_head(model.forward_features(x))` still count as one forward.
        self.forward_id += 1
        self.head_logits = {}
        self.captured = {}  # maps of an earlier forward never mix with this one's
        if self.kind == "tokens":
            pending = self._pending_tokens or (None, None)
            self._pending_tokens = None
            self.pool_mask, self.token_ids = pending

    def _on_stage_output(self, key: str, output: Any) -> Any:
        branch = self.branches[key]
        is_seq = isinstance(output, (tuple, list))
        x = output[0] if is_seq else output
        if not isinstance(x, Tensor):
            raise TypeError(
                f"MHEX stage {branch.stage!r} must output a tensor (or a tuple of them), got {describe(x)}"
            )
        self._check_layout(branch, x)
        param = branch.head.classifier.weight
        dtype = torch.promote_types(param.dtype, torch.float32)
        with _autocast_off(x.device):
            pooled = self._pool(branch, x, dtype)
            m = branch.gate(pooled.to(param.dtype)).to(dtype)
            if self.detach_heads:
                pooled_head = pooled.detach()
                m_head = branch.gate(pooled_head.to(param.dtype)).to(dtype)
            else:
                pooled_head, m_head = pooled, m
            logits = branch.head((m_head * pooled_head).to(param.dtype)).to(dtype)
        self.head_logits[key] = logits
        self.record_ids[key] = self.forward_id
        self.batch_size = x.shape[0]
        shape = (x.shape[0], x.shape[1], 1, 1) if x.ndim == 4 else (x.shape[0], 1, x.shape[2])
        if self.capture:
            self.captured[key] = self._layout_for_maps(branch, (m.view(shape) * x.to(dtype)).detach())
        if self.gate_mode != "in_path":
            return None
        gated = x * m.view(shape).to(x.dtype)
        if is_seq:
            return type(output)((gated, *output[1:]))
        return gated

    def _check_layout(self, branch: MHEXBranch, x: Tensor) -> None:
        channels = branch.gate.channels
        if branch.kind == "grid":
            ok = x.ndim == 4 and x.shape[1] == channels
            want = f"(B, {channels}, H, W)"
        else:
            ok = x.ndim == 3 and x.shape[2] == channels
            want = f"(B, N, {channels})"
        if not ok:
            raise ValueError(f"MHEX stage {branch.stage!r} must output {want} features, got {describe(x)}")

    def _pool(self, branch: MHEXBranch, x: Tensor, dtype: torch.dtype) -> Tensor:
        if branch.kind == "grid":
            return x.mean(dim=(2, 3), dtype=dtype)
        if branch.kind == "vit":
            return x[:, branch.prefix_tokens :].mean(dim=1, dtype=dtype)
        mask = self._token_pool_mask(x).to(dtype)
        total = (x.to(dtype) * mask[..., None]).sum(1)
        return total / mask.sum(1, keepdim=True).clamp_min(1.0)

    def _token_pool_mask(self, x: Tensor) -> Tensor:
        mask = self.pool_mask
        if mask is None:
            return torch.ones(x.shape[:2], device=x.device)
        if mask.shape != x.shape[:2]:
            raise ValueError(
                f"the attention mask ({describe(mask)}) does not match the hidden states {tuple(x.shape[:2])}"
            )
        return mask.to(device=x.device) != 0

    def _layout_for_maps(self, branch: MHEXBranch, x_att: Tensor) -> Tensor:
        if branch.kind != "vit":
            return x_att
        patches = x_att[:, branch.prefix_tokens :]
        if self.grid_size is not None and self.grid_size[0] * self.grid_size[1] == patches.shape[1]:
            height, width = self.grid_size
        else:
            side = math.isqrt(patches.shape[1])
            if side * side != patches.shape[1]:
                raise ValueError(
                    f"{patches.shape[1]} patch tokens of stage {branch.stage!r} do not form a square grid"
                )
            height = width = side
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], height, width)

    # -- reading the last forward ------------------------------------------------------------------------

    def latest_head_logits(
        self, main_logits: Tensor | None = None, since: int | None = None
    ) -> dict[str, Tensor]:
        """Head logits of the last forward, checked to belong to it.

        Raises when no forward ran after ``since``, a stage did not run in the last forward, ``main_logits``
        are those of an earlier forward or have another batch size.
        """
        if since is not None and self.forward_id <= since:
            raise RuntimeError(
                "MHEX: the loss was computed without a forward of the model that holds the heads in this "
                "training step; call the model (e.g. `self.model(x)`) before the criterion"
            )
        missing = [k for k in self.keys if self.record_ids.get(k) != self.forward_id]
        if missing:
            raise RuntimeError(f"MHEX: stages {missing} did not run in the last forward of the model")
        if main_logits is not None:
            for forward_id, ref in self._logits_refs:
                if ref() is main_logits and forward_id != self.forward_id:
                    raise RuntimeError(
                        "MHEX: the criterion received the logits of an earlier forward than the one whose head "
                        f"outputs are stored (forward {forward_id}, heads from forward {self.forward_id}); "
                        "compute the loss right after the forward it belongs to"
                    )
            if main_logits.ndim == 0 or main_logits.shape[0] != self.batch_size:
                raise RuntimeError(
                    f"MHEX: the criterion received logits of batch size "
                    f"{main_logits.shape[0] if main_logits.ndim else 0}, but the last forward through the heads "
                    f"had batch size {self.batch_size}; the loss must use the logits of that forward"
                )
        return {k: self.head_logits[k] for k in self.keys}

    def equivalent_matrices(self) -> dict[str, Tensor]:
        return {k: b.head.equivalent_matrix() for k, b in self.branches.items()}

    # -- saliency -------------------------------------------------------------------------------------------

    def layer_weights(self, layer_weights: LayerWeights = "uniform") -> Tensor:
        """α_l ≥ 0 summing to 1: ``"uniform"``, ``"inverse_depth"`` (α_l ∝ 1/l) or a list, one per head."""
        n = len(self.branches)
        if isinstance(layer_weights, str):
            check_in_choices("layer_weights", layer_weights, ("uniform", "inverse_depth"))
            alpha = torch.ones(n) if layer_weights == "uniform" else 1.0 / torch.arange(1, n + 1)
        else:
            values = list(layer_weights)
            if len(values) != n or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 for v in values
            ):
                raise ValueError(
                    f"`layer_weights` must be 'uniform', 'inverse_depth' or {n} non-negative numbers "
                    f"(one per head), got {layer_weights!r}"
                )
            alpha = torch.tensor(values, dtype=torch.float64)
            if float(alpha.sum()) <= 0:
                raise ValueError(f"`layer_weights` must not all be zero, got {values!r}")
        return (alpha / alpha.sum()).to(torch.float32)

    def saliency(
        self,
        target: Tensor,
        input_size: tuple[int, int] | None = None,
        layer_weights: LayerWeights = "uniform",
        token_smoothing_sigma: float = 0.0,
        special_tokens_mask: Tensor | None = None,
        eps: float = 1e-8,
    ) -> Tensor:
        """``S = Σ_l α_l N(U(ReLU(A_l[target])))`` from the maps kept by the last forward inside :meth:`capturing`.

        Images: (B, 1, H, W) in [0, 1] at ``input_size`` (the stage's own size when None). Tokens: (B, T), zero on
        padding and special tokens, ``N`` taking the maximum over valid tokens.
        """
        missing = [k for k in self.keys if k not in self.captured]
        if missing:
            raise RuntimeError(
                "MHEX saliency needs the maps of a forward run inside `heads.capturing()`; "
                f"none kept for stages {missing}"
            )
        check_positive("token_smoothing_sigma", token_smoothing_sigma, allow_zero=True)
        alpha = self.layer_weights(layer_weights)
        total: Tensor | None = None
        valid = None
        if self.kind == "tokens":
            any_map = self.captured[self.keys[0]]
            valid = self.valid_token_mask(any_map, special_tokens_mask)
        for i, (key, branch) in enumerate(self.branches.items()):
            maps = self.captured[key]
            w_eq = branch.head.equivalent_matrix().detach().to(maps.dtype)
            weights = w_eq[target.to(maps.device)]
            if maps.ndim == 4:
                cam = F.relu(torch.einsum("bc,bchw->bhw", weights, maps))[:, None]
                if input_size is not None:
                    cam = F.interpolate(cam, size=tuple(input_size), mode="bilinear", align_corners=False)
            else:
                cam = F.relu(torch.einsum("bc,btc->bt", weights, maps)) * valid
                if token_smoothing_sigma > 0:
                    cam = _smooth_tokens(cam, valid, token_smoothing_sigma)
            peak = cam.flatten(1).amax(1).view(-1, *([1] * (cam.ndim - 1)))
            term = alpha[i].to(cam.dtype) * cam / (peak + eps)
            total = term if total is None else total + term
        assert total is not None
        return total

    def valid_token_mask(self, like: Tensor, special_tokens_mask: Tensor | None = None) -> Tensor:
        """Tokens that carry saliency: inside the attention mask and not special, (B, T) float."""
        batch, length = like.shape[:2]
        valid = torch.ones(batch, length, device=like.device, dtype=like.dtype)
        if self.pool_mask is not None:
            valid = valid * (self.pool_mask.to(like.device) != 0).to(like.dtype)
        if special_tokens_mask is not None:
            if special_tokens_mask.shape != (batch, length):
                raise ValueError(
                    f"`special_tokens_mask` must have shape {(batch, length)}, got {describe(special_tokens_mask)}"
                )
            valid = valid * (special_tokens_mask.to(like.device) == 0).to(like.dtype)
        elif self.token_ids is not None and self.special_token_ids:
            ids = self.token_ids.to(like.device)
            special = torch.isin(ids, torch.tensor(self.special_token_ids, device=ids.device))
            valid = valid * (~special).to(like.dtype)
        return valid


def _smooth_tokens(scores: Tensor, valid: Tensor, sigma: float) -> Tensor:
    """Gaussian smoothing over token positions, restricted to valid tokens and renormalised by the kernel mass
    that falls on valid tokens (so padding and special tokens neither leak in nor dilute)."""
    length = scores.shape[1]
    pos = torch.arange(length, device=scores.device, dtype=scores.dtype)
    kernel = torch.exp(-0.5 * ((pos[:, None] - pos[None, :]) / sigma) ** 2)
    num = (scores * valid) @ kernel.T
    den = valid @ kernel.T
    return torch.where(valid > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))


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


def _stage_kind(model: nn.Module) -> StageKind:
    if _is_hf(model):
        return "tokens"
    if _timm_feature_info(model) and hasattr(model, "num_prefix_tokens") and hasattr(model, "blocks"):
        return "vit"
    return "grid"


def _evenly_spaced(count: int, total: int) -> list[int]:
    if total <= count:
        return list(range(total))
    return [round((i + 1) * total / count) - 1 for i in range(count)]


def _select_stages(model: nn.Module, stages: str | Sequence[int | str], kind: StageKind) -> list[Stage]:
    all_stages = list_stages(model)
    if isinstance(stages, str):
        if stages != "auto":
            stages = [stages]
        elif kind == "grid":
            return all_stages[-_AUTO_STAGES:]
        else:
            return [all_stages[i] for i in _evenly_spaced(_AUTO_STAGES, len(all_stages))]
    if not isinstance(stages, Sequence) or not stages:
        raise ValueError(
            f"`stages` must be 'auto' or a non-empty list of stage indices or names, got {describe(stages)}"
        )
    names = [s.name for s in all_stages]
    chosen: list[int] = []
    for item in stages:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise TypeError(f"`stages` entries must be ints or names, got {describe(item)}")
        if isinstance(item, int):
            if not -len(all_stages) <= item < len(all_stages):
                raise ValueError(
                    f"`stages` index {item} is out of range for {len(all_stages)} stages: {names}"
                )
            index = item % len(all_stages)
        elif item in names:
            index = names.index(item)
        else:
            raise ValueError(f"`stages` entry {item!r} is not a stage of the model; stages: {names}")
        if index in chosen:
            raise ValueError(f"`stages` names stage {names[index]!r} twice")
        chosen.append(index)
    return [all_stages[i] for i in sorted(chosen)]


def infer_num_classes(model: nn.Module) -> int | None:
    """Number of classes of a timm, torchvision or Hugging Face classifier (None when unknown)."""
    inner = _unwrap(model)
    config = getattr(inner, "config", None)
    if config is not None and isinstance(getattr(config, "num_labels", None), int) and _is_hf(inner):
        return int(config.num_labels)
    count = getattr(inner, "num_classes", None)
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        return count
    if _is_torchvision_resnet(inner) and isinstance(getattr(inner, "fc", None), nn.Linear):
        return inner.fc.out_features
    get_classifier = getattr(inner, "get_classifier", None)
    if callable(get_classifier):
        classifier = get_classifier()
        if isinstance(classifier, nn.Linear):
            return classifier.out_features
    return None


def _special_ids_from_config(model: nn.Module) -> tuple[int, ...]:
    config = getattr(model, "config", None)
    ids = set()
    for name in _SPECIAL_TOKEN_ATTRS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            ids.add(value)
    return tuple(sorted(ids))


def check_lambdas(lambdas: float | Sequence[float], count: int | None = None) -> list[float] | float:
    """Every λ_l must be a positive number (a head without gradient would break DDP); a list needs one per head."""
    values = [lambdas] if isinstance(lambdas, (int, float)) and not isinstance(lambdas, bool) else lambdas
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ValueError(f"`lambdas` must be a positive number or a list of them, got {lambdas!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(
                f"every `lambdas` entry must be > 0 (leave a stage out of `stages` to drop its head), got {lambdas!r}"
            )
    if count is not None and len(values) not in (1, count):
        raise ValueError(f"`lambdas` must be one number or {count} numbers (one per head), got {lambdas!r}")
    return [float(v) for v in values] if len(values) > 1 else float(values[0])


def lambda_list(lambdas: float | Sequence[float], count: int) -> list[float]:
    checked = check_lambdas(lambdas, count)
    return list(checked) if isinstance(checked, list) else [checked] * count


def head_accuracy(logits: Tensor, target: Any) -> Tensor | None:
    """Top-1 accuracy for class-index targets; None for other targets (e.g. multi-label)."""
    if not isinstance(target, Tensor) or target.is_floating_point() or target.ndim != 1:
        return None
    if logits.ndim != 2 or logits.shape[0] != target.shape[0]:
        return None
    return (logits.argmax(1) == target.to(logits.device)).float().mean()


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
