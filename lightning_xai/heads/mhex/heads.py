"""``MHEXHeads``: the branches of one injection, their hooks, the state of the last forward, saliency."""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._checks import check_in_choices, check_positive, describe
from ...models import logits_of
from .gates import MHEXBranch
from .stages import StageKind

GateMode = Literal["in_path", "side_branch"]
LayerWeights = Literal["uniform", "inverse_depth"] | Sequence[float]

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

    # State of the last forward (plain attributes: never saved, never moved).
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
