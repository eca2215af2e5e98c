"""One Normalization value object, accepted as ``normalization=`` everywhere; the old spellings still work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_xai.attr import ADVISE, IGOS, StructuredAttentionGraph
from lightning_xai.callbacks import ExplanationConsistencyReweighting
from lightning_xai.explain import IMAGENET, Normalization, background_pgd
from lightning_xai.metrics import AVX
from lightning_xai.metrics.functional import score_consistency
from lightning_xai.models import small_cnn, small_resnet

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def test_of_accepts_every_spelling_and_round_trips():
    pair = Normalization.of((MEAN, STD))
    assert (
        Normalization.of({"mean": MEAN, "std": STD})
        == pair
        == Normalization(torch.tensor(MEAN, dtype=torch.float64), STD)
    )
    assert Normalization.of(pair) is pair and Normalization.of(None) is None
    pixels = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    assert torch.allclose(pair.denormalize(pair.normalize(pixels)), pixels)
    assert torch.allclose(pair.normalize(torch.zeros(1, 3, 1, 1, dtype=torch.float64)), pair.black(pixels))
    assert Normalization(0.5, 0.25).normalize(torch.ones(1, 2, 1, 1)).flatten().tolist() == [2.0, 2.0]
    assert IMAGENET.to_dict()["mean"] == [0.485, 0.456, 0.406]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ((MEAN, (0.2, 0.0, 0.2)), "`std` must be positive"),
        ((MEAN, (0.2, 0.2)), "as many means as stds"),
        (([float("nan")] * 3, STD), "finite"),
        ("imagenet", "a Normalization"),
        ((MEAN,), "a Normalization"),
    ],
)
def test_bad_values_are_named(value, match):
    with pytest.raises(ValueError, match=match):
        Normalization.of(value)


def test_channel_mismatch_is_named():
    with pytest.raises(ValueError, match="one per channel"):
        Normalization(MEAN, STD).normalize(torch.rand(1, 4, 2, 2))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()


def test_black_baseline_of_igos_and_sag_and_the_deprecated_input_normalization():
    model, x = tiny(), torch.rand(1, 3, 16, 16)
    settings = {"target": 0, "mask_size": 4, "n_iterations": 2, "n_steps": 2, "seed": 0, "baselines": "black"}
    new = IGOS(model, normalization=(MEAN, STD)).attribute(x, **settings)
    with pytest.warns(DeprecationWarning, match="input_normalization"):
        old = IGOS(model, input_normalization=(MEAN, STD))
    assert torch.equal(new, old.attribute(x, **settings))
    with pytest.warns(DeprecationWarning, match="normalization"):
        assert torch.allclose(old.input_normalization[1], torch.tensor(STD, dtype=torch.float64))
    sag = StructuredAttentionGraph(model, Normalization(MEAN, STD))
    assert sag.normalization == Normalization(MEAN, STD)
    with pytest.raises(ValueError, match="not both"):
        IGOS(model, (MEAN, STD), input_normalization=(MEAN, STD))


def test_advise_takes_normalization_and_the_deprecated_mean_std():
    model = small_resnet(num_classes=3).eval()
    new = ADVISE(model, "layer3", (MEAN, STD))
    with pytest.warns(DeprecationWarning, match="mean=, std="):
        positional = ADVISE(model, "layer3", MEAN, STD)
    with pytest.warns(DeprecationWarning, match="mean=, std="):
        keywords = ADVISE(model, "layer3", mean=MEAN, std=STD)
    assert new.normalization == positional.normalization == keywords.normalization == Normalization(MEAN, STD)


def test_avx_metric_and_pgd_take_normalization():
    model = small_cnn(num_classes=3).eval()
    images = torch.rand(2, 3, 16, 16)
    maps = torch.rand(2, 16, 16)
    new = AVX(model, normalization=(MEAN, STD))
    with pytest.warns(DeprecationWarning):
        old = AVX(model, mean=MEAN, std=STD)
    new.update(images, maps, maps)
    old.update(images, maps, maps)
    assert float(new.compute()["avx"]) == pytest.approx(float(old.compute()["avx"]))

    inputs = Normalization(MEAN, STD).normalize(images)
    background = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    attacked = background_pgd(model, inputs, [0, 1], background, normalization=(MEAN, STD))
    with pytest.warns(DeprecationWarning):
        same = background_pgd(model, inputs, [0, 1], background, mean=MEAN, std=STD)
    assert torch.equal(attacked, same)


def test_consistency_scoring_and_callback_record_the_normalization():
    model = small_resnet(num_classes=3)
    inputs = Normalization(MEAN, STD).normalize(torch.rand(2, 3, 16, 16))
    scores = score_consistency(model, inputs, torch.tensor([0, 1]), normalization=(MEAN, STD))
    with pytest.warns(DeprecationWarning):
        same = score_consistency(model, inputs, torch.tensor([0, 1]), mean=MEAN, std=STD)
    assert torch.equal(scores.consistency, same.consistency)
    callback = ExplanationConsistencyReweighting(normalization=(MEAN, STD))
    assert callback.config()["normalization"] == {"mean": list(MEAN), "std": list(STD)}
    with pytest.warns(DeprecationWarning):
        assert ExplanationConsistencyReweighting(mean=MEAN, std=STD).config() == callback.config()
