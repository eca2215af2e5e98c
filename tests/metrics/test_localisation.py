"""Pointing game, energy pointing game, IoU-AUC and PxAP: hand-computed values, Quantus and COMET parity,
properties, DDP and input validation (spec metrics.md §3-§6, §11)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lightning_xai.metrics.functional import (
    energy_pointing_game,
    iou_auc,
    pixel_average_precision,
    pointing_game,
)
from lightning_xai.metrics.functional.localisation import _count_sorted
from lightning_xai.metrics.localisation import EnergyPointingGame, IoUAUC, PixelAveragePrecision, PointingGame

# ----------------------------------------------------------------------------------------------- helpers


def box_masks(batch: int, size: int, top: int, left: int, height: int, width: int) -> torch.Tensor:
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    masks[:, top : top + height, left : left + width] = True
    return masks


def peaked(batch: int, size: int, points: list[tuple[int, int]]) -> torch.Tensor:
    maps = torch.rand(batch, size, size, generator=torch.Generator().manual_seed(0)) * 0.5
    for i, (r, c) in enumerate(points):
        maps[i, r, c] = 1.0
    return maps


def random_data(seed: int, batch: int = 6, size: int = 12, empty_rows: int = 0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(batch, 1, size, size, generator=g)
    masks = torch.rand(batch, size, size, generator=g) > 0.7
    masks[:empty_rows] = False
    return maps, masks


# ----------------------------------------------------------------------------------------------- pointing game


@pytest.mark.parametrize("tolerance", [0, 15])
def test_pointing_game_peaked_on_object_or_background(tolerance):
    masks = box_masks(2, 48, 4, 4, 6, 6)
    on_object = peaked(2, 48, [(6, 6), (9, 9)])
    on_background = peaked(2, 48, [(40, 40), (30, 45)])
    assert pointing_game(on_object, masks, tolerance=tolerance).item() == 1.0
    assert pointing_game(on_background, masks, tolerance=tolerance).item() == 0.0


def test_pointing_game_near_miss_within_tolerance():
    # Foreground at column 5; the peak at column 9 is 4 px away, at (3, 4) offset 5 px away.
    masks = box_masks(1, 16, 8, 5, 1, 1)
    straight = peaked(1, 16, [(8, 9)])
    diagonal = peaked(1, 16, [(11, 9)])
    assert pointing_game(straight, masks, tolerance=0).item() == 0.0
    assert pointing_game(straight, masks, tolerance=4).item() == 0.0  # the distance must be < tolerance
    assert pointing_game(straight, masks, tolerance=4.01).item() == 1.0
    assert pointing_game(diagonal, masks, tolerance=5).item() == 0.0
    assert pointing_game(diagonal, masks, tolerance=5.5).item() == 1.0
    assert pointing_game(diagonal, masks, tolerance=15).item() == 1.0


def test_pointing_game_any_maximiser_counts():
    masks = box_masks(1, 8, 0, 0, 2, 2)
    maps = torch.zeros(1, 8, 8)
    maps[0, 7, 7] = 1.0  # first in TorchRay's argmax order would be (1, 1); both count here
    maps[0, 1, 1] = 1.0
    assert pointing_game(maps, masks, tolerance=0).item() == 1.0
    constant = torch.ones(1, 8, 8)  # every pixel is a maximiser: the map points nowhere and is skipped
    assert torch.isnan(pointing_game(constant, masks, tolerance=0))


def test_pointing_game_resizes_map_to_mask():
    # A 4x4 one-hot map at (0, 0) upsampled bilinearly to 8x8 peaks only at (0, 0).
    small = torch.zeros(1, 1, 4, 4)
    small[0, 0, 0, 0] = 1.0
    assert pointing_game(small, box_masks(1, 8, 0, 0, 1, 1), tolerance=0).item() == 1.0
    assert pointing_game(small, box_masks(1, 8, 1, 1, 2, 2), tolerance=0).item() == 0.0
    assert pointing_game(small, box_masks(1, 8, 1, 1, 2, 2), tolerance=1.5).item() == 1.0


def test_pointing_game_channel_reduction():
    maps = torch.zeros(1, 3, 8, 8)
    maps[0, 0, 1, 1] = 1.0
    maps[0, 1, 1, 1] = 1.0  # signed sum 2 at (1, 1)
    maps[0, 2, 6, 6] = -3.0  # largest magnitude at (6, 6)
    masks = box_masks(1, 8, 0, 0, 3, 3)
    assert pointing_game(maps, masks, tolerance=0).item() == 1.0
    assert pointing_game(maps, masks, tolerance=0, channel_reduction="max_abs").item() == 0.0


def test_pointing_game_micro_macro_and_skipped():
    masks = box_masks(5, 8, 0, 0, 2, 2)
    masks[4] = False  # an empty mask: skipped
    maps = peaked(5, 8, [(0, 0), (1, 1), (7, 7), (7, 7), (0, 0)])
    class_ids = torch.tensor([0, 0, 0, 1, 1])
    metric = PointingGame(tolerance=0, num_classes=3, average="macro")
    metric.update(maps, masks, class_ids)
    assert metric.hits.tolist() == [2, 0, 0]
    assert metric.misses.tolist() == [1, 1, 0]
    assert metric.n_skipped.item() == 1
    # class 0: 2/3, class 1: 0/1, class 2 has no row and is excluded
    assert metric.compute().item() == pytest.approx((2 / 3 + 0) / 2)
    micro = pointing_game(maps, masks, class_ids, tolerance=0, num_classes=3, average="micro")
    assert micro.item() == pytest.approx(2 / 4)
    assert pointing_game(maps, masks, tolerance=0).item() == pytest.approx(2 / 4)


def test_pointing_game_all_skipped_is_nan():
    metric = PointingGame()
    metric.update(torch.rand(2, 8, 8), torch.zeros(2, 8, 8, dtype=torch.bool))
    assert math.isnan(metric.compute().item())
    assert metric.n_skipped.item() == 2


def reference_pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Quantus' PointingGame (normalise by the batch max abs, any maximiser on the mask, NaN for an empty
    mask), written out."""
    a = maps.reshape(len(maps), -1).astype(np.float64)
    a = a / np.abs(a).max()
    s = masks.reshape(len(masks), -1).astype(bool)
    hit = (s & (a == a.max(axis=1, keepdims=True))).any(1).astype(np.float64)
    hit[~s.any(1)] = np.nan
    return hit


def quantus_pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Quantus' own metric when it imports, otherwise its formula written out above."""
    try:
        import quantus
    except Exception:
        return reference_pointing_game(maps, masks)
    out = quantus.PointingGame(disable_warnings=True)(
        model=None,
        x_batch=np.zeros_like(maps),
        y_batch=np.zeros(len(maps), int),
        a_batch=maps.copy(),
        s_batch=masks,
    )
    # Quantus writes NaN into a bool array for empty masks, which leaves them True: mark them again.
    out = np.asarray(out, dtype=np.float64)
    out[~masks.reshape(len(masks), -1).any(1)] = np.nan
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_pointing_game_quantus_parity(seed):
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(16, 1, 10, 10)).astype(np.float32)
    maps[:4] = np.round(maps[:4])  # ties
    masks = (rng.random((16, 1, 10, 10)) > 0.75).astype(np.float32)
    masks[5] = 0
    expected = quantus_pointing_game(maps, masks)
    keep = masks.reshape(16, -1).any(1)
    np.testing.assert_allclose(reference_pointing_game(maps, masks)[keep], expected[keep])
    ours = [
        pointing_game(
            torch.from_numpy(maps[i : i + 1]), torch.from_numpy(masks[i : i + 1]), tolerance=0
        ).item()
        for i in range(16)
    ]
    np.testing.assert_allclose(np.asarray(ours)[keep], expected[keep], atol=1e-4)
    assert math.isnan(ours[5])
    metric = PointingGame(tolerance=0)
    metric.update(torch.from_numpy(maps), torch.from_numpy(masks))
    assert metric.compute().item() == pytest.approx(expected[keep].mean(), abs=1e-4)
    assert metric.n_skipped.item() == 1


# ----------------------------------------------------------------------------------------------- energy PG


def test_energy_pointing_game_hand_values():
    masks = box_masks(4, 6, 1, 1, 3, 3)
    inside = torch.zeros(4, 6, 6)
    inside[0, 1:4, 1:4] = torch.rand(3, 3) + 0.1  # all energy in the box
    inside[1, 2, 2] = 3.0  # 3 inside, 1 outside, negatives ignored
    inside[1, 0, 0] = 1.0
    inside[1, 5, 5] = -10.0
    inside[2] = -1.0  # no positive energy: points nowhere, skipped
    inside[3] = 1.0  # uniform (its ratio would be the box's share, 9/36): skipped
    expected = [1.0, 3 / 4]
    metric = EnergyPointingGame()
    metric.update(inside, masks)
    assert metric.compute().item() == pytest.approx(sum(expected) / 2)
    assert (metric.count.item(), metric.n_skipped.item()) == (2, 2)
    assert energy_pointing_game(inside[:1], masks[:1]).item() == pytest.approx(1.0)
    assert energy_pointing_game(inside[1:2], masks[1:2]).item() == pytest.approx(0.75)


def test_energy_pointing_game_no_minmax_and_skips_empty():
    masks = box_masks(2, 4, 0, 0, 2, 2)
    masks[1] = False
    maps = torch.ones(2, 4, 4)
    metric = EnergyPointingGame()
    metric.update(maps + 1.0, masks)  # a uniform map points nowhere: skipped, as is the empty mask
    with pytest.warns(UserWarning, match="all 2 rows were skipped"):
        assert math.isnan(metric.compute().item())
    assert (metric.count.item(), metric.n_skipped.item()) == (0, 2)
    shifted = torch.zeros(1, 4, 4)
    shifted[0, :2, :2] = 1.0
    # Without min-max normalisation a shift changes the ratio: 4*2 / (4*2 + 12*1)
    assert energy_pointing_game(shifted + 1.0, masks[:1]).item() == pytest.approx(8 / 20)


# ----------------------------------------------------------------------------------------------- IoU-AUC


def test_iou_auc_perfect_masks():
    masks = box_masks(3, 8, 2, 2, 4, 3)
    out = iou_auc(masks.float(), masks, return_mean_iou=True)
    assert out["iou_auc"].item() == pytest.approx(1.0)
    assert out["mean_iou"].item() == pytest.approx(1.0)


def test_iou_auc_hand_values():
    masks = box_masks(3, 4, 0, 0, 2, 4)  # 8 foreground pixels
    maps = masks.float().clone()
    maps[1, 2, :] = 0.9  # 4 false positives: IoU 8/12
    maps[2] = 0.6  # nothing above τ_b = 0.6 (strict): IoU 0
    maps[2, 3, 3] = 0.2  # (not constant: a constant map would be skipped)
    ious = [1.0, 2 / 3, 0.0]
    # C(0) = 1; C(t) = 2/3 for t = 0.05..0.65 (13 points); C(t) = 1/3 for t = 0.70..1.00 (7 points)
    curve = [1.0] + [2 / 3] * 13 + [1 / 3] * 7
    expected = 0.05 * (sum(curve) - (curve[0] + curve[-1]) / 2)
    metric = IoUAUC(return_mean_iou=True)
    metric.update(maps, masks)
    out = metric.compute()
    assert out["iou_auc"].item() == pytest.approx(expected)
    assert out["mean_iou"].item() == pytest.approx(sum(ious) / 3)
    assert abs(out["iou_auc"].item() - out["mean_iou"].item()) <= 0.025 + 1e-6
    assert metric.ge_counts.tolist() == [3] + [2] * 13 + [1] * 7


def test_iou_auc_threshold_step_and_skipped():
    masks = box_masks(2, 4, 0, 0, 2, 2)
    masks[1] = False
    maps = torch.zeros(2, 4, 4)
    maps[0, :2, :2] = 0.5
    metric = IoUAUC(threshold=0.4, iou_step=0.5, return_mean_iou=True)
    metric.update(maps, masks)
    assert metric.ge_counts.tolist() == [1, 1, 1]
    assert metric.compute()["iou_auc"].item() == pytest.approx(1.0)
    assert metric.n_skipped.item() == 1
    # at τ_b = 0.6 nothing is on: IoU 0, the curve is 1 at t = 0 only
    assert iou_auc(maps[:1], masks[:1], iou_step=0.5).item() == pytest.approx(0.25)


def test_iou_auc_normalize():
    masks = box_masks(1, 4, 0, 0, 2, 4)
    raw = masks.float() * 40 - 10  # values -10 / 30
    with pytest.raises(ValueError, match="normalize='minmax'"):
        iou_auc(raw, masks)
    assert iou_auc(raw, masks, normalize="minmax").item() == pytest.approx(1.0)
    assert iou_auc(masks.float() * 7, masks, normalize="max").item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        iou_auc(raw, masks, normalize="max")


# ----------------------------------------------------------------------------------------------- PxAP


def test_pxap_perfect_binary_map():
    masks = box_masks(3, 8, 1, 2, 3, 4)
    assert pixel_average_precision(masks.float(), masks).item() == pytest.approx(1.0)
    assert pixel_average_precision(masks.float(), masks, compat="comet").item() == pytest.approx(
        1.0 - 1 / 10001
    )


def test_pxap_hand_values():
    masks = torch.tensor([[[1, 1, 1, 0], [0, 0, 0, 0]]])
    maps = torch.tensor([[[0.9, 0.6, 0.1, 0.8], [0.4, 0.0, 0.05, 0.0]]])
    # t = 0.7: TP 1 (0.9), FP 1 (0.8); t = 0.5: TP 2, FP 1; t = 0.3: TP 2, FP 2 (0.4); N_fg = 3
    p = [1 / 2, 2 / 3, 2 / 4]
    r = [1 / 3, 2 / 3, 2 / 3]
    expected = p[0] * (r[0] - 0) + p[1] * (r[1] - r[0]) + p[2] * (r[2] - r[1])
    metric = PixelAveragePrecision(thresholds=[0.3, 0.5, 0.7])
    metric.update(maps, masks)
    assert metric.compute().item() == pytest.approx(expected)
    # (-inf, 0.3), [0.3, 0.5), [0.5, 0.7), [0.7, inf)
    assert metric.fg_hist.tolist() == [1, 0, 1, 1]
    assert metric.bg_hist.tolist() == [3, 1, 0, 1]
    assert metric.fg_hist.dtype == torch.int64


def test_pxap_threshold_is_inclusive_and_default_levels():
    masks = torch.tensor([[[1, 0]]])
    maps = torch.tensor([[[0.05, 0.0]]])  # exactly at t_1 = 0.05 in float32: counted as S >= t_1
    metric = PixelAveragePrecision()
    metric.update(maps, masks)
    assert metric.fg_hist.tolist() == [0, 1] + [0] * 18
    assert metric.compute().item() == pytest.approx(1.0)


def test_pxap_empty_foreground_is_nan():
    metric = PixelAveragePrecision()
    metric.update(torch.rand(2, 4, 4), torch.zeros(2, 4, 4))
    assert math.isnan(metric.compute().item())


def comet_pxap(maps: np.ndarray, masks: np.ndarray, thresholds: list[float]) -> float:
    """The COMET evaluation written out: thresholds from the top, a pseudo-point (TP=1, FP=0, FN=10000)
    first, pixels below t_1 left out, precision-NaN points dropped, reported x100."""
    fg = maps[masks == 1]
    bg = maps[masks == 0]
    fg = fg[fg >= thresholds[0]]
    bg = bg[bg >= thresholds[0]]
    n_fg = fg.size
    tps, fps, fns = [1.0], [0.0], [10000.0]
    for t in reversed(thresholds):
        tp = float((fg >= t).sum())
        tps.append(tp)
        fps.append(float((bg >= t).sum()))
        fns.append(n_fg - tp)
    tp, fp, fn = np.array(tps), np.array(fps), np.array(fns)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    keep = ~np.isnan(precision[1:])
    return float((precision[1:] * np.diff(recall))[keep].sum() * 100)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pxap_comet_compat_matches_reference_formula(seed):
    rng = np.random.default_rng(seed)
    maps = np.round(rng.random((3, 6, 6)), 2).astype(np.float32)
    maps[0, 0, :3] = [0.0, 0.01, 0.04]  # below t_1: left out in COMET mode
    maps[1] = np.minimum(maps[1], 0.5)  # the top thresholds see no pixel: precision NaN
    masks = (rng.random((3, 6, 6)) > 0.6).astype(np.float32)
    thresholds = [float(t) for t in np.arange(1, 20) / 20]
    ours = pixel_average_precision(torch.from_numpy(maps), torch.from_numpy(masks), compat="comet")
    assert ours.item() * 100 == pytest.approx(comet_pxap(maps, masks, thresholds), abs=1e-4)
    capped = np.minimum(maps, 0.5)  # every threshold above 0.5 without pixels
    ours = pixel_average_precision(torch.from_numpy(capped), torch.from_numpy(masks), compat="comet")
    assert ours.item() * 100 == pytest.approx(comet_pxap(capped, masks, thresholds), abs=1e-4)


def test_pxap_default_vs_comet_on_hand_data():
    masks = np.array([[[1, 1, 0, 0]]], dtype=np.float32)
    maps = np.array([[[0.9, 0.02, 0.5, 0.01]]], dtype=np.float32)
    # default: N_fg = 2 (0.02 included); TP(t) = 1 for t <= 0.9, FP(t) = 1 for t <= 0.5
    # P = 1/2 for t <= 0.5 (10 levels), 1 for 0.55..0.9 (8 levels), R = 1/2 for t <= 0.9
    default = pixel_average_precision(torch.from_numpy(maps), torch.from_numpy(masks)).item()
    assert default == pytest.approx(1.0 * 0.5)
    # COMET: N_fg = 1 (0.02 < t_1 dropped), so R = 1 for t <= 0.9. The top threshold 0.95 sees no pixel: its
    # precision is NaN and its term, the only one that would use the pseudo-point, is dropped.
    comet = pixel_average_precision(torch.from_numpy(maps), torch.from_numpy(masks), compat="comet").item()
    assert comet == pytest.approx(1.0)
    levels = [float(t) for t in np.arange(1, 20) / 20]
    assert comet * 100 == pytest.approx(comet_pxap(maps, masks, levels))
    # With a pixel at the top threshold, the gain there starts from the pseudo-point's recall 1/10001.
    maps[0, 0, 0] = 0.96
    comet = pixel_average_precision(torch.from_numpy(maps), torch.from_numpy(masks), compat="comet").item()
    assert comet == pytest.approx(1.0 * (1 - 1 / 10001))
    assert comet * 100 == pytest.approx(comet_pxap(maps, masks, levels))


def test_deterministic_counting_matches_bincount():
    # The path taken on CUDA under torch.use_deterministic_algorithms(True) and on MPS.
    values = torch.randint(0, 7, (500,), generator=torch.Generator().manual_seed(0))
    values[values == 3] = 2  # an empty bin in the middle
    assert torch.equal(_count_sorted(values, 9), torch.bincount(values, minlength=9))
    assert torch.equal(_count_sorted(values[:0], 4), torch.zeros(4, dtype=torch.long))


# ----------------------------------------------------------------------------------------------- properties

maps_strategy = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 4), st.just(1), st.integers(2, 8), st.integers(2, 8)),
    elements=st.floats(0, 1, width=32),
)


@settings(max_examples=25, deadline=None)
@given(maps=maps_strategy, seed=st.integers(0, 2**16))
def test_localisation_ranges(maps, seed):
    maps_t = torch.from_numpy(maps)
    masks = torch.rand(maps.shape[0], 6, 6, generator=torch.Generator().manual_seed(seed)) > 0.5
    masks[0, 0, 0] = True
    flat = maps_t.flatten(1)
    # a row is scored when its map is not constant and its mask not empty (maps >= 0: S⁺ = S)
    scored = bool(((flat.amax(1) > flat.amin(1)) & masks.flatten(1).any(1)).any())
    for value in (
        pointing_game(maps_t, masks),
        pointing_game(maps_t, masks, tolerance=0),
        energy_pointing_game(maps_t, masks),
        iou_auc(maps_t, masks),
        pixel_average_precision(maps_t, masks),
        pixel_average_precision(maps_t, masks, compat="comet"),
    ):
        assert (not scored and math.isnan(value.item())) or 0.0 <= value.item() <= 1.0 + 1e-6
    if not scored:
        return
    out = iou_auc(maps_t, masks, return_mean_iou=True)
    assert abs(out["iou_auc"].item() - out["mean_iou"].item()) <= 0.025 + 1e-6


@settings(max_examples=25, deadline=None)
@given(
    values=hnp.arrays(
        np.int64,
        st.tuples(st.integers(1, 4), st.integers(2, 7), st.integers(2, 7)),
        elements=st.integers(-5, 5),
    ),
    seed=st.integers(0, 2**16),
    tolerance=st.sampled_from([0, 1.5, 3]),
    transform=st.sampled_from(["exp", "cube", "affine"]),
)
def test_pointing_game_invariant_to_increasing_transforms(values, seed, tolerance, transform):
    maps = torch.from_numpy(values).double()  # integer levels: ties stay ties, distinct stay distinct
    masks = torch.rand(maps.shape, generator=torch.Generator().manual_seed(seed)) > 0.6
    masks[:, 0, 0] = True
    fn = {"exp": torch.exp, "cube": lambda x: x**3 + x, "affine": lambda x: 3 * x - 7}[transform]
    transformed = pointing_game(fn(maps), masks, tolerance=tolerance).item()
    plain = pointing_game(maps, masks, tolerance=tolerance).item()
    assert transformed == plain or (math.isnan(transformed) and math.isnan(plain))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(2, 6))
def test_localisation_batch_permutation_invariance(seed, batch):
    maps, masks = random_data(seed, batch=batch, size=8, empty_rows=1)
    class_ids = torch.arange(batch) % 2
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(seed + 1))
    pairs = [
        (lambda a, m, c: pointing_game(a, m, c, num_classes=2, average="macro", tolerance=2)),
        (lambda a, m, c: energy_pointing_game(a, m)),
        (lambda a, m, c: iou_auc(a, m, threshold=0.5)),
        (lambda a, m, c: pixel_average_precision(a, m)),
    ]
    for fn in pairs:
        torch.testing.assert_close(fn(maps, masks, class_ids), fn(maps[perm], masks[perm], class_ids[perm]))


# ----------------------------------------------------------------------------------------------- DDP


def make_metrics():
    return {
        "pg": PointingGame(tolerance=2, num_classes=3, average="macro"),
        "epg": EnergyPointingGame(),
        "iou": IoUAUC(threshold=0.5, return_mean_iou=True),
        "pxap": PixelAveragePrecision(),
        "pxap_comet": PixelAveragePrecision(compat="comet"),
    }


def ddp_data():
    maps, masks = random_data(7, batch=8, size=10, empty_rows=1)
    return maps, masks, torch.tensor([0, 1, 2, 0, 1, 1, 0, 2])


def run_metrics(maps, masks, class_ids):
    metrics = make_metrics()
    for name, metric in metrics.items():
        if name == "pg":
            metric.update(maps, masks, class_ids)
        else:
            metric.update(maps, masks)
    out = {name: metric.compute() for name, metric in metrics.items()}
    out["pg_counts"] = (
        metrics["pg"].hits.clone(),
        metrics["pg"].misses.clone(),
        metrics["pg"].n_skipped.clone(),
    )
    out["pxap_hist"] = (metrics["pxap"].fg_hist.clone(), metrics["pxap"].bg_hist.clone())
    return out


def _ddp_localisation(rank, world_size):
    maps, masks, class_ids = ddp_data()
    half = maps.shape[0] // world_size
    rows = slice(rank * half, (rank + 1) * half)
    metrics = make_metrics()
    for name, metric in metrics.items():
        # Two updates per rank, to exercise accumulation before the reduction.
        for part in (slice(rows.start, rows.start + 2), slice(rows.start + 2, rows.stop)):
            if name == "pg":
                metric.update(maps[part], masks[part], class_ids[part])
            else:
                metric.update(maps[part], masks[part])
    out = {name: metric.compute() for name, metric in metrics.items()}
    # compute() syncs for the call only; sync() keeps the reduced states for inspection.
    metrics["pg"].sync()
    metrics["pxap"].sync()
    out["pg_counts"] = (
        metrics["pg"].hits.clone(),
        metrics["pg"].misses.clone(),
        metrics["pg"].n_skipped.clone(),
    )
    out["pxap_hist"] = (metrics["pxap"].fg_hist.clone(), metrics["pxap"].bg_hist.clone())
    return out


def test_localisation_ddp_equals_single_process(ddp):
    expected = run_metrics(*ddp_data())
    results = ddp(_ddp_localisation)
    for out in results:
        for key in ("pg", "epg", "pxap", "pxap_comet"):
            torch.testing.assert_close(out[key], expected[key], msg=key)
        for key in ("iou_auc", "mean_iou"):
            torch.testing.assert_close(out["iou"][key], expected["iou"][key], msg=key)
        for got, want in zip(out["pg_counts"], expected["pg_counts"], strict=True):
            assert torch.equal(got, want)
        for got, want in zip(out["pxap_hist"], expected["pxap_hist"], strict=True):
            assert torch.equal(got, want)


# ----------------------------------------------------------------------------------------------- bad input

ALL_FUNCTIONALS = [pointing_game, energy_pointing_game, iou_auc, pixel_average_precision]


@pytest.mark.parametrize("fn", ALL_FUNCTIONALS)
def test_bad_inputs(fn):
    maps = torch.rand(2, 1, 8, 8)
    masks = box_masks(2, 8, 0, 0, 3, 3)
    nan_maps = maps.clone()
    nan_maps[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fn(nan_maps, masks)
    with pytest.raises(ValueError, match="batch size"):
        fn(maps, masks[:1])
    with pytest.raises(ValueError, match="binary"):
        fn(maps, masks.float() * 0.5)
    with pytest.raises(ValueError, match="3-D or 4-D"):
        fn(maps[:, :, None], masks)
    with pytest.raises(ValueError, match="masks"):
        fn(maps, masks[:, None].expand(2, 3, 8, 8))
    with pytest.raises(TypeError, match="attributions"):
        fn(maps.numpy(), masks)


def test_bad_arguments():
    maps, masks = torch.rand(2, 8, 8), box_masks(2, 8, 0, 0, 3, 3)
    with pytest.raises(ValueError, match="tolerance"):
        PointingGame(tolerance=-1)
    with pytest.raises(ValueError, match="average"):
        PointingGame(average="weighted")
    with pytest.raises(ValueError, match="num_classes"):
        PointingGame(num_classes=0)
    with pytest.raises(ValueError, match="class_ids"):
        PointingGame(num_classes=3).update(maps, masks)
    with pytest.raises(ValueError, match="num_classes"):
        pointing_game(maps, masks, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class_ids"):
        pointing_game(maps, masks, torch.tensor([0, 3]), num_classes=3)
    with pytest.raises(TypeError, match="class_ids"):
        pointing_game(maps, masks, torch.tensor([0.0, 1.0]), num_classes=3)
    with pytest.raises(ValueError, match="channel_reduction"):
        EnergyPointingGame(channel_reduction="none")
    with pytest.raises(ValueError, match="iou_step"):
        IoUAUC(iou_step=0.3)
    with pytest.raises(ValueError, match="threshold"):
        IoUAUC(threshold=1.5)
    with pytest.raises(ValueError, match="normalize"):
        IoUAUC(normalize="zscore")
    with pytest.raises(ValueError, match="thresholds"):
        PixelAveragePrecision(thresholds=[0.5, 0.2])
    with pytest.raises(ValueError, match="thresholds"):
        PixelAveragePrecision(thresholds=[0.5, 2.0])
    with pytest.raises(ValueError, match="compat"):
        PixelAveragePrecision(compat="wsol")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PixelAveragePrecision().update(maps * 2, masks)


def test_pxap_comet_foreground_below_every_threshold_scores_zero():
    # Found by the range property: with compat="comet" the foreground below t_1 leaves N_fg = 0, and the
    # result was 0/0. Nothing was detected, so the precision-recall area is 0.
    maps = torch.zeros(1, 6, 6)
    maps[0, 0, 2] = 1.0
    masks = torch.zeros(1, 6, 6, dtype=torch.bool)
    masks[0, 3:, 3:] = True
    assert pixel_average_precision(maps, masks, compat="comet").item() == 0.0
    assert pixel_average_precision(maps, masks).item() == 0.0
    assert pixel_average_precision(maps, torch.zeros_like(masks)).isnan()  # no foreground at all


def test_a_constant_map_points_nowhere_and_is_skipped_not_a_hit():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, 2:4, 2:4] = True
    maps = torch.zeros(3, 8, 8)  # an untrained model's all-zero Grad-CAM
    maps[1] = 0.5  # constant but not zero
    maps[2, 3, 3] = 1.0  # a real map, on the object
    metric = PointingGame()
    metric.update(maps, masks)
    assert float(metric.compute()) == 1.0 and int(metric.n_skipped) == 2
    assert torch.isnan(pointing_game(maps[:2], masks[:2]))
