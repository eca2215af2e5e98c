"""The mask methods take Captum's argument order: ``attribute(inputs, baselines, target, additional_forward_args)``,
so a Captum-style positional call means the same as the keyword call, and the old order is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_xai.attr import IGOS, IGOSPlusPlus, StructuredAttentionGraph

QUICK = {
    IGOS: {"mask_size": 4, "n_iterations": 2, "n_steps": 2, "seed": 0},
    IGOSPlusPlus: {"mask_size": 4, "n_iterations": 2, "n_steps": 2, "seed": 0},
    StructuredAttentionGraph: {"grid_size": 3, "max_root_size": 2, "heuristic_kwargs": {"n_iterations": 1}},
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    ).eval()


@pytest.mark.parametrize("method", list(QUICK), ids=lambda m: m.__name__)
def test_positional_captum_order_matches_the_keyword_call(method):
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    explainer = method(_model())
    positional = explainer.attribute(x, "black", [0, 2], None, **QUICK[method])
    keywords = explainer.attribute(x, target=[0, 2], baselines="black", **QUICK[method])
    assert torch.equal(positional, keywords)
    for labels in ([0, 2], torch.tensor([0, 2])):
        with pytest.raises(TypeError, match=r"Captum's order.*target="):
            explainer.attribute(x, labels, **QUICK[method])


def test_igos_method_options_are_keyword_only():
    with pytest.raises(TypeError):
        IGOS(_model()).attribute(torch.rand(1, 3, 12, 12), "blur", 0, None, 4)
