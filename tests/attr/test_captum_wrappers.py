"""Every attribution class works inside Captum's ``NoiseTunnel`` (SmoothGrad, SmoothGrad², VarGrad) and with
``captum.metrics.infidelity`` / ``sensitivity_max`` (layer maps upsampled with ``LayerAttribution.interpolate``,
as Captum's docs do)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from captum.attr import LayerAttribution, NoiseTunnel
from captum.metrics import infidelity, sensitivity_max
from torch import nn

from lightning_xai.attr import (
    ADVISE,
    IGOS,
    IGOSPlusPlus,
    MHEXAttribution,
    SelectorAttribution,
    StructuredAttentionGraph,
    XNNConceptAttribution,
)
from lightning_xai.heads import inject_mhex
from lightning_xai.models import small_resnet
from lightning_xai.modules import XNN, small_selector

SIZE = 16
FAST_IGOS = {"mask_size": 4, "n_iterations": 2, "n_steps": 2, "seed": 0}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return small_resnet(num_classes=3, width=4).eval()


#: name -> (explainer built on a model, attribute keyword arguments, is a layer map)
BUILDERS: dict[str, Callable[[nn.Module], tuple[object, dict, bool]]] = {
    "IGOS": lambda m: (IGOS(m), FAST_IGOS, False),
    "IGOSPlusPlus": lambda m: (IGOSPlusPlus(m), FAST_IGOS, False),
    "StructuredAttentionGraph": lambda m: (
        StructuredAttentionGraph(m),
        {"grid_size": 3, "max_root_size": 2, "heuristic_kwargs": {"n_iterations": 1, "n_steps": 2}},
        False,
    ),
    "ADVISE": lambda m: (ADVISE(m, "layer3"), {"selection": "largest_group"}, True),
    "MHEXAttribution": lambda m: (MHEXAttribution(m, inject_mhex(m, stages=[2, 3])), {}, False),
    "SelectorAttribution": lambda m: (SelectorAttribution(m, small_selector(4).eval()), {}, False),
    "XNNConceptAttribution": lambda m: (
        XNNConceptAttribution(XNN(m, num_concepts=2, hidden=(4,)).eval()),
        {},
        False,
    ),
}


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_noise_tunnel_wraps_every_method(name, nt_type):
    explainer, kwargs, _ = BUILDERS[name](_model())
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    target = 0 if name != "XNNConceptAttribution" else None
    smoothed = NoiseTunnel(explainer).attribute(
        x, nt_type=nt_type, nt_samples=2, stdevs=0.05, target=target, **kwargs
    )
    plain = explainer.attribute(x, target=target, **kwargs)
    assert smoothed.shape == plain.shape and bool(torch.isfinite(smoothed).all())


@pytest.mark.parametrize("name", sorted(set(BUILDERS) - {"XNNConceptAttribution"}))
def test_captum_infidelity_and_sensitivity_accept_every_method(name):
    model = _model()
    explainer, kwargs, layer = BUILDERS[name](model)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))

    def explain(inputs: torch.Tensor | tuple[torch.Tensor, ...], **extra: object) -> object:
        maps = explainer.attribute(inputs, target=0, **kwargs)
        if not layer:
            return maps
        images = inputs[0] if isinstance(inputs, tuple) else inputs
        upsampled = LayerAttribution.interpolate(maps, (SIZE, SIZE)).expand_as(images).contiguous()
        return (upsampled,) if isinstance(inputs, tuple) else upsampled

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = 0.01 * torch.randn(inputs.shape, generator=torch.Generator().manual_seed(2))
        return noise, inputs - noise

    maps = explain(x).expand_as(x).contiguous()
    score = infidelity(model, perturb, x, maps, target=0, n_perturb_samples=2)
    assert score.shape == (2,) and bool(torch.isfinite(score).all())
    sensitivity = sensitivity_max(explain, x, n_perturb_samples=2, perturb_radius=0.01)
    assert sensitivity.shape == (2,) and bool(torch.isfinite(sensitivity).all())
