"""The batched locally adaptive KDE of ADVISE (the method's specification).

The reference is the PyPI package ``adaptivekde`` (``ssvkernel``, a port of Shimazaki's code), configured as ADVISE
configures it: ``M = 10`` and a Gauss window. Its definitions of the span and of the smallest sample gap use
all samples, ours the output grid and the in-range samples; the test data lie in [0, 1] and contain 0 and 1,
so both coincide.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from adaptivekde.ssvkernel import ssvkernel
from scipy.signal import find_peaks

from lightning_xai.attr.kde import KDEResult, adaptive_kde, count_peaks

CENTRES = {1: [0.5], 2: [0.3, 0.7], 3: [0.2, 0.5, 0.8]}
SPREAD = {1: 0.12, 2: 0.06, 3: 0.04}
# A seed per (Z, modes) whose sample shows its modes and no spurious bump: with Z = 196 points an adaptive
# estimate also resolves sampling noise, and some draws do have an extra small peak (in both implementations).
SEEDS = {(49, 1): 0, (49, 2): 0, (49, 3): 0, (196, 1): 2, (196, 2): 1, (196, 3): 0}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def mixture(modes: int, size: int, seed: int) -> np.ndarray:
    """``size`` samples of a Gaussian mixture with ``modes`` components, clipped to [0, 1], with 0 and 1."""
    rng = np.random.default_rng(seed)
    draws = np.concatenate([rng.normal(c, SPREAD[modes], size) for c in CENTRES[modes]])
    x = np.clip(draws[rng.permutation(draws.size)[:size]], 0, 1)
    x[0], x[1] = 0.0, 1.0
    return x


def reference(x: np.ndarray, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    tin = np.linspace(0, 1, size or x.size)
    np.random.seed(0)  # the bootstrap (nbs=1, unused) draws from the global RNG
    y, _, optw, *_ = ssvkernel(x, tin, M=10, nbs=1, WinFunc="Gauss")
    return y, optw


def assert_matches_reference(result: KDEResult, row: int, y: np.ndarray, optw: np.ndarray) -> None:
    density = result.density[row].numpy()
    bandwidth = result.bandwidth[row].numpy()
    assert np.abs(density - y).max() <= 1e-6 * y.max()
    assert np.abs(bandwidth - optw).max() <= 1e-6 * np.abs(optw).max()
    assert np.all(np.abs(bandwidth - optw) <= 1e-6 * np.abs(optw))


# ------------------------------------------------------------------------------------------------------------
# §7.1: agreement with the reference implementation
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [49, 196])
@pytest.mark.parametrize("modes", [1, 2, 3])
def test_matches_adaptivekde_and_counts_the_modes(size, modes):
    x = mixture(modes, size, SEEDS[size, modes])
    y, optw = reference(x)
    result = adaptive_kde(torch.from_numpy(x))
    assert_matches_reference(result, 0, y, optw)
    assert int(result.peaks[0]) == modes == len(find_peaks(y)[0])
    assert bool(result.valid[0]) and float(result.dropped[0]) == 0.0
    assert int(result.grid_size[0]) == size


def test_batched_equals_reference_and_per_series():
    """All six series and a coarse-grid one in one call: each row equals the reference and its own call."""
    rows = [mixture(modes, 49, seed) for modes in (1, 2, 3) for seed in (0, 5)]
    # Few distinct values (a 0.1 lattice): the working grid is coarsened to 11 points and interpolated back.
    coarse = np.round(np.random.default_rng(3).uniform(0, 1, 49) * 10) / 10
    coarse[0], coarse[1] = 0.0, 1.0
    rows.append(coarse)
    batch = torch.from_numpy(np.stack(rows))
    result = adaptive_kde(batch, chunk_size=3)
    assert int(result.grid_size[-1]) == 11 and bool((result.grid_size[:-1] == 49).all())
    for i, x in enumerate(rows):
        y, optw = reference(x)
        assert_matches_reference(result, i, y, optw)
        assert int(result.peaks[i]) == len(find_peaks(y)[0])
        single = adaptive_kde(batch[i])
        torch.testing.assert_close(single.density[0], result.density[i], rtol=0, atol=1e-12)
        torch.testing.assert_close(single.bandwidth[0], result.bandwidth[i], rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# §7.2: properties
# ------------------------------------------------------------------------------------------------------------


def test_density_integrates_to_one_and_is_finite():
    gen = torch.Generator().manual_seed(0)
    samples = torch.rand(16, 49, generator=gen, dtype=torch.float64) ** 3
    result = adaptive_kde(samples)
    dt = 1 / 48
    assert torch.allclose((result.density * dt).sum(1), torch.ones(16, dtype=torch.float64), atol=1e-6)
    for value in (result.density, result.bandwidth, result.stiffness):
        assert bool(torch.isfinite(value).all())
    assert bool((result.density >= 0).all()) and bool((result.bandwidth > 0).all())
    assert bool(((result.stiffness > 0) & (result.stiffness <= 1)).all())


def test_degenerate_series():
    out_of_range = torch.full((9,), 3.0)
    at_endpoint = torch.zeros(9)
    inside = torch.full((9,), 0.5)
    half_dropped = torch.tensor([0.2, 0.4, 0.5, 0.6, 5.0, 6.0, 7.0, -1.0, 0.3])
    result = adaptive_kde(torch.stack([out_of_range, at_endpoint, inside, half_dropped]).double())
    assert result.valid.tolist() == [False, True, True, True]
    assert result.peaks.tolist()[:3] == [0, 0, 1]
    assert not bool(result.density[0].any()) and float(result.dropped[0]) == 1.0
    assert float(result.dropped[3]) == pytest.approx(4 / 9)
    assert bool(torch.isfinite(result.density).all()) and bool(torch.isfinite(result.bandwidth).all())
    # A constant series is a spike at its value.
    assert int(result.density[2].argmax()) == 4 and int(result.density[1].argmax()) == 0


def test_single_point_grid_and_empty_width_fail_cleanly():
    one = adaptive_kde(torch.rand(3, 1))
    assert not bool(one.valid.any()) and one.peaks.tolist() == [0, 0, 0]
    assert one.density.shape == (3, 1)


def test_float32_input_runs_in_float64_by_default():
    x = torch.from_numpy(mixture(2, 49, 0))
    result64 = adaptive_kde(x)
    result32 = adaptive_kde(x.float())
    assert result32.density.dtype == torch.float64
    assert int(result32.peaks[0]) == int(result64.peaks[0]) == 2


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"samples": torch.rand(2, 3, 4)}, ValueError),
        ({"samples": [0.1, 0.2]}, TypeError),
        ({"samples": torch.tensor([0.1, float("nan")])}, ValueError),
        ({"samples": torch.rand(4), "num_widths": 1}, ValueError),
        ({"samples": torch.rand(4), "grid": torch.tensor([0.0, 0.5, 0.2])}, ValueError),
        ({"samples": torch.rand(4), "tol": 0}, ValueError),
        ({"samples": torch.rand(4), "chunk_size": 0}, ValueError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        adaptive_kde(**kwargs)


# ------------------------------------------------------------------------------------------------------------
# §7.3: peaks
# ------------------------------------------------------------------------------------------------------------


def test_count_peaks_equals_scipy_find_peaks():
    gen = torch.Generator().manual_seed(0)
    # Small integers make plateaus, also at the ends; smooth random walks make ordinary peaks.
    plateaus = torch.randint(0, 4, (300, 12), generator=gen).double()
    walks = torch.randn(100, 40, generator=gen, dtype=torch.float64).cumsum(1)
    for values in (plateaus, walks):
        expected = [len(find_peaks(row.numpy())[0]) for row in values]
        assert count_peaks(values).tolist() == expected
    assert count_peaks(torch.tensor([1.0, 2.0])).tolist() == 0
    assert count_peaks(torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])).tolist() == [1]
    assert count_peaks(torch.tensor([[2.0, 1.0, 1.0, 2.0]])).tolist() == [0]
