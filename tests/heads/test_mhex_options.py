"""The MHEX injection settings: one checked object behind inject_mhex, the callback and the module."""

from __future__ import annotations

import pytest
import timm
import torch

from lightning_xai.callbacks import MultiHeadExplainer
from lightning_xai.heads import MHEXOptions, inject_mhex
from lightning_xai.modules import MHEXClassifier


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=3).eval()


def test_options_resolve_b0_and_freeze_sequences():
    options = MHEXOptions(stages=[1, 2], gate_calibration="none", special_token_ids=[0, 2])
    assert options.b0 == 6.0 and options.stages == (1, 2) and options.special_token_ids == (0, 2)
    assert MHEXOptions().b0 == 3.0
    assert options.to_config()["stages"] == [1, 2] and "special_token_ids" not in options.to_config()


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"stages": "all"}, ValueError, "stages"),
        ({"gate_mode": "beside"}, ValueError, "gate_mode"),
        ({"gate_rank": 0}, ValueError, "gate_rank"),
        ({"refine": "yes"}, ValueError, "refine"),
        ({"b0": float("nan")}, ValueError, "b0"),
        ({"detach_heads": 1}, TypeError, "detach_heads"),
        ({"num_classes": 2.0}, TypeError, "num_classes"),
    ],
)
def test_bad_settings_are_named_by_every_entry_point(kwargs, error, name):
    with pytest.raises(error, match=f"`{name}`"):
        MHEXOptions(**kwargs)
    with pytest.raises(error, match=f"`{name}`"):
        MultiHeadExplainer(**kwargs)
    with pytest.raises(error, match=f"`{name}`"):
        inject_mhex(model(), **kwargs)


def test_options_object_equals_keywords_and_not_both():
    x = torch.rand(2, 3, 32, 32)
    by_keywords, by_options = model(), model()
    torch.manual_seed(1)
    a = inject_mhex(by_keywords, stages=[2, 3], gate_rank=4)
    torch.manual_seed(1)
    b = inject_mhex(by_options, options=MHEXOptions(stages=[2, 3], gate_rank=4))
    assert a.heads.config == b.heads.config
    by_keywords(x), by_options(x)
    assert sorted(a.head_logits) == sorted(b.head_logits)
    for key in a.head_logits:
        assert torch.equal(a.head_logits[key], b.head_logits[key])
    with pytest.raises(ValueError, match="not both"):
        inject_mhex(model(), gate_rank=4, options=MHEXOptions())


def test_callback_config_matches_the_injected_heads():
    callback = MultiHeadExplainer(stages=[2, 3], gate_rank=4)
    before = callback.config()
    net = model()
    callback.attach(net)
    after = callback.config()
    assert {k: v for k, v in before.items() if k not in ("stages", "num_classes")} == {
        k: v for k, v in after.items() if k not in ("stages", "num_classes")
    }
    module = MHEXClassifier(model(), num_classes=3, stages=[2, 3], gate_rank=4)
    assert module.heads.config == callback.handle.heads.config
