"""The library's four callbacks together in a 2-process CPU DDP fit (gloo): it completes, the saliency images
are written once, and the explanation metrics equal a single-process validation of the same weights."""

from __future__ import annotations

import os
import warnings

import lightning as L
import pytest
import torch

from lightning_xai.callbacks import (
    ExplanationConsistencyReweighting,
    ExplanationMetrics,
    MultiHeadExplainer,
    SaliencyMapLogger,
)
from lightning_xai.data import ShapesDataModule
from lightning_xai.modules import ImageClassifier

warnings.filterwarnings("ignore", ".*does not have many workers.*")


def _data() -> ShapesDataModule:
    # 16 validation images = 2 ranks x 8: the distributed sampler adds no padding duplicates
    return ShapesDataModule(
        batch_size=4, image_size=24, train_size=16, val_size=16, test_size=4, bias=0.9, seed=1
    )


def _metrics() -> ExplanationMetrics:
    return ExplanationMetrics(["deletion", "pointing_game", "sparseness"])


def _trainer(root: str, callbacks: list, **kwargs) -> L.Trainer:
    settings = dict(
        accelerator="cpu",
        default_root_dir=root,
        inference_mode=False,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**settings, **kwargs})


def _fit_on_rank(rank: int, world_size: int, root: str) -> dict:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world_size))
    torch.manual_seed(0)
    module = ImageClassifier("small_resnet", num_classes=4, lr=3e-3)
    saliency, metrics = SaliencyMapLogger(num_samples=3), _metrics()
    ece = ExplanationConsistencyReweighting(warmup_epochs=1, refresh_every=1, steps=1)
    callbacks = [MultiHeadExplainer(), ece, saliency, metrics]
    trainer = _trainer(root, callbacks, devices=world_size, strategy="ddp", max_epochs=2)
    trainer.fit(module, _data())
    return {
        "rank": trainer.global_rank,
        "written": [p.name for p in saliency.written],
        "metrics": metrics.last_values,
        "weights": ece.weights.clone(),
        "state": {k: v.clone() for k, v in module.state_dict().items()},
    }


class _LoadWeights(L.Callback):
    """Loads the DDP run's weights once MultiHeadExplainer (earlier in the list) has injected its heads."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def setup(self, trainer, pl_module, stage) -> None:
        pl_module.load_state_dict(self.state)


@pytest.mark.timeout(900)
def test_four_callbacks_under_ddp_equal_a_single_process(ddp, tmp_path):
    results = ddp(_fit_on_rank, str(tmp_path))
    assert [r["rank"] for r in results] == [0, 1]
    assert results[0]["written"] == ["epoch=0.png", "epoch=1.png"] and results[1]["written"] == []
    assert sorted(p.name for p in (tmp_path / "saliency").iterdir()) == ["epoch=0.png", "epoch=1.png"]
    assert results[0]["metrics"] == results[1]["metrics"]  # every rank logs the reduced values
    torch.testing.assert_close(results[0]["weights"], results[1]["weights"])  # one weight table
    for name, value in results[0]["state"].items():  # DDP kept the replicas identical
        torch.testing.assert_close(value, results[1]["state"][name])

    single = _metrics()
    module = ImageClassifier("small_resnet", num_classes=4)
    callbacks = [MultiHeadExplainer(), _LoadWeights(results[0]["state"]), single]
    _trainer(str(tmp_path / "single"), callbacks, devices=1).validate(module, _data(), verbose=False)
    assert set(single.last_values) == {"xai/deletion", "xai/pointing_game", "xai/sparseness"}
    assert single.last_values == pytest.approx(results[0]["metrics"], abs=1e-5)
