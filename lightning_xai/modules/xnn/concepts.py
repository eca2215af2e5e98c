"""The feature tap on the backbone and the image-to-concept model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from ..._checks import describe
from ...heads import MHEXHeads
from .network import XNNNetwork

__all__ = ["ConceptModel", "pool_features"]


def _final_linear(model: nn.Module) -> nn.Module:
    # MHEX heads are registered after the backbone's own layers, so the last nn.Linear in registration order is
    # a head's classifier, whose input (gated, pooled stage features) no longer feeds the backbone's logits.
    injected = {id(m) for heads in model.modules() if isinstance(heads, MHEXHeads) for m in heads.modules()}
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module) not in injected:
            found = module
    if found is None:
        raise ValueError(
            f"`layer=None` taps the input of the backbone's final nn.Linear, but {type(model).__name__} has none; "
            "pass `layer=` by name"
        )
    return found


def pool_features(features: Tensor) -> Tensor:
    """(B, C, h, w) maps are averaged over space, (B, N, C) token sequences over tokens; (B, D) passes."""
    if features.ndim == 4:
        return features.mean(dim=(2, 3))
    if features.ndim == 3:
        return features.mean(dim=1)
    if features.ndim == 2:
        return features
    raise ValueError(
        f"the tapped features must be (B, D), (B, N, C) or (B, C, h, w), got {describe(features)}"
    )


class _FeatureTap:
    """Keeps the input (``pre=True``) or output of a module during one forward."""

    def __init__(self, module: nn.Module, pre: bool) -> None:
        self.module = module
        self.pre = pre
        self.value: Tensor | None = None

    def _store(self, value: Any) -> None:
        first = value[0] if isinstance(value, (tuple, list)) else value
        if not isinstance(first, Tensor):
            raise TypeError(f"the tapped layer must produce a tensor, got {describe(first)}")
        self.value = first

    @contextlib.contextmanager
    def capturing(self) -> Iterator[_FeatureTap]:
        self.value = None
        if self.pre:
            handle = self.module.register_forward_pre_hook(lambda _m, args: self._store(args))
        else:
            handle = self.module.register_forward_hook(lambda _m, _args, out: self._store(out))
        try:
            yield self
        finally:
            handle.remove()

    def features(self) -> Tensor:
        if self.value is None:
            raise ValueError("the XNN's feature layer was not called by the backbone's forward")
        return pool_features(self.value)


class ConceptModel(nn.Module):
    """Image to concepts ``h`` (B, k): the backbone up to the tap, pooling, then the XNN encoder.

    The backbone is held as ``model``, so ``layer="auto"`` of Grad-CAM finds its last stage. Any Captum-style
    method explains concept ``j`` with ``target=j``. Built by :meth:`XNN.concept_model`.
    """

    def __init__(self, backbone: nn.Module, network: XNNNetwork, tap: _FeatureTap) -> None:
        super().__init__()
        self.model = backbone
        self.network = network
        self._tap = tap

    def forward(self, inputs: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        with self._tap.capturing() as tap:
            self.model(inputs, *args, **kwargs)
        return self.network.encode(tap.features().to(self.network.dtype))
