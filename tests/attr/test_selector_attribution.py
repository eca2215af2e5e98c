"""SelectorAttribution: the COMET selector's mask through the Captum contract, and the metrics on it."""

from __future__ import annotations

import pytest
import torch
from captum.attr import visualization
from torch import nn

from lightning_xai.attr import SelectorAttribution
from lightning_xai.attr.comet import selector_logits, selector_mask
from lightning_xai.metrics import DeletionAUC, IoUAUC, PixelAveragePrecision, PointingGame
from lightning_xai.models import small_resnet
from lightning_xai.modules import ComprehensiveAttribution, small_selector


@pytest.fixture
def module() -> ComprehensiveAttribution:
    torch.manual_seed(0)
    return ComprehensiveAttribution(
        small_selector(4), small_resnet(4, width=4), small_resnet(4, width=4)
    ).eval()


def test_mask_equals_the_modules_explanation_and_is_class_agnostic(module):
    x = torch.rand(3, 3, 16, 16)
    explainer = SelectorAttribution(module)
    maps = explainer.attribute(x, target=1)
    assert maps.shape == (3, 1, 16, 16) and maps.dtype == x.dtype
    assert float(maps.min()) > 0 and float(maps.max()) < 1
    assert torch.equal(maps, module.explain(x))
    assert torch.equal(maps, explainer.attribute(x, target=torch.tensor([3, 0, 2])))
    assert torch.equal(maps, explainer.attribute(x))


def test_captum_structure_expansion_and_chunks(module):
    x = torch.rand(5, 3, 16, 16)
    explainer = SelectorAttribution(module)
    whole = explainer.attribute(x)
    (as_tuple,) = explainer.attribute((x,))
    assert torch.equal(as_tuple, whole)
    expanded = explainer.attribute(x, expand_to_input=True)
    assert expanded.shape == x.shape and torch.equal(expanded[:, 2:3], whole)
    assert torch.allclose(explainer.attribute(x, internal_batch_size=2), whole, atol=1e-6)
    figure, _ = visualization.visualize_image_attr(
        expanded[0].permute(1, 2, 0).numpy(), x[0].permute(1, 2, 0).numpy(), method="blended_heat_map",
        sign="positive", use_pyplot=False,
    )  # fmt: skip
    assert figure is not None


def test_model_state_is_left_alone(module):
    module.train()
    flags = {name: m.training for name, m in module.named_modules()}
    with pytest.warns(UserWarning, match="training mode"):
        SelectorAttribution(module).attribute(torch.rand(2, 3, 16, 16))
    assert flags == {name: m.training for name, m in module.named_modules()}
    assert all(p.grad is None for p in module.parameters())


def test_a_bare_selector_can_be_passed():
    selector = nn.Conv2d(3, 1, 3, padding=1).eval()
    x = torch.rand(2, 3, 8, 8)
    maps = SelectorAttribution(lambda inputs: inputs.mean((2, 3)), selector=selector).attribute(x)
    assert torch.allclose(maps, torch.sigmoid(selector(x)))


def test_selector_output_forms():
    x = torch.rand(2, 3, 16, 16)
    logits = torch.randn(2, 1, 4, 4)
    assert selector_logits({"out": logits}, (16, 16)).shape == (2, 1, 16, 16)
    assert selector_logits(logits[:, 0], (4, 4)).shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="one-channel map"):
        selector_logits(torch.randn(2, 3, 16, 16), (16, 16))
    with pytest.raises(ValueError, match="keys"):
        selector_logits({"aux": logits}, (16, 16))
    with pytest.raises(ValueError, match="one map per image"):
        selector_mask(lambda inputs: torch.zeros(1, 1, 16, 16), x)


def test_errors(module):
    with pytest.raises(ValueError, match="needs a selector"):
        SelectorAttribution(small_resnet(4, width=4))
    explainer = SelectorAttribution(module)
    with pytest.raises(ValueError, match="4-D"):
        explainer.attribute(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="target"):
        explainer.attribute(torch.rand(2, 3, 16, 16), target=[0, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        explainer.attribute(torch.full((1, 3, 16, 16), float("nan")))


def test_metrics_take_the_maps_like_any_other_method(module):
    torch.manual_seed(1)
    x = torch.rand(4, 3, 16, 16)
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    masks[:, 4:10, 4:10] = True
    maps = SelectorAttribution(module).attribute(x)
    for metric in (PixelAveragePrecision(), IoUAUC(), PointingGame(tolerance=1)):
        metric.update(maps, masks)
        value = float(metric.compute())
        assert 0.0 <= value <= 1.0
    # the module's forward returns (logits, mask, detector logits): the metrics read the logits
    deletion = DeletionAUC(module, resolution=4)
    deletion.update(x, maps, target=0)
    assert 0.0 <= float(deletion.compute()) <= 1.0


def test_a_target_beyond_the_modules_classes_is_refused(module):
    with pytest.raises(ValueError, match="number of classes"):
        SelectorAttribution(module).attribute(torch.rand(2, 3, 16, 16), target=10)
