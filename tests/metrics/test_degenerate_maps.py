"""Maps without information (all zero, constant) and metrics computed before any update: one rule for every
map metric (docs/metrics.md, "Degenerate maps")."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from lightning_xai.metrics import (
    Complexity,
    EnergyPointingGame,
    IoUAUC,
    PixelAveragePrecision,
    PointingGame,
    Sparseness,
)
from lightning_xai.metrics.functional import (
    complexity,
    energy_pointing_game,
    iou_auc,
    pixel_average_precision,
    pointing_game,
    sparseness,
)

LOCALISATION = {
    PointingGame: pointing_game,
    EnergyPointingGame: energy_pointing_game,
    IoUAUC: iou_auc,
    PixelAveragePrecision: pixel_average_precision,
}
COMPLEXITY = {Sparseness: sparseness, Complexity: complexity}
ALL = {**LOCALISATION, **COMPLEXITY}
BLANK = {"all_zero": 0.0, "constant": 0.5}


def masks(batch: int) -> torch.Tensor:
    out = torch.zeros(batch, 8, 8, dtype=torch.bool)
    out[:, 2:5, 2:5] = True
    return out


def informative() -> torch.Tensor:
    """A map in [0, 1] peaked on the object."""
    out = torch.zeros(1, 8, 8)
    out[0, 2:5, 2:5] = 0.9
    out[0, 6, 6] = 0.3
    return out


def update(metric, maps: torch.Tensor) -> None:
    if type(metric) in LOCALISATION:
        metric.update(maps, masks(maps.shape[0]))
    else:
        metric.update(maps[:, None])


def functional(cls, maps: torch.Tensor) -> torch.Tensor:
    fn = ALL[cls]
    return fn(maps, masks(maps.shape[0])) if cls in LOCALISATION else fn(maps[:, None])


def is_skipped(cls, kind: str) -> bool:
    # a constant non-zero map has a well-defined distribution (Gini 0, entropy log n); nothing else does
    return cls in LOCALISATION or kind == "all_zero"


@pytest.mark.parametrize("kind", list(BLANK))
@pytest.mark.parametrize("cls", list(ALL), ids=lambda c: c.__name__)
def test_blank_maps_are_skipped_and_counted(cls, kind):
    blank = torch.full((2, 8, 8), BLANK[kind])
    metric = cls()
    update(metric, torch.cat([blank, informative()]))
    alone = cls()
    update(alone, informative())
    if is_skipped(cls, kind):
        assert int(metric.n_skipped) == 2
        # the blank rows change nothing: the score is the informative map's alone
        torch.testing.assert_close(metric.compute(), alone.compute())
    else:
        assert int(metric.n_skipped) == 0


@pytest.mark.parametrize("kind", list(BLANK))
@pytest.mark.parametrize("cls", list(ALL), ids=lambda c: c.__name__)
def test_only_blank_maps_give_nan_with_a_warning(cls, kind):
    blank = torch.full((3, 8, 8), BLANK[kind])
    metric = cls()
    update(metric, blank)
    if not is_skipped(cls, kind):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            value = metric.compute()
        expected = 0.0 if cls is Sparseness else math.log(64)
        assert value.item() == pytest.approx(expected, abs=1e-5) and int(metric.n_skipped) == 0
        return
    with pytest.warns(UserWarning, match="all 3 rows were skipped"):
        assert math.isnan(metric.compute().item())
    assert int(metric.n_skipped) == 3
    with pytest.warns(UserWarning, match="all 3 rows were skipped"):
        assert math.isnan(functional(cls, blank).item())


@pytest.mark.parametrize("cls", list(ALL), ids=lambda c: c.__name__)
def test_compute_before_update_is_nan_with_torchmetrics_warning(cls):
    metric = cls()
    with pytest.warns(UserWarning) as record:
        value = metric.compute()
    assert math.isnan(value.item())
    assert [str(w.message) for w in record if "was called before the ``update``" in str(w.message)]
    assert not [w for w in record if "skipped" in str(w.message)]  # nothing was skipped: no second warning
    assert int(metric.n_skipped) == 0


def test_pxap_keeps_empty_masks_and_skips_constant_maps():
    maps = torch.cat([informative(), informative(), torch.full((1, 8, 8), 0.7)])
    rows = masks(3)
    rows[1] = False  # its pixels are all background: they lower the precision, the row is not skipped
    metric = PixelAveragePrecision()
    metric.update(maps, rows)
    assert int(metric.n_skipped) == 1 and int(metric.fg_hist.sum() + metric.bg_hist.sum()) == 2 * 64
    assert metric.compute().item() < pixel_average_precision(informative(), masks(1)).item()


def test_energy_pointing_game_skips_maps_without_positive_energy():
    negative = -torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))  # not constant, S⁺ = 0
    metric = EnergyPointingGame()
    metric.update(torch.cat([negative, informative()]), masks(2))
    assert int(metric.n_skipped) == 1 and int(metric.count) == 1
