"""The I-GOS / iGOS++ settings objects: checked once, replaced by keyword, and the same as keyword calls."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lightning_xai.attr import IGOS, IGOSOptions, IGOSPlusPlus, IGOSPlusPlusOptions

FAST = {"mask_size": 4, "n_iterations": 2, "n_steps": 2, "seed": 0}


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_options_are_checked_when_built_and_frozen():
    options = IGOSOptions(mask_size=6, tv_beta=3)
    assert options.mask_size == (6, 6) and options.tv_beta == 3.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.n_steps = 3
    with pytest.raises(ValueError, match="`step_decay`"):
        IGOSOptions(step_decay=1.0)
    with pytest.raises(TypeError, match="`n_steps`"):
        IGOSOptions(n_steps=2.5)
    with pytest.raises(ValueError, match="`btv_sigma`"):
        IGOSPlusPlusOptions(btv_sigma=0)


def test_replace_names_unknown_options():
    with pytest.raises(TypeError, match=r"no option 'mask'.*'mask_size'"):
        IGOSOptions().replace(mask=4)
    assert IGOSOptions().replace(n_steps=3).n_steps == 3
    assert IGOSOptions().to_dict()["mask_size"] == (28, 28)


def test_plus_plus_defaults_differ_where_the_reference_does():
    assert (IGOSOptions().n_iterations, IGOSOptions().l1_schedule) == (15, True)
    assert (IGOSPlusPlusOptions().n_iterations, IGOSPlusPlusOptions().l1_schedule) == (20, False)


@pytest.mark.parametrize(("cls", "options_cls"), [(IGOS, IGOSOptions), (IGOSPlusPlus, IGOSPlusPlusOptions)])
def test_options_object_equals_keyword_call_and_overrides_apply(cls, options_cls):
    model, x = tiny_model(), torch.rand(2, 3, 16, 16)
    by_keywords = cls(model).attribute(x, target=[0, 1], **FAST)
    by_options = cls(model).attribute(x, target=[0, 1], options=options_cls(**FAST))
    assert torch.equal(by_keywords, by_options)
    overridden = cls(model).attribute(x, target=[0, 1], options=options_cls(**FAST), n_iterations=1)
    assert torch.equal(overridden, cls(model).attribute(x, target=[0, 1], **{**FAST, "n_iterations": 1}))


def test_the_other_methods_options_are_refused():
    model, x = tiny_model(), torch.rand(1, 3, 16, 16)
    with pytest.raises(TypeError, match="IGOSOptions"):
        IGOS(model).attribute(x, target=0, options=IGOSPlusPlusOptions(**FAST))
    with pytest.raises(TypeError, match="IGOSPlusPlusOptions"):
        IGOSPlusPlus(model).attribute(x, target=0, options=IGOSOptions(**FAST))
    with pytest.raises(TypeError, match="no option 'btv_sigma'"):
        IGOS(model).attribute(x, target=0, btv_sigma=0.1, **FAST)
