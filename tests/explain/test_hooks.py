"""Hooks the library adds are removed by their own handles, also when the forward raises."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_xai.explain import ActivationTap, forward_hook


def test_forward_hook_is_removed_after_the_block_and_after_an_exception():
    layer = nn.Linear(3, 2)
    tap = ActivationTap()
    with forward_hook(layer, tap):
        assert len(layer._forward_hooks) == 1
        layer(torch.ones(1, 3))
    assert not layer._forward_hooks and tap.activation is not None and tap.activation.requires_grad
    with pytest.raises(RuntimeError, match="boom"), forward_hook(layer, tap):
        raise RuntimeError("boom")
    assert not layer._forward_hooks


def test_activation_tap_makes_a_frozen_output_differentiable_and_keeps_tuples():
    frozen = nn.Linear(3, 2).requires_grad_(False)
    tap = ActivationTap()
    with forward_hook(frozen, tap):
        out = frozen(torch.ones(1, 3))
    assert out.requires_grad and tap.activation is out
    with pytest.raises(TypeError, match="must output a tensor"):
        tap(frozen, (), "not a tensor")
    pair = (torch.ones(2), torch.zeros(1))
    replaced = tap(frozen, (), pair)
    assert isinstance(replaced, tuple) and replaced[0].requires_grad and replaced[1] is pair[1]
