"""ADVISE: the acceptance checks of the method's specification and the Captum contract.

The KDE itself is tested in ``test_kde.py``; the AVX protocol on hand cases in ``tests/metrics/test_avx.py``
(a miss with a failed CS check gives 0, |CS| = 0.55 passes, a NaN CS is stored as 0 and fails, both AD forms).
Here the scores ADVISE computes for its groups are checked against that metric.
"""

from __future__ import annotations

import matplotlib
import pytest
import timm
import torch
from captum.attr import LayerAttribution
from captum.attr import visualization as viz
from torch import nn

from lightning_xai.attr import ADVISE, ADVISEDetails
from lightning_xai.attr.advise.groups import group_cams, rescale_maps, upsample_maps
from lightning_xai.metrics import ModelRandomizationCheck
from lightning_xai.metrics.functional import avx_score

matplotlib.use("Agg")

MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)
NORM = (MEAN, STD)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_net(seed: int = 0, dtype: torch.dtype = torch.float32, classes: int = 5) -> nn.Sequential:
    """conv → ReLU → conv → ReLU ("3", the explained layer) → global pool → linear."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, classes),
    )
    with torch.no_grad():
        model[2].weight.mul_(1.5)
    return model.to(dtype).eval()


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


def pixels(batch: int = 3, size: int = 24, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


class CountingForward(nn.Module):
    """Counts forward calls; raises on call ``fail_at`` (1-based) when given."""

    def __init__(self, model: nn.Module, fail_at: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)
        self.calls = 0
        self.fail_at = fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("boom inside forward")
        return self.model(x)


# ------------------------------------------------------------------------------------------------------------
# §7.4, §7.5: linearity of the group maps, softmax gradients
# ------------------------------------------------------------------------------------------------------------


def test_group_maps_sum_to_the_whole_layer_map_and_gradients_are_of_the_softmax():
    model = tiny_net(dtype=torch.float64)
    x = normalised(pixels(dtype=torch.float64))
    explainer = ADVISE(model, "3", NORM)
    acts, grad1, grad2, probs, top1, top2 = explainer._forward_backward(x, (), None, None)

    features = model[:4](x).detach().requires_grad_(True)
    p = model[4:](features).softmax(1)
    assert torch.equal(top1, p.argmax(1))
    assert torch.equal(top2, p.scatter(1, top1[:, None], -1.0).argmax(1))
    (expected1,) = torch.autograd.grad(p.gather(1, top1[:, None]).sum(), features, retain_graph=True)
    (expected2,) = torch.autograd.grad(p.gather(1, top2[:, None]).sum(), features)
    torch.testing.assert_close(acts, features.detach())
    torch.testing.assert_close(grad1, expected1)
    torch.testing.assert_close(grad2, expected2)
    torch.testing.assert_close(probs, p.detach())

    relevance, _ = explainer._relevance(acts)
    assert relevance.shape == (3, 12) and int(relevance.max()) >= 2  # several groups to sum
    alpha = grad1.mean((2, 3))
    maps = group_cams(acts, alpha, relevance)
    torch.testing.assert_close(maps.sum(1), (alpha[:, :, None, None] * acts).sum(1), rtol=0, atol=1e-12)
    # Each group map uses only its own channels.
    for g in range(maps.shape[1]):
        members = (relevance == g).to(acts.dtype)
        own = ((alpha * members)[:, :, None, None] * acts).sum(1)
        torch.testing.assert_close(maps[:, g], own, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# Selection, the AVX protocol reused, details
# ------------------------------------------------------------------------------------------------------------


def test_avx_selection_scores_groups_with_the_avx_metric():
    model = tiny_net()
    images = pixels()
    maps, details = ADVISE(model, "3", NORM).attribute(normalised(images), return_details=True)
    assert isinstance(details, ADVISEDetails)
    valid = details.valid_groups
    assert bool(valid.any(1).all()) and int(valid.sum()) > images.shape[0]  # several groups compete
    scores = details.group_scores
    assert set(scores) >= {"avx", "ad", "ad_reference", "ssim", "fsim", "nmse", "class_sensitivity"}
    assert bool(torch.isnan(scores["avx"][~valid]).all()) and not bool(
        torch.isnan(scores["avx"][valid]).any()
    )
    for b, g in valid.nonzero().tolist():
        top1 = upsample_maps(details.group_maps[b, g][None, None], (24, 24))[0]
        top2 = upsample_maps(details.runner_up_maps[b, g][None, None], (24, 24))[0]
        expected = avx_score(
            model,
            images[b : b + 1],
            top1,
            top2,
            target=details.target[b : b + 1],
            normalization=NORM,
            return_per_sample=True,
        )
        for key, value in expected.items():
            assert float(scores[key][b, g]) == pytest.approx(float(value[0]), abs=1e-5), key
    # The chosen group has the best AVX; ties go to the smallest peak count.
    table = torch.where(valid, scores["avx"], -1.0)
    best = table.max(1, keepdim=True).values
    first_best = (table == best).float().argmax(1)
    assert torch.equal(details.selected_group, first_best)
    index = torch.arange(images.shape[0])
    torch.testing.assert_close(maps[:, 0], details.group_maps[index, details.selected_group])
    assert torch.equal(details.selected_size, details.group_sizes[index, details.selected_group])
    assert torch.equal(details.group_sizes.sum(1), torch.full((3,), 12))
    assert torch.equal(
        details.relevance.flatten().bincount(minlength=valid.shape[1]), details.group_sizes.sum(0)
    )
    assert set(details.timings) == {"forward_backward", "kde", "groups", "selection"}
    assert bool((details.time_per_group > 0).all())


def test_largest_group_is_deterministic_and_runs_no_avx_forwards():
    counting = CountingForward(tiny_net())
    x = normalised(pixels())
    explainer = ADVISE(counting, "model.3", NORM)
    first, details = explainer.attribute(x, selection="largest_group", return_details=True)
    assert counting.calls == 1 and details.group_scores == {}
    second = explainer.attribute(x, selection="largest_group")
    assert torch.equal(first, second)
    sizes = torch.where(details.valid_groups, details.group_sizes, -1)
    sizes[:, 0] = torch.where((sizes[:, 1:] >= 0).any(1), -1, sizes[:, 0])  # g = 0 only as a last resort
    assert torch.equal(details.selected_group, sizes.argmax(1))
    counting.calls = 0
    explainer.attribute(x)
    assert counting.calls == 1 + 1  # the gradient pass, then one chunk of masked images for all groups
    counting.calls = 0
    explainer.attribute(x, internal_batch_size=2)
    assert counting.calls > 2 + 1


def test_internal_batch_size_and_tuple_inputs_do_not_change_the_result():
    model = tiny_net()
    x = normalised(pixels())
    explainer = ADVISE(model, model[3], NORM)
    whole, details = explainer.attribute(x, target=[0, 1, 2], return_details=True)
    chunked, chunk_details = explainer.attribute(
        (x,), target=[0, 1, 2], return_details=True, internal_batch_size=1
    )
    torch.testing.assert_close(whole, chunked)
    assert torch.equal(details.relevance, chunk_details.relevance)
    torch.testing.assert_close(details.group_scores["avx"], chunk_details.group_scores["avx"], equal_nan=True)
    assert details.target.tolist() == [0, 1, 2]


def test_upsample_range_and_captum_tools():
    model = tiny_net()
    x = normalised(pixels())
    explainer = ADVISE(model, "3", NORM)
    assert isinstance(explainer, LayerAttribution)
    layer_maps = explainer.attribute(x, target=1)
    assert layer_maps.shape == (3, 1, 12, 12) and layer_maps.dtype == x.dtype
    up = explainer.attribute(x, target=1, upsample=True)
    assert up.shape == (3, 1, 24, 24)
    for maps in (layer_maps, up):
        assert bool(torch.isfinite(maps).all()) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert float(layer_maps.amax((1, 2, 3)).min()) == 1.0  # min-max rescaled
    assert LayerAttribution.interpolate(layer_maps, (24, 24)).shape == (3, 1, 24, 24)
    figure, _ = viz.visualize_image_attr(
        up[0].permute(1, 2, 0).numpy(),
        pixels()[0].permute(1, 2, 0).numpy(),
        method="blended_heat_map",
        sign="positive",
        use_pyplot=False,
    )
    assert figure is not None


def test_activation_scaling_and_dropped_fraction():
    model = tiny_net()
    with torch.no_grad():
        model[2].weight.mul_(6)  # activations well above 1: ADVISE's KDE ignores them
    x = normalised(pixels())
    _, plain = ADVISE(model, "3", NORM).attribute(x, selection="largest_group", return_details=True)
    acts = model[:4](x)
    expected = ((acts < 0) | (acts > 1)).double().mean((1, 2, 3))
    torch.testing.assert_close(plain.dropped_fraction, expected)
    assert float(plain.dropped_fraction.min()) > 0.1
    _, scaled = ADVISE(model, "3", NORM, activation_scaling="minmax").attribute(
        x, selection="largest_group", return_details=True
    )
    assert float(scaled.dropped_fraction.max()) == 0.0
    assert not torch.equal(plain.relevance, scaled.relevance)


def test_tiny_layers_give_finite_maps_and_a_dead_layer_falls_back_to_zeros():
    # A 1x1 layer: no KDE possible (Z = 1), every channel in group 0, a constant map.
    model = tiny_net()
    maps, details = ADVISE(model, "4", NORM).attribute(normalised(pixels()), return_details=True)
    assert maps.shape == (3, 1, 1, 1) and bool(torch.isfinite(maps).all())
    assert bool((details.relevance == 0).all())
    # A layer whose activations are all zero: no group survives; the whole-layer map is zero too.
    dead = tiny_net()
    with torch.no_grad():
        dead[2].bias.fill_(-1e3)
    maps, details = ADVISE(dead, "3", NORM).attribute(normalised(pixels()), return_details=True)
    assert not bool(maps.any())
    assert details.selected_group.tolist() == [-1, -1, -1] and details.selected_size.tolist() == [12] * 3


# ------------------------------------------------------------------------------------------------------------
# §7.7: axioms and the randomisation sanity check
# ------------------------------------------------------------------------------------------------------------


def test_class_sensitivity_on_a_resnet18():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = normalised(pixels(2, 96, seed=3))
    explainer = ADVISE(model, "layer4", NORM)
    maps0 = explainer.attribute(x, target=0)
    maps1 = explainer.attribute(x, target=1)
    assert maps0.shape == (2, 1, 3, 3)  # Z = 9: still a finite map
    assert bool(torch.isfinite(maps0).all())
    assert float((maps0 - maps1).abs().amax((1, 2, 3)).min()) > 0.1


class SplitConvNet(nn.Module):
    """``tiny_net`` with its second convolution split into two convolutions whose outputs are summed."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        conv = net[2]
        share = torch.rand(
            conv.weight.shape, generator=torch.Generator().manual_seed(7), dtype=conv.weight.dtype
        )
        self.first = nn.Sequential(net[0], net[1])
        self.part_a = nn.Conv2d(8, 12, 3, padding=1).to(conv.weight.dtype)
        self.part_b = nn.Conv2d(8, 12, 3, padding=1).to(conv.weight.dtype)
        with torch.no_grad():
            self.part_a.weight.copy_(conv.weight * share)
            self.part_b.weight.copy_(conv.weight * (1 - share))
            self.part_a.bias.copy_(conv.bias * 3)
            self.part_b.bias.copy_(conv.bias * -2)
        self.act = nn.ReLU()
        self.head = net[4:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.first(x)
        return self.head(self.act(self.part_a(hidden) + self.part_b(hidden)))


@pytest.mark.parametrize("selection", ["avx", "largest_group"])
def test_implementation_invariance(selection):
    net = tiny_net(dtype=torch.float64)
    split = SplitConvNet(tiny_net(dtype=torch.float64)).eval()
    x = normalised(pixels(dtype=torch.float64))
    torch.testing.assert_close(split(x), net(x))
    maps, details = ADVISE(net, "3", NORM).attribute(x, selection=selection, return_details=True)
    split_maps, split_details = ADVISE(split, "act", NORM).attribute(
        x, selection=selection, return_details=True
    )
    assert torch.equal(details.relevance, split_details.relevance)
    assert torch.equal(details.selected_group, split_details.selected_group)
    torch.testing.assert_close(maps, split_maps, rtol=0, atol=1e-8)


def test_model_randomization_changes_the_map():
    model = tiny_net()
    x = normalised(pixels(4))

    def explain(network, inputs, target):
        return ADVISE(network, "3", NORM).attribute(inputs, target=target, upsample=True)

    check = ModelRandomizationCheck(model, explain, similarity="spearman", skip_layers=True)
    check.update(x, torch.tensor([0, 1, 2, 3]))
    result = check.compute()["spearman"]
    assert float(result["original"]) == pytest.approx(1.0)
    assert float(result["last"]) < 0.5


# ------------------------------------------------------------------------------------------------------------
# §7.8: Captum contract, model state, errors
# ------------------------------------------------------------------------------------------------------------


def test_model_state_restored_also_after_an_exception():
    counting = CountingForward(tiny_net(), fail_at=2)  # the AVX forward of the masked images fails
    counting.model[0].weight.requires_grad_(False)
    counting.train()
    layer = counting.model[3]
    hooks = (len(layer._forward_hooks), len(counting._forward_hooks))
    x = normalised(pixels())
    with pytest.warns(UserWarning, match="training mode"), pytest.raises(RuntimeError, match="boom"):
        ADVISE(counting, layer, NORM).attribute(x)
    assert counting.training and counting.model[3].training
    assert (len(layer._forward_hooks), len(counting._forward_hooks)) == hooks
    assert not counting.model[0].weight.requires_grad and counting.model[2].weight.requires_grad
    assert all(p.grad is None for p in counting.parameters())
    counting.fail_at = None
    counting.eval()
    maps = ADVISE(counting, layer, NORM).attribute(x)
    assert bool(torch.isfinite(maps).all()) and len(layer._forward_hooks) == hooks[0]
    assert all(p.grad is None for p in counting.parameters())


def test_bad_arguments():
    model = tiny_net()
    x = normalised(pixels())
    explainer = ADVISE(model, "3", NORM)
    with pytest.raises(ValueError, match="selection"):
        explainer.attribute(x, selection="best")
    with pytest.raises(ValueError, match="at least 11x11"):
        explainer.attribute(normalised(pixels(size=8)))
    explainer.attribute(normalised(pixels(size=8)), selection="largest_group")  # no AVX, any size
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ADVISE(model, "3").attribute(x)  # normalised inputs taken for pixels
    with pytest.raises(ValueError, match="target"):
        explainer.attribute(x, target=9)
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        ADVISE(model, "6", NORM).attribute(x, selection="largest_group")
    with pytest.raises(ValueError, match="inputs"):
        explainer.attribute((x, x))
    with pytest.raises(TypeError, match="upsample"):
        explainer.attribute(x, upsample=1)
    with pytest.raises(ValueError, match="activation_scaling"):
        ADVISE(model, "3", activation_scaling="zscore")
    with pytest.raises(ValueError, match="cs_threshold"):
        ADVISE(model, "3", cs_threshold=2.0)
    with pytest.raises(TypeError, match="layer"):
        ADVISE(lambda inputs: model(inputs), "3")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        explainer.attribute(x)
    # A plain function with the layer given as a module works.
    maps = ADVISE(lambda inputs: model(inputs), model[3], NORM).attribute(x)
    assert maps.shape == (3, 1, 12, 12)


def test_rescale_maps_constant_to_zero():
    maps = torch.tensor([[[[1.0, 3.0], [2.0, 1.0]], [[2.0, 2.0], [2.0, 2.0]]]])
    out = rescale_maps(maps)
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 1.0], [0.5, 0.0]]))
    assert not bool(out[0, 1].any())
