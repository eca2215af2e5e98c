"""XNN on backbones that are not the plain float32 case (issue 32): another dtype, MHEX heads attached, a feature
tap earlier than the heatmap layer. Tiny models; the file runs in seconds."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai.heads import inject_mhex
from lightning_xai.models import build_model
from lightning_xai.modules import XNN

SIZE = 16
TRAINER = dict(
    max_epochs=1,
    limit_train_batches=2,
    limit_val_batches=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
)


@pytest.fixture(autouse=True)
def _quiet():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*in eval mode at the start of training.*")
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", ".*precision.*")
        warnings.filterwarnings(
            "ignore", ".*carry no information.*"
        )  # inactive concepts of untrained tiny XNNs
        yield
    torch.set_num_threads(threads)


def images(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(n)).to(dtype)


def loader(dtype: torch.dtype = torch.float32) -> DataLoader:
    return DataLoader(TensorDataset(images(8, dtype), torch.zeros(8, dtype=torch.long)), batch_size=4)


def xnn(backbone=None, **kwargs) -> XNN:
    torch.manual_seed(0)
    backbone = build_model("small_resnet", 4) if backbone is None else backbone
    return XNN(backbone, **{"num_concepts": 3, "hidden": (8,), "pretrain_epochs": 1, **kwargs})


def check_explains(module: XNN, dtype: torch.dtype) -> None:
    module.eval()
    x = images(2, dtype)
    assert module(x).dtype == dtype
    parts, _ = module.contributions(x)
    assert parts.dtype == dtype and parts.shape == (2, 1, 3)
    maps = module.concept_heatmaps(x)
    assert maps.shape == (2, 3, SIZE, SIZE) and maps.dtype == dtype
    assert bool(torch.isfinite(maps).all()) and bool((maps >= 0).all())


# -- dtype -------------------------------------------------------------------------------------------------------


def test_float64_xnn_trains_and_explains_in_float64():
    module = xnn().double()
    L.Trainer(**TRAINER).fit(module, loader(torch.float64), loader(torch.float64))
    x, y = module.features_and_targets(images(2, torch.float64))
    assert x.dtype == y.dtype == torch.float64
    assert module.mean_contribution.dtype == torch.float64 and bool(
        torch.isfinite(module.mean_contribution).all()
    )
    check_explains(module, torch.float64)


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_true_precision_trainer_converts_the_pretraining_batches_too(precision):
    # the pretraining pass in on_train_start reads the dataloader itself: it must convert the inputs as the loop does
    module = xnn()
    L.Trainer(precision=precision, **TRAINER).fit(module, loader(), loader())
    dtype = module.network.dtype
    assert dtype == (torch.float64 if precision == "64-true" else torch.bfloat16)
    assert bool(module.pretrained_flag)
    check_explains(module, dtype)


def test_features_follow_the_xnn_parameters_not_the_backbone():
    module = xnn()
    module.backbone.double()  # a float64 backbone under a float32 explanation network
    x, y = module.features_and_targets(images(2, torch.float64))
    assert x.dtype == y.dtype == torch.float32
    assert module(images(2, torch.float64)).dtype == torch.float32


# -- MHEX heads on the backbone -------------------------------------------------------------------------------


@pytest.mark.parametrize("gate_mode", ["in_path", "side_branch"])
def test_xnn_over_a_backbone_with_mhex_heads_taps_the_backbone_classifier(gate_mode):
    backbone = build_model("small_resnet", 4)
    handle = inject_mhex(backbone, gate_mode=gate_mode)
    module = xnn(backbone, target_class="all")
    # the heads' classifiers are registered after `fc`: the tap must still be the backbone's own final Linear
    assert module._tap.module is backbone.fc
    assert module.num_outputs == 4
    L.Trainer(**TRAINER).fit(module, loader(), loader())
    module.eval()
    x = images(2)
    with torch.no_grad():
        assert torch.equal(module.features_and_targets(x)[1], backbone(x))
    maps = module.concept_heatmaps(x)
    assert maps.shape == (2, 3, SIZE, SIZE) and bool(torch.isfinite(maps).all())
    assert handle.head_logits  # the heads still ran with the backbone


def test_heatmap_layer_after_the_feature_tap_is_refused_with_the_fix():
    module = xnn(layer="layer3").eval()
    with pytest.raises(ValueError, match=r"'layer4' runs after the XNN's feature layer 'layer3'.*`layer=`"):
        module.concept_heatmaps(images(2))
    maps = module.concept_heatmaps(images(2), layer="layer3")
    assert maps.shape == (2, 3, SIZE, SIZE)
