"""ExplanationConsistency: cosine / Pearson / SSIM values by hand, nonneg and agreement, per-sample form used
by the reweighting callback, properties, DDP and input validation (spec metrics.md §8, ece.md §2.4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torchmetrics.functional.image import structural_similarity_index_measure

from lightning_xai.metrics.consistency import ExplanationConsistency
from lightning_xai.metrics.functional.consistency import explanation_consistency


def pair(seed: int, shape=(4, 1, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


# ----------------------------------------------------------------------------------------------- cosine


def test_cosine_hand_values():
    a = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [2.0, 0.0]]])
    b = torch.tensor([[[5.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]], [[2.0, 0.0], [1.0, 2.0]]])
    # identical direction, orthogonal, <a,b> = 2 + 2 = 4, |a| = 3, |b| = 3
    expected = torch.tensor([1.0, 0.0, 4 / 9])
    torch.testing.assert_close(explanation_consistency(a, b, reduction="none"), expected)
    torch.testing.assert_close(explanation_consistency(a, b), expected.mean())
    torch.testing.assert_close(explanation_consistency(a, b, reduction="sum"), expected.sum())


def test_nonneg_modes():
    a = torch.tensor([[[1.0, -1.0]]])
    b = torch.tensor([[[1.0, 1.0]]])
    # relu: a -> [1, 0]: cos 45 degrees; abs: identical; none: orthogonal
    assert explanation_consistency(a, b).item() == pytest.approx(1 / math.sqrt(2))
    assert explanation_consistency(a, b, nonneg="abs").item() == pytest.approx(1.0)
    assert explanation_consistency(a, b, nonneg="none").item() == pytest.approx(0.0)
    assert explanation_consistency(-b, b, nonneg="none").item() == pytest.approx(-1.0)


def test_channel_reduction():
    a = torch.zeros(1, 3, 2, 2)
    a[0, 0, 0, 0], a[0, 1, 0, 0] = 2.0, -1.0  # signed sum: 1 at (0, 0)
    b = torch.zeros(1, 1, 2, 2)
    b[0, 0, 0, 0] = 4.0
    assert explanation_consistency(a, b).item() == pytest.approx(1.0)
    a[0, 2, 1, 1] = -1.0  # sum: [1, 0, 0, -1] -> relu [1, 0, 0, 0]; sum_abs: [3, 0, 0, 1]
    assert explanation_consistency(a, b).item() == pytest.approx(1.0)
    assert explanation_consistency(a, b, channel_reduction="sum_abs").item() == pytest.approx(
        3 / math.sqrt(10)
    )


def test_zero_and_degenerate_maps():
    a = torch.zeros(3, 4, 4)
    b = torch.rand(3, 4, 4) + 0.1
    a[2] = -1.0  # zero after relu
    a[1] = b[1]
    metric = ExplanationConsistency(return_per_sample=True)
    metric.update(a, b)
    out = metric.compute()
    torch.testing.assert_close(out["scores"], torch.tensor([0.0, 1.0, 0.0]))
    assert metric.n_degenerate.item() == 2
    assert explanation_consistency(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)).item() == 0.0
    tiny = torch.full((1, 2, 2), 1e-10)
    assert explanation_consistency(tiny, tiny).item() == 0.0  # norms below eps
    assert explanation_consistency(tiny, tiny, eps=0).item() == pytest.approx(1.0)


def test_identical_maps_give_one_in_float64():
    a, _ = pair(0, shape=(6, 1, 16, 16))
    scores = explanation_consistency(a.abs(), a.abs() * 3.7, reduction="none")
    assert (scores - 1).abs().max().item() < 1e-6


def test_agree_multiplies():
    a, b = pair(1)
    base = explanation_consistency(a, b, reduction="none")
    agree = torch.tensor([True, False, True, False])
    torch.testing.assert_close(explanation_consistency(a, b, agree, reduction="none"), base * agree)
    torch.testing.assert_close(explanation_consistency(a, b, agree.long(), reduction="none"), base * agree)
    metric = ExplanationConsistency()
    metric.update(a, b, agree=agree)
    torch.testing.assert_close(metric.compute(), (base * agree).mean())


# ----------------------------------------------------------------------------------------------- pearson, SSIM


def test_pearson_hand_values():
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]).repeat(4, 1, 1)
    b = torch.stack(
        [
            a[0] * 2 + 5,  # perfectly correlated
            a[0].flip(1).flip(0),  # reversed: -1
            torch.full((2, 2), 3.0),  # constant: 0
            torch.tensor([[1.0, 3.0], [2.0, 4.0]]),
        ]
    )
    # last: x = [1,2,3,4], y = [1,3,2,4]; centred x = [-1.5,-.5,.5,1.5], y = [-1.5,.5,-.5,1.5]; ρ = 4 / 5
    expected = torch.tensor([1.0, -1.0, 0.0, 0.8])
    got = explanation_consistency(a, b, similarity="pearson", nonneg="none", reduction="none")
    torch.testing.assert_close(got, expected)
    metric = ExplanationConsistency(similarity="pearson", nonneg="none")
    metric.update(a, b)
    assert metric.n_degenerate.item() == 1
    torch.testing.assert_close(metric.compute(), expected.mean())


def test_ssim_matches_torchmetrics_on_max_normalised_maps():
    a, b = pair(2, shape=(3, 1, 12, 12))
    a, b = a.relu(), b.relu()
    a[1] = b[1] * 2.5  # the same map up to scale: SSIM 1 after max-normalisation
    norm = lambda m: m / m.flatten(1).amax(1).view(-1, 1, 1, 1)  # noqa: E731
    expected = structural_similarity_index_measure(
        norm(a.double()), norm(b.double()), data_range=1.0, reduction="none"
    )
    got = explanation_consistency(a, b, similarity="ssim", reduction="none")
    torch.testing.assert_close(got, expected.float())
    assert got[1].item() == pytest.approx(1.0, abs=1e-6)
    small = explanation_consistency(
        a[:, :, :5, :5], b[:, :, :5, :5], similarity="ssim", ssim_kwargs={"sigma": 0.5}
    )
    assert -1.0 <= small.item() <= 1.0
    with pytest.raises(ValueError, match="ssim_kwargs"):
        explanation_consistency(a[:, :, :5, :5], b[:, :, :5, :5], similarity="ssim")


# ----------------------------------------------------------------------------------------------- properties

pair_strategy = st.integers(1, 4).flatmap(
    lambda b: st.tuples(
        *(hnp.arrays(np.float32, (b, 1, 6, 6), elements=st.floats(-5, 5, width=32)) for _ in range(2))
    )
)


@settings(max_examples=25, deadline=None)
@given(maps=pair_strategy, seed=st.integers(0, 2**16))
def test_properties(maps, seed):
    a, b = (torch.from_numpy(m) for m in maps)
    cosine = explanation_consistency(a, b, reduction="none")
    assert ((cosine >= 0) & (cosine <= 1 + 1e-6)).all()
    torch.testing.assert_close(cosine, explanation_consistency(b, a, reduction="none"))  # symmetric
    for similarity in ("cosine", "pearson", "ssim"):
        scores = explanation_consistency(a, b, similarity=similarity, nonneg="none", reduction="none")
        assert ((scores >= -1 - 1e-6) & (scores <= 1 + 1e-6)).all()
    perm = torch.randperm(a.shape[0], generator=torch.Generator().manual_seed(seed))
    for similarity in ("cosine", "pearson", "ssim"):
        torch.testing.assert_close(
            explanation_consistency(a[perm], b[perm], similarity=similarity),
            explanation_consistency(a, b, similarity=similarity),
        )


# ----------------------------------------------------------------------------------------------- DDP


def ddp_pairs():
    a, b = pair(5, shape=(8, 1, 8, 8))
    a[3] = -1.0  # degenerate after relu
    agree = torch.tensor([1, 1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    return a, b, agree


def _ddp_consistency(rank, world_size):
    a, b, agree = ddp_pairs()
    half = a.shape[0] // world_size
    rows = slice(rank * half, (rank + 1) * half)
    metrics = {
        "cosine": ExplanationConsistency(return_per_sample=True),
        "pearson": ExplanationConsistency(similarity="pearson"),
        "ssim": ExplanationConsistency(similarity="ssim", return_per_sample=True),
    }
    for metric in metrics.values():
        metric.update(a[rows], b[rows], agree[rows])
    out = {name: metric.compute() for name, metric in metrics.items()}
    metrics["cosine"].sync()
    out["n_degenerate"] = metrics["cosine"].n_degenerate.clone()
    return out


def test_ddp_equals_single_process(ddp):
    a, b, agree = ddp_pairs()
    results = ddp(_ddp_consistency)
    for out in results:
        for similarity in ("cosine", "ssim"):
            scores = explanation_consistency(a, b, agree, similarity=similarity, reduction="none")
            torch.testing.assert_close(out[similarity]["scores"], scores)
            torch.testing.assert_close(out[similarity]["consistency"], scores.mean())
        torch.testing.assert_close(out["pearson"], explanation_consistency(a, b, agree, similarity="pearson"))
        assert out["n_degenerate"].item() == 1


# ----------------------------------------------------------------------------------------------- bad input


def test_bad_inputs():
    a, b = pair(3)
    with pytest.raises(ValueError, match="same shape"):
        explanation_consistency(a, b[:, :, :4])
    with pytest.raises(ValueError, match="same shape"):
        explanation_consistency(a, b[:3])
    nan = a.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"attributions_a.*NaN"):
        explanation_consistency(nan, b)
    with pytest.raises(ValueError, match=r"attributions_b.*NaN"):
        explanation_consistency(a, nan)
    with pytest.raises(ValueError, match="3-D or 4-D"):
        explanation_consistency(a[:, :, None], b[:, :, None])
    with pytest.raises(ValueError, match="agree"):
        explanation_consistency(a, b, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="agree"):
        explanation_consistency(a, b, torch.full((4,), 0.5))
    with pytest.raises(TypeError, match="agree"):
        explanation_consistency(a, b, [True] * 4)
    with pytest.raises(ValueError, match="similarity"):
        ExplanationConsistency(similarity="spearman")
    with pytest.raises(ValueError, match="nonneg"):
        ExplanationConsistency(nonneg="square")
    with pytest.raises(ValueError, match="ssim_kwargs"):
        ExplanationConsistency(similarity="ssim", ssim_kwargs={"data_range": 2.0})
    with pytest.raises(ValueError, match="reduction"):
        explanation_consistency(a, b, reduction="max")
