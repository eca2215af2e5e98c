"""Deletion / insertion AUC, Average Drop and Increase in Confidence: hand-computed values, the spec's
acceptance checks (§11), batching, DDP and input validation."""

from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchmetrics import MetricCollection

from lightning_xai.explain import gaussian_blur
from lightning_xai.metrics.faithfulness import AverageDrop, DeletionAUC, IncreaseInConfidence, InsertionAUC
from lightning_xai.metrics.functional import (
    average_drop,
    deletion_auc,
    increase_in_confidence,
    insertion_auc,
)

# ----------------------------------------------------------------------------------------------- helpers


class LinearScore:
    """Logits ``[Σ w ⊙ x, 0]``: with ``score="logit"`` and target 0 the curve is a weighted pixel sum."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.weight).sum(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1)


class Counting:
    """Counts the calls of a forward function."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fn(x)


def constant_model(q: float):
    logits = torch.tensor([math.log(q), math.log(1 - q)])
    return lambda x: logits.to(x).expand(x.shape[0], 2)


def tiny_cnn(seed: int = 0, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    ).eval()


def region_model(x: torch.Tensor) -> torch.Tensor:
    """Confident in class 0 only while the top-left 8×8 region keeps its high-contrast texture."""
    region = x[:, :, :8, :8]
    # Neighbour contrast: 1 on a 0/1 checkerboard, 0 on zeros and about 0 once blurred.
    contrast = (region[..., 1:] - region[..., :-1]).abs().mean(dim=(1, 2, 3))
    s = 12 * contrast - 6
    return torch.stack([s, torch.zeros_like(s)], 1)


def checkerboard(batch: int, size: int) -> torch.Tensor:
    idx = torch.arange(size)
    board = ((idx[:, None] + idx[None, :]) % 2).float()
    return board.expand(batch, 3, size, size).clone()


CURVES = {"deletion": (DeletionAUC, deletion_auc), "insertion": (InsertionAUC, insertion_auc)}

# 4×4 image of ones, weight w = 0..15 (row-major) and the map equal to w: the ranking is pixel 15, 14, ...,
# so with a zeros baseline the logit after removing the top m pixels is Σ w − (15 + 14 + ... + (16 − m)).
ONES = torch.ones(1, 1, 4, 4)
W16 = torch.arange(16.0).view(1, 1, 4, 4)
HAND = {"resolution": 4, "baseline": "zeros", "score": "logit"}


# ----------------------------------------------------------------------------------------------- hand-computed


@pytest.mark.parametrize(
    ("mode", "integration", "curve", "expected"),
    [
        # p = 120, 66, 28, 6, 0 after removing 0, 4, 8, 12, 16 pixels.
        ("deletion", "right", [120, 66, 28, 6, 0], (66 + 28 + 6 + 0) / 4),
        ("deletion", "trapezoid", [120, 66, 28, 6, 0], (93 + 47 + 17 + 3) / 4),
        # p = 0, 54, 92, 114, 120 after restoring 0, 4, 8, 12, 16 pixels.
        ("insertion", "right", [0, 54, 92, 114, 120], (54 + 92 + 114 + 120) / 4),
        ("insertion", "trapezoid", [0, 54, 92, 114, 120], (27 + 73 + 103 + 117) / 4),
    ],
)
def test_hand_computed_pixel_curves(mode, integration, curve, expected):
    fn = CURVES[mode][1]
    out = fn(
        LinearScore(W16), ONES, W16, 0, cells_per_step=4, integration=integration, return_curves=True, **HAND
    )
    assert out["curves"].tolist() == [curve]
    assert out["auc"].item() == pytest.approx(expected)


def test_hand_computed_uneven_last_step():
    # k = 5 of n = 16: n_j = 0, 5, 10, 15, 16, weights 5, 5, 5, 1 (/16).
    out = deletion_auc(LinearScore(W16), ONES, W16, 0, cells_per_step=5, return_curves=True, **HAND)
    assert out["curves"].tolist() == [[120, 55, 15, 0, 0]]
    assert out["auc"].item() == pytest.approx((55 * 5 + 15 * 5 + 0 * 5 + 0 * 1) / 16)


def test_hand_computed_grid_upsampling_align_corners():
    # A 2×2 grid upsampled to 4×4 with align_corners=True: the cell (0,0) becomes outer(a, a) with
    # a = (1, 2/3, 1/3, 0). The model reads pixel (1,1) only; cells are ranked (0,0), (0,1), (1,0), (1,1).
    weight = torch.zeros(1, 1, 4, 4)
    weight[..., 1, 1] = 1
    grid_map = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    kwargs = {"resolution": 2, "baseline": "zeros", "score": "logit", "return_curves": True}
    # U_j at pixel (1,1): 4/9, 2/3, 8/9, 1 (k = max(1, 4 // 50) = 1 cell per step).
    deletion = deletion_auc(LinearScore(weight), ONES, grid_map, 0, **kwargs)
    torch.testing.assert_close(deletion["curves"], torch.tensor([[1, 5 / 9, 1 / 3, 1 / 9, 0]]))
    assert deletion["auc"].item() == pytest.approx((5 / 9 + 1 / 3 + 1 / 9 + 0) / 4)
    insertion = insertion_auc(LinearScore(weight), ONES, grid_map, 0, **kwargs)
    torch.testing.assert_close(insertion["curves"], torch.tensor([[0, 4 / 9, 2 / 3, 8 / 9, 1]]))
    assert insertion["auc"].item() == pytest.approx((4 / 9 + 2 / 3 + 8 / 9 + 1) / 4)


def test_hand_computed_softmax():
    # Logits [s / 40, 0]: the softmax probability of class 0 is sigmoid(s / 40) at each curve point.
    value = deletion_auc(
        LinearScore(W16 / 40),
        ONES,
        W16,
        0,
        resolution=4,
        cells_per_step=4,
        baseline="zeros",
        integration="right",
    )
    expected = sum(1 / (1 + math.exp(-s / 40)) for s in (66, 28, 6, 0)) / 4
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_larger_map_is_average_pooled_to_the_grid():
    # An 8×8 map whose 2×2 block means are W16 but whose single pixels rank differently.
    big = W16[0, 0].repeat_interleave(2, 0).repeat_interleave(2, 1).clone()
    big += torch.tensor([[30.0, -30.0], [-30.0, 30.0]]).repeat(4, 4)
    value = deletion_auc(LinearScore(W16), ONES, big[None], 0, cells_per_step=4, **HAND)
    assert value.item() == pytest.approx(25.0)


def test_smaller_map_is_upsampled_bilinearly_to_the_grid():
    torch.manual_seed(0)
    small = torch.rand(1, 2, 2)
    up = F.interpolate(small[:, None], size=(4, 4), mode="bilinear", align_corners=False)[:, 0]
    weight = torch.rand(1, 1, 4, 4)
    a = deletion_auc(LinearScore(weight), ONES, small, 0, cells_per_step=3, **HAND)
    b = deletion_auc(LinearScore(weight), ONES, up, 0, cells_per_step=3, **HAND)
    assert a.item() == b.item()


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
@pytest.mark.parametrize("preset", ["igos", "rise"])
def test_curve_end_points_are_the_clean_input_and_the_preset_baseline(mode, preset):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 16, 16)
    weight = torch.randn(1, 3, 16, 16)
    model = LinearScore(weight)
    out = CURVES[mode][1](
        model, x, torch.rand(2, 16, 16), 0, preset=preset, score="logit", return_curves=True
    )
    if preset == "igos":
        baseline = {"deletion": gaussian_blur(x, 51, 50.0), "insertion": gaussian_blur(x, 51, 50.0)}[mode]
    else:
        baseline = {"deletion": torch.zeros_like(x), "insertion": gaussian_blur(x, 11, 5.0)}[mode]
    clean, base = model(x)[:, 0], model(baseline)[:, 0]
    first, last = (clean, base) if mode == "deletion" else (base, clean)
    torch.testing.assert_close(out["curves"][:, 0], first)
    torch.testing.assert_close(out["curves"][:, -1], last)
    # RISE: one row of 16 pixels per step -> 16 steps; I-GOS: 28×28 grid, 15 cells per step -> 53 steps.
    assert out["curves"].shape == (2, 17 if preset == "rise" else 54)


@pytest.mark.parametrize("internal_batch_size", [128, 60])
def test_igos_default_matches_a_direct_loop_implementation(internal_batch_size):
    """The I-GOS definition written naively (one image, one step at a time) on a tiny CNN, 32 px input.

    With 53 steps per image, 60 images per call splits the second image across two calls."""
    model = tiny_cnn()
    torch.manual_seed(2)
    x, maps, target = torch.rand(2, 3, 32, 32), torch.rand(2, 32, 32), torch.tensor([0, 2])
    grid = F.adaptive_avg_pool2d(maps[:, None], 28)[:, 0].flatten(1)
    expected = {"deletion": [], "insertion": []}
    with torch.no_grad():
        for i in range(2):
            blurred = gaussian_blur(x[i : i + 1], 51, 50.0)
            order = sorted(range(784), key=lambda c, i=i: (-grid[i, c].item(), c))
            for mode in expected:
                auc, removed = 0.0, 0
                for j in range(1, 54):
                    n_j = min(j * 15, 784)
                    cells = torch.zeros(784)
                    cells[order[:n_j]] = 1
                    up = F.interpolate(
                        cells.view(1, 1, 28, 28), size=(32, 32), mode="bilinear", align_corners=True
                    )
                    if mode == "deletion":
                        xj = x[i : i + 1] * (1 - up) + blurred * up
                    else:
                        xj = blurred * (1 - up) + x[i : i + 1] * up
                    p = model(xj).softmax(-1)[0, target[i]].item()
                    auc += p * (n_j - removed) / 784
                    removed = n_j
                expected[mode].append(auc)
    for mode, (_, fn) in CURVES.items():
        value = fn(model, x, maps, target, internal_batch_size=internal_batch_size)
        assert value.item() == pytest.approx(sum(expected[mode]) / 2, abs=1e-5)


# ----------------------------------------------------------------------------------------------- §11 checks


@pytest.mark.parametrize(
    ("size", "resolution", "cells_per_step", "steps"),
    [(28, "preset", None, 53), (8, None, None, 64), (8, 4, 3, 6), (8, (2, 4), 5, 2)],
)
@pytest.mark.parametrize("integration", ["right", "trapezoid"])
@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_constant_probability_gives_q(size, resolution, cells_per_step, steps, integration, mode):
    q = 0.3
    _, fn = CURVES[mode]
    out = fn(
        constant_model(q),
        torch.rand(2, 3, size, size),
        torch.rand(2, size, size),
        0,
        resolution=resolution,
        cells_per_step=cells_per_step,
        integration=integration,
        return_curves=True,
    )
    assert out["auc"].item() == pytest.approx(q, abs=1e-6)
    assert out["curves"].shape == (2, steps + 1)


@pytest.mark.parametrize("preset", ["igos", "rise"])
def test_region_map_beats_background_map(preset):
    x = checkerboard(2, 32)
    on_region = torch.zeros(2, 32, 32)
    on_region[:, :8, :8] = 1
    background = 1 - on_region
    results = {}
    for mode, (_, fn) in CURVES.items():
        for name, maps in (("region", on_region), ("background", background)):
            results[mode, name] = fn(region_model, x, maps, 0, preset=preset).item()
    assert results["deletion", "region"] < results["deletion", "background"] - 0.3
    assert results["insertion", "region"] > results["insertion", "background"] + 0.3


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
@pytest.mark.parametrize("return_curves", [False, True])
def test_internal_batch_size_gives_identical_results_and_call_count(mode, return_curves):
    torch.manual_seed(3)
    x, maps = torch.rand(3, 3, 8, 8), torch.rand(3, 8, 8)
    model = LinearScore(torch.randn(1, 3, 8, 8) / 8)
    steps = math.ceil(16 / 3) + int(return_curves)  # 4×4 grid, 3 cells per step (+ the start)
    results: dict[bool, list] = {True: [], False: []}
    for ibs in (1, 7, 128):
        for target in (torch.tensor([0, 1, 0]), None):
            counting = Counting(model)
            metric = CURVES[mode][0](
                counting, resolution=4, cells_per_step=3, internal_batch_size=ibs, return_curves=return_curves
            )
            metric.update(x, maps, target)
            clean_calls = math.ceil(3 / ibs) if target is None else 0
            assert counting.calls == math.ceil(3 * steps / ibs) + clean_calls
            results[target is None].append(metric.compute())
    for same_target in results.values():
        for other in same_target[1:]:
            if return_curves:
                assert torch.equal(other["auc"], same_target[0]["auc"])
                assert torch.equal(other["curves"], same_target[0]["curves"])
            else:
                assert torch.equal(other, same_target[0])


def test_trapezoid_adds_the_start_point_to_the_model_calls():
    counting = Counting(constant_model(0.5))
    deletion_auc(
        counting, torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8), 0, preset="rise", internal_batch_size=5
    )
    assert counting.calls == math.ceil(2 * (8 + 1) / 5)


def _curve_values(mode, maps, **kwargs):
    torch.manual_seed(4)
    x = torch.rand(maps.shape[0], 3, 4, 4)
    model = LinearScore(torch.randn(1, 3, 4, 4))
    return CURVES[mode][1](model, x, maps, 0, resolution=4, cells_per_step=2, return_curves=True, **kwargs)


_maps = st.lists(st.integers(-20, 20), min_size=32, max_size=32).map(
    lambda v: torch.tensor(v).float().view(2, 4, 4)
)
_transforms = st.sampled_from(
    [
        lambda m: torch.exp(m / 4),
        lambda m: 3 * m + 1,
        lambda m: m**3,
        torch.atan,
        lambda m: torch.sigmoid(m / 10),
    ]
)


@settings(max_examples=25, deadline=None)
@given(maps=_maps, transform=_transforms, mode=st.sampled_from(["deletion", "insertion"]))
def test_monotone_transform_invariance_without_resampling(maps, transform, mode):
    a = _curve_values(mode, maps)
    b = _curve_values(mode, transform(maps))
    # constant maps are skipped (NaN rows) in both
    torch.testing.assert_close(a["curves"], b["curves"], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(a["auc"], b["auc"], rtol=0, atol=0, equal_nan=True)


@settings(max_examples=25, deadline=None)
@given(
    maps=_maps,
    perm_seed=st.integers(0, 1000),
    mode=st.sampled_from(["deletion", "insertion"]),
    preset=st.sampled_from(["igos", "rise"]),
)
def test_values_in_range_and_batch_permutation_invariance(maps, perm_seed, mode, preset):
    torch.manual_seed(perm_seed)
    x = torch.rand(4, 3, 8, 8)
    maps = F.interpolate(torch.cat([maps, -maps])[:, None], size=8)[:, 0]
    target = torch.tensor([0, 1, 2, 1])
    perm = torch.randperm(4)
    model = tiny_cnn()
    a = CURVES[mode][1](model, x, maps, target, preset=preset, resolution=4, return_curves=True)
    b = CURVES[mode][1](
        model, x[perm], maps[perm], target[perm], preset=preset, resolution=4, return_curves=True
    )
    constant = maps.flatten(1).amin(1) == maps.flatten(1).amax(1)
    assert torch.equal(a["curves"].isnan().all(1), constant)  # a constant map is skipped: a NaN row
    assert bool(constant.all()) == bool(a["auc"].isnan()) and (constant.all() or 0 <= a["auc"].item() <= 1)
    assert ((a["curves"][~constant] >= 0) & (a["curves"][~constant] <= 1)).all()
    torch.testing.assert_close(b["curves"], a["curves"][perm], equal_nan=True)
    torch.testing.assert_close(b["auc"], a["auc"], equal_nan=True)


class FlagRecorder(nn.Module):
    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(2, 2)
        self.seen: list[bool] = []
        self.fail_after = fail_after

    def forward(self, x):
        self.seen.append(self.training)
        if self.fail_after is not None and len(self.seen) > self.fail_after:
            raise RuntimeError("boom")
        return self.head(self.drop(self.conv(x).mean(dim=(2, 3))))


def _metrics_for(model, **kwargs):
    return [
        DeletionAUC(model, resolution=2, **kwargs),
        InsertionAUC(model, resolution=2, **kwargs),
        AverageDrop(model, **kwargs),
        IncreaseInConfidence(model, **kwargs),
    ]


@pytest.mark.parametrize("index", range(4))
def test_model_flags_restored_after_update_and_on_exceptions(index):
    x, maps = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    model = FlagRecorder().train()
    model.conv.weight.requires_grad_(False)
    metric = _metrics_for(model)[index]
    assert "conv" not in dict(metric.named_modules())  # the model is held, not registered
    metric.update(x, maps, [0, 1])
    assert model.seen and not any(model.seen)
    assert all(m.training for m in model.modules())
    assert not model.conv.weight.requires_grad and model.conv.bias.requires_grad

    failing = FlagRecorder(fail_after=1).train()  # the clean forward (target None) passes, the next one fails
    with pytest.raises(RuntimeError, match="boom"):
        _metrics_for(failing)[index].update(x, maps)
    assert failing.seen == [False, False]
    assert all(m.training for m in failing.modules())

    untouched = FlagRecorder().train()
    _metrics_for(untouched, force_eval=False)[index].update(x, maps, [0, 1])
    assert all(untouched.seen)


# ----------------------------------------------------------------------------------------------- DDP


def _ddp_data():
    torch.manual_seed(5)
    return torch.rand(8, 3, 8, 8), torch.rand(8, 8, 8), torch.randint(0, 3, (8,))


def _all_metrics(model):
    return {
        "deletion": DeletionAUC(model, resolution=4, return_curves=True, internal_batch_size=7),
        "insertion": InsertionAUC(model, preset="rise", return_curves=True),
        "average_drop": AverageDrop(model),
        "increase": IncreaseInConfidence(model, form="reference"),
    }


def _ddp_worker(rank: int, world_size: int):
    x, maps, target = _ddp_data()
    metrics = _all_metrics(tiny_cnn())
    per_rank = x.shape[0] // world_size
    for start in range(rank * per_rank, (rank + 1) * per_rank, 2):  # two updates per rank
        for metric in metrics.values():
            metric.update(x[start : start + 2], maps[start : start + 2], target[start : start + 2])
    return {name: metric.compute() for name, metric in metrics.items()}


def test_ddp_equals_single_process(ddp):
    x, maps, target = _ddp_data()
    metrics = _all_metrics(tiny_cnn())
    for metric in metrics.values():
        metric.update(x, maps, target)
    single = {name: metric.compute() for name, metric in metrics.items()}
    for result in ddp(_ddp_worker):
        for name in ("deletion", "insertion"):
            torch.testing.assert_close(result[name]["auc"], single[name]["auc"])
            torch.testing.assert_close(result[name]["curves"], single[name]["curves"])
        for name in ("average_drop", "increase"):
            torch.testing.assert_close(result[name], single[name])


# ----------------------------------------------------------------------------------------------- integration


def test_metric_collection_and_forward():
    model = tiny_cnn()
    torch.manual_seed(6)
    x, maps, target = torch.rand(4, 3, 8, 8), torch.rand(4, 8, 8), torch.tensor([0, 1, 2, 0])
    collection = MetricCollection(
        {
            "deletion": DeletionAUC(model, resolution=4),
            "insertion": InsertionAUC(model, resolution=4),
            "ad": AverageDrop(model),
            "ic": IncreaseInConfidence(model),
        }
    )
    collection.update(x[:2], maps[:2], target[:2])
    batch_values = collection(x[2:], maps[2:], target[2:])
    out = collection.compute()
    assert set(out) == set(batch_values) == {"deletion", "insertion", "ad", "ic"}
    torch.testing.assert_close(out["deletion"], deletion_auc(model, x, maps, target, resolution=4))
    torch.testing.assert_close(out["insertion"], insertion_auc(model, x, maps, target, resolution=4))
    torch.testing.assert_close(out["ad"], average_drop(model, x, maps, target))
    torch.testing.assert_close(out["ic"], increase_in_confidence(model, x, maps, target))
    torch.testing.assert_close(
        batch_values["deletion"], deletion_auc(model, x[2:], maps[2:], target[2:], resolution=4)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    model = tiny_cnn().cuda()
    x, maps = torch.rand(2, 3, 8, 8, device="cuda"), torch.rand(2, 8, 8, device="cuda")
    metric = DeletionAUC(model, resolution=4, return_curves=True).cuda()
    metric.update(x, maps)
    out = metric.compute()
    assert out["auc"].device.type == "cuda"
    cpu = deletion_auc(model.cpu(), x.cpu(), maps.cpu(), model.cuda()(x).argmax(1).cpu(), resolution=4)
    torch.testing.assert_close(out["auc"].cpu(), cpu, atol=1e-5, rtol=0)


def test_target_none_is_the_clean_argmax():
    model = tiny_cnn()
    x, maps = torch.rand(3, 3, 8, 8), torch.rand(3, 8, 8)
    target = model(x).argmax(1)
    for fn in (deletion_auc, insertion_auc):
        assert fn(model, x, maps, resolution=4).item() == fn(model, x, maps, target, resolution=4).item()
    for fn in (average_drop, increase_in_confidence):
        assert fn(model, x, maps).item() == fn(model, x, maps, target).item()


# ----------------------------------------------------------------------------------------------- AD / IC


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_average_drop_and_increase_hand_computed():
    # x = ones (2×2), map [[1,2],[3,5]]. Sample 0 reads Σ x, sample 1 −Σ x (weights ±1 per sample).
    x = torch.ones(2, 1, 2, 2)
    maps = torch.tensor([[1.0, 2.0], [3.0, 5.0]]).expand(2, 2, 2)

    def model(inp):
        s = inp.sum(dim=(1, 2, 3)) * torch.tensor([1.0, -1.0])[: inp.shape[0]]
        return torch.stack([s, torch.zeros_like(s)], 1)

    # minmax: E = [[0, .25], [.5, 1]] -> Σ x̃ = 1.75; max: E = map / 5 -> 2.2; none: E = map -> 11.
    for normalize, masked in (("minmax", 1.75), ("max", 2.2), ("none", 11.0)):
        y = [sigmoid(4), sigmoid(-4)]
        o = [sigmoid(masked), sigmoid(-masked)]
        expected_ad = sum(max(0.0, yi - oi) / (yi + 1e-7) for yi, oi in zip(y, o, strict=True)) / 2
        expected_ic = sum(oi > yi for yi, oi in zip(y, o, strict=True)) / 2
        ad = average_drop(model, x, maps, 0, normalize=normalize)
        ic = increase_in_confidence(model, x, maps, 0, normalize=normalize)
        assert ad.item() == pytest.approx(expected_ad, abs=1e-6)
        assert ic.item() == pytest.approx(expected_ic)


def test_reference_form_uses_the_top_class_on_the_masked_input():
    # Σ x = 4 but the map keeps half of the −2 pixel only: Σ x̃ = −1, so class 1 is on top on x̃.
    x = torch.tensor([[[[2.0, 2.0], [2.0, -2.0]]]])
    maps = torch.tensor([[[0.0, 0.0], [0.0, 0.5]]])
    model = LinearScore(torch.ones(1, 1, 2, 2))
    standard = average_drop(model, x, maps, 0, normalize="none")
    reference = average_drop(model, x, maps, 0, normalize="none", form="reference")
    assert standard.item() == pytest.approx((sigmoid(4) - sigmoid(-1)) / (sigmoid(4) + 1e-7), abs=1e-6)
    assert reference.item() == pytest.approx((sigmoid(4) - sigmoid(1)) / (sigmoid(4) + 1e-7), abs=1e-6)


def test_constant_map_keeps_nothing_under_minmax():
    model = LinearScore(torch.ones(1, 1, 2, 2))
    x = torch.ones(1, 1, 2, 2)
    ad = average_drop(model, x, torch.full((1, 2, 2), 3.0), 0)
    assert ad.item() == pytest.approx((sigmoid(4) - 0.5) / (sigmoid(4) + 1e-7), abs=1e-6)


def test_average_drop_matches_torchcam():
    torchcam_metrics = pytest.importorskip(
        "torchcam.metrics", reason="torchcam is not installed (bench extra)"
    )
    model = tiny_cnn(num_classes=5)
    torch.manual_seed(7)
    x = torch.rand(6, 3, 16, 16)
    raw = torch.rand(6, 4, 4)
    # torch-cam's normalisation of its CAMs (min-max with an epsilon), then the same bilinear resize.
    cams = raw - raw.flatten(1).amin(1)[:, None, None]
    cams = cams / (cams.flatten(1).amax(1)[:, None, None] + 1e-8)

    class FixedCAM:
        """A torch-cam extractor stand-in that returns precomputed CAMs."""

        def __init__(self, model):
            self.model = model

        def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
            return [cams]

        def fuse_cams(self, cam_list):
            return cam_list[0]

        def _hooks_off(self):
            return nullcontext()

    target = [0, 1, 2, 3, 4, 0]
    reference = torchcam_metrics.ClassificationMetric(FixedCAM(model), partial(torch.softmax, dim=-1))
    reference.update(x, target)
    summary = reference.summary()
    ad = average_drop(model, x, cams, target, normalize="none")
    ic = increase_in_confidence(model, x, cams, target, normalize="none")
    assert ad.item() == pytest.approx(summary["avg_drop"], abs=1e-6)
    assert ic.item() == pytest.approx(summary["conf_increase"])


# ----------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_before_work():
    model = Counting(tiny_cnn())
    x, maps = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    nan_maps = maps.clone()
    nan_maps[0, 0, 0] = float("nan")
    for fn in (deletion_auc, insertion_auc, average_drop, increase_in_confidence):
        with pytest.raises(ValueError, match="NaN"):
            fn(model, x, nan_maps, 0)
        with pytest.raises(ValueError, match="batch size"):
            fn(model, x, maps[:1], 0)
        with pytest.raises(ValueError, match="attributions"):
            fn(model, x, maps[0], 0)
        with pytest.raises(ValueError, match="channels"):
            fn(model, x, torch.rand(2, 2, 8, 8), 0)
        with pytest.raises(ValueError, match="inputs"):
            fn(model, x[0], maps, 0)
        with pytest.raises(TypeError, match="target"):
            fn(model, x, maps, torch.tensor([0.5, 1.0]))
        with pytest.raises(ValueError, match="target"):
            fn(model, x, maps, -1)
        with pytest.raises(ValueError, match="target"):
            fn(model, x, maps, [0])
    assert model.calls == 0
    for fn in (deletion_auc, insertion_auc, average_drop, increase_in_confidence):
        with pytest.raises(ValueError, match="number of classes"):
            fn(model, x, maps, 3)
        with pytest.raises(ValueError, match=r"\(B, K\)|2-D"):
            fn(lambda t: t.sum(dim=(1, 2, 3)), x, maps, 0)
        with pytest.raises(ValueError, match=r"\(B, K\)|2-D"):
            fn(lambda t: t.mean(-1), x, maps, 0)
    with pytest.raises(TypeError, match="forward_func"):
        DeletionAUC("not a model")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"preset": "lime"},
        {"resolution": 0},
        {"resolution": (4, 4, 4)},
        {"resolution": "pixels"},
        {"cells_per_step": 0},
        {"blur_kernel": 4},
        {"blur_sigma": -1.0},
        {"integration": "left"},
        {"internal_batch_size": 0},
        {"score": "prob"},
        {"baseline": "noise"},
        {"channel_reduction": "none"},
    ],
)
def test_bad_curve_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DeletionAUC(tiny_cnn(), **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"normalize": "l2"}, {"form": "top"}, {"internal_batch_size": -1}, {"channel_reduction": "none"}],
)
def test_bad_confidence_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AverageDrop(tiny_cnn(), **kwargs)


def test_max_normalisation_rejects_negative_maps():
    with pytest.raises(ValueError, match="non-negative"):
        average_drop(tiny_cnn(), torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8), 0, normalize="max")


def test_curves_must_keep_their_length_across_updates():
    metric = DeletionAUC(tiny_cnn(), preset="rise", return_curves=True)
    metric.update(torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), 0)
    with pytest.raises(ValueError, match="same length"):
        metric.update(torch.rand(1, 3, 4, 4), torch.rand(1, 4, 4), 0)
