"""Sparseness (Gini) and Complexity (entropy): hand-computed values, Quantus parity, properties, per-sample
outputs, DDP and input validation (spec metrics.md §7, §11)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lightning_xai.metrics.complexity import Complexity, Sparseness
from lightning_xai.metrics.functional.complexity import complexity, sparseness


def one_hot(n_rows: int, n_cols: int, value: float = 1.0) -> torch.Tensor:
    maps = torch.zeros(1, 1, n_rows, n_cols)
    maps[0, 0, n_rows // 2, n_cols // 3] = value
    return maps


# ----------------------------------------------------------------------------------------------- hand values


@pytest.mark.parametrize("shape", [(2, 2), (4, 5), (8, 8)])
def test_extremes(shape):
    n = shape[0] * shape[1]
    hot = one_hot(*shape, value=-7.0)
    const = torch.full((1, 1, *shape), 0.3)
    assert sparseness(hot).item() == pytest.approx((n - 1) / n, abs=1e-5)
    assert sparseness(const).item() == pytest.approx(0.0, abs=1e-7)
    assert complexity(const).item() == pytest.approx(math.log(n), abs=1e-6)
    assert complexity(hot).item() == pytest.approx(0.0, abs=1e-6)


def test_hand_values():
    maps = torch.tensor([[[[1.0, -2.0], [3.0, 4.0]]]])
    # a = |x| / 4 = [.25, .5, .75, 1] (+1e-7); Gini = Σ (2i - n - 1) a_(i) / (n Σ a) = (-3/4 - 1/2 + 3/4 + 3) / 10
    assert sparseness(maps).item() == pytest.approx(2.5 / 10, abs=1e-6)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    assert complexity(maps).item() == pytest.approx(float(-(p * np.log(p)).sum()), abs=1e-6)


def test_all_zero_maps():
    zeros = torch.zeros(2, 1, 3, 3)
    maps = torch.cat([zeros, torch.ones(1, 1, 3, 3)])
    sp = Sparseness()
    sp.update(maps)
    # all-zero maps have no distribution: skipped (Quantus' epsilon scores them 0); the constant map scores 0
    assert sp.compute().item() == pytest.approx(0.0, abs=1e-7)
    assert (sp.count.item(), sp.n_skipped.item()) == (1, 2)
    assert torch.isnan(sparseness(maps, reduction="none")[:2]).all()
    cx = Complexity(return_per_sample=True)
    cx.update(maps)
    out = cx.compute()
    assert out["complexity"].item() == pytest.approx(math.log(9), abs=1e-6)
    assert (cx.count.item(), cx.n_skipped.item()) == (1, 2)
    assert torch.isnan(out["scores"][:2]).all() and out["scores"][2].item() == pytest.approx(math.log(9))
    assert torch.isnan(complexity(maps, reduction="none")[:2]).all()
    assert complexity(maps, reduction="sum").item() == pytest.approx(math.log(9), abs=1e-6)


def test_channel_reduction():
    maps = torch.zeros(1, 3, 2, 2)
    maps[0, :, 0, 0] = 1.0  # 3 of 12 elements, all in one pixel
    # Flattening every element (the default, as Quantus): 3 equal values among 12.
    assert complexity(maps).item() == pytest.approx(math.log(3), abs=1e-6)
    assert complexity(maps, channel_reduction="sum").item() == pytest.approx(0.0, abs=1e-6)
    # Gini of 3 ones among 12 elements: Σ_{i=10..12} (2i - 13) / (12 * 3)
    assert sparseness(maps).item() == pytest.approx((7 + 9 + 11) / 36, abs=1e-5)
    assert sparseness(maps, channel_reduction="max_abs").item() == pytest.approx(3 / 4, abs=1e-5)


def test_per_sample_and_accumulation():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, 1, 5, 5, generator=g), torch.randn(2, 1, 5, 5, generator=g)]
    metric = Sparseness(return_per_sample=True)
    for batch in batches:
        metric.update(batch)
    out = metric.compute()
    expected = sparseness(torch.cat(batches), reduction="none")
    torch.testing.assert_close(out["scores"], expected)
    torch.testing.assert_close(out["sparseness"], expected.mean())
    metric.reset()
    assert len(metric.scores) == 0 and metric.count.item() == 0


# ----------------------------------------------------------------------------------------------- Quantus parity


def reference_sparseness(a: np.ndarray) -> np.ndarray:
    """Quantus' Sparseness (abs, normalise by the batch max, +1e-7, Gini), written out."""
    a = np.abs(a.reshape(a.shape[0], -1)).astype(np.float64)
    a = a / a.max() if a.max() > 0 else a
    a = np.sort(a + 1e-7, axis=1)
    n = a.shape[1]
    i = np.arange(1, n + 1)
    return ((2 * i - n - 1) * a).sum(1) / (n * a.sum(1))


def reference_complexity(a: np.ndarray) -> np.ndarray:
    a = np.abs(a.reshape(a.shape[0], -1)).astype(np.float64)
    a = a / a.max()
    p = a / a.sum(1, keepdims=True)
    return -(p * np.log(p + 1e-12)).sum(1)


def quantus_scores(name: str, maps: np.ndarray) -> np.ndarray:
    """Quantus' own metric when it imports, otherwise its formulas written out above."""
    try:
        import quantus
    except Exception:
        return reference_sparseness(maps) if name == "sparseness" else reference_complexity(maps)
    cls = quantus.Sparseness if name == "sparseness" else quantus.Complexity
    out = cls(disable_warnings=True)(
        model=None, x_batch=np.zeros_like(maps), y_batch=np.zeros(len(maps), int), a_batch=maps.copy()
    )
    return np.asarray(out, dtype=np.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantus_parity(seed):
    rng = np.random.default_rng(seed)
    maps = (rng.normal(size=(8, 1, 12, 12)) * rng.random((8, 1, 1, 1)) * 5).astype(np.float32)
    maps[0] = 0.0
    maps[0, 0, 3, 4] = 2.0  # a one-hot map
    maps[1] = 1.5  # a constant map
    maps[2] = np.round(maps[2])  # many zeros and ties
    maps_t = torch.from_numpy(maps)
    for name, fn, cls in (("sparseness", sparseness, Sparseness), ("complexity", complexity, Complexity)):
        expected = quantus_scores(name, maps)
        np.testing.assert_allclose(fn(maps_t, reduction="none").double().numpy(), expected, atol=1e-4)
        # The written-out formulas agree with Quantus as well, so they stay a valid fallback.
        reference = reference_sparseness(maps) if name == "sparseness" else reference_complexity(maps)
        np.testing.assert_allclose(reference, expected, atol=1e-5)
        metric = cls()
        metric.update(maps_t[:5])
        metric.update(maps_t[5:])
        assert metric.compute().item() == pytest.approx(expected.mean(), abs=1e-4)


# ----------------------------------------------------------------------------------------------- properties

maps_strategy = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)),
    elements=st.floats(-10, 10, width=32),
)


@settings(max_examples=25, deadline=None)
@given(maps=maps_strategy)
def test_ranges(maps):
    maps_t = torch.from_numpy(maps)
    n = maps[0].size
    gini = sparseness(maps_t, reduction="none")
    entropy = complexity(maps_t, reduction="none")
    valid = ~torch.isnan(entropy)
    assert valid.tolist() == [bool(np.abs(m).max() > 0) for m in maps]
    assert torch.equal(~torch.isnan(gini), valid)  # both skip the all-zero maps
    gini = gini[valid]
    assert (gini >= -1e-6).all() and (gini <= (n - 1) / n + 1e-6).all()
    assert (entropy[valid] >= -1e-6).all() and (entropy[valid] <= math.log(n) + 1e-6).all()


@settings(max_examples=25, deadline=None)
@given(maps=maps_strategy, seed=st.integers(0, 2**16), scale=st.floats(0.01, 100))
def test_permutation_and_scale_invariance(maps, seed, scale):
    maps_t = torch.from_numpy(maps)
    perm = torch.randperm(maps.shape[0], generator=torch.Generator().manual_seed(seed))
    for fn in (sparseness, complexity):
        torch.testing.assert_close(fn(maps_t[perm]), fn(maps_t), equal_nan=True)
        torch.testing.assert_close(fn(maps_t * scale), fn(maps_t), equal_nan=True, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- DDP


def ddp_maps() -> torch.Tensor:
    maps = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    maps[2] = 0.0  # skipped by Complexity and Sparseness
    return maps


def _ddp_complexity(rank, world_size):
    maps = ddp_maps()
    half = maps.shape[0] // world_size
    metrics = {
        "sparseness": Sparseness(),
        "complexity": Complexity(),
        "sparseness_ps": Sparseness(return_per_sample=True),
        "complexity_ps": Complexity(return_per_sample=True),
    }
    for metric in metrics.values():
        metric.update(maps[rank * half : rank * half + 1])
        metric.update(maps[rank * half + 1 : (rank + 1) * half])
    out = {name: metric.compute() for name, metric in metrics.items()}
    metrics["complexity"].sync()
    out["skipped"] = metrics["complexity"].n_skipped.clone()
    return out


def test_ddp_equals_single_process(ddp):
    maps = ddp_maps()
    results = ddp(_ddp_complexity)
    for out in results:
        torch.testing.assert_close(out["sparseness"], sparseness(maps))
        torch.testing.assert_close(out["complexity"], complexity(maps))
        torch.testing.assert_close(
            out["sparseness_ps"]["scores"], sparseness(maps, reduction="none"), equal_nan=True
        )
        torch.testing.assert_close(
            out["complexity_ps"]["scores"], complexity(maps, reduction="none"), equal_nan=True
        )
        torch.testing.assert_close(out["complexity_ps"]["complexity"], complexity(maps))
        assert out["skipped"].item() == 1


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn", [sparseness, complexity])
def test_bad_inputs(fn):
    maps = torch.rand(2, 1, 4, 4)
    nan_maps = maps.clone()
    nan_maps[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fn(nan_maps)
    inf_maps = maps.clone()
    inf_maps[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="Inf"):
        fn(inf_maps)
    with pytest.raises(ValueError, match="3-D or 4-D"):
        fn(maps[:, :, None])
    with pytest.raises(ValueError, match="3-D or 4-D"):
        fn(maps[:, 0, 0])
    with pytest.raises(TypeError, match="attributions"):
        fn(maps.numpy())
    with pytest.raises(ValueError, match="reduction"):
        fn(maps, reduction="max")
    with pytest.raises(ValueError, match="channel_reduction"):
        fn(maps, channel_reduction="mean")
    with pytest.raises(ValueError, match="channel_reduction"):
        Sparseness(channel_reduction="mean")
