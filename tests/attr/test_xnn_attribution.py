"""XNNConceptAttribution: the Captum contract, the batched layout of (image, concept) rows, and model state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_xai.attr import XNNConceptAttribution
from lightning_xai.explain import grad_cam
from lightning_xai.modules import XNN


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


@pytest.fixture
def xnn() -> XNN:
    torch.manual_seed(0)
    module = XNN(small_cnn(), num_concepts=3, target_class=[0, 2], hidden=(12,), heatmap_layer="3").eval()
    with torch.no_grad():
        module.network.encoder[-1].bias.add_(0.5)  # every concept active at initialisation
    return module


def test_all_concepts_match_grad_cam_of_each_concept(xnn):
    images = torch.rand(2, 3, 12, 12)
    maps = XNNConceptAttribution(xnn).attribute(images, layer="3")
    assert maps.shape == (2, 3, 12, 12) and maps.dtype == images.dtype
    model = xnn.concept_model()
    for j in range(3):
        expected = grad_cam(model, images, j, layer=xnn.backbone[3], upsample=True)[:, 0]
        assert torch.allclose(maps[:, j], expected, atol=1e-6)


def test_target_internal_batch_size_and_tuple_inputs(xnn):
    images = torch.rand(3, 3, 12, 12)
    attribution = XNNConceptAttribution(xnn.concept_model())
    everything = attribution.attribute(images, layer="3")
    chosen = attribution.attribute(images, target=[2, 0, 1], layer="3")
    assert chosen.shape == (3, 1, 12, 12)
    assert torch.allclose(chosen[:, 0], everything[torch.arange(3), torch.tensor([2, 0, 1])], atol=1e-6)
    chunked = attribution.attribute(images, layer="3", internal_batch_size=2)
    assert torch.allclose(chunked, everything, atol=1e-6)
    as_tuple = attribution.attribute((images,), layer="3")
    assert isinstance(as_tuple, tuple) and torch.allclose(as_tuple[0], everything, atol=1e-6)


def test_inactive_concept_gets_zero_map_and_igos_and_callable(xnn):
    with torch.no_grad():
        xnn.network.encoder[-1].bias[1] = -1e4
    images = torch.rand(2, 3, 12, 12)
    attribution = XNNConceptAttribution(xnn)
    igos = attribution.attribute(images, method="igos", mask_size=3, n_iterations=2, n_steps=2, seed=0)
    assert igos.shape == (2, 3, 12, 12) and bool((igos >= 0).all()) and bool(torch.isfinite(igos).all())
    assert bool((igos[:, 1] == 0).all()) and bool((igos[:, [0, 2]] > 0).any())
    calls = []

    def constant(rows, target):
        calls.append(target.clone())
        return torch.ones(rows.shape[0], 1, 6, 6)

    maps = attribution.attribute(images, method=constant)
    assert torch.equal(calls[0], torch.tensor([0, 1, 2, 0, 1, 2]))  # image-major rows
    assert bool((maps[:, 1] == 0).all()) and bool((maps[:, [0, 2]] == 1).all())


def test_model_state_restored_and_errors(xnn):
    xnn.backbone.train()
    flags = [p.requires_grad for p in xnn.parameters()]
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in xnn.modules()]
    maps = xnn.concept_heatmaps(torch.rand(1, 3, 12, 12))  # eval inside, state restored after
    assert maps.shape == (1, 3, 12, 12)
    assert xnn.backbone.training and not xnn.network.training
    assert [p.requires_grad for p in xnn.parameters()] == flags
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in xnn.modules()] == hooks
    attribution = XNNConceptAttribution(xnn)
    with pytest.raises(ValueError, match="method"):
        attribution.attribute(torch.rand(1, 3, 12, 12), method="excitation")
    with pytest.raises(ValueError, match="target"):
        attribution.attribute(torch.rand(1, 3, 12, 12), target=5, layer="3")
    with pytest.raises(ValueError, match="4-D"):
        attribution.attribute(torch.rand(3, 12, 12))
    with pytest.raises(TypeError, match="unexpected keyword"):
        attribution.attribute(torch.rand(1, 3, 12, 12), n_iterations=2)
    with pytest.warns(UserWarning, match="training mode"):
        XNNConceptAttribution(xnn.train()).attribute(torch.rand(1, 3, 12, 12), layer="3")
