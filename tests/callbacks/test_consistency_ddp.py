"""ExplanationConsistencyReweighting under 2-process CPU DDP: every rank holds the single-process table."""

from __future__ import annotations

import os
import warnings

import lightning as L
import pytest
import torch
from torch import nn

from lightning_xai.callbacks import ExplanationConsistencyReweighting
from lightning_xai.callbacks.consistency.data import gather_rows
from lightning_xai.data import ShapesDataModule
from lightning_xai.losses import consistency_weights
from lightning_xai.models import small_resnet

# 11 samples: the scoring shards are padded with a repeated index, which must average out exactly.
DATA = {"batch_size": 3, "image_size": 16, "train_size": 11, "val_size": 2, "test_size": 2, "seed": 0}


class Plain(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = small_resnet(num_classes=4, width=4)
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        return self.criterion(self(batch["image"]), batch["label"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Counting(ExplanationConsistencyReweighting):
    """Counts the samples this process scored."""

    scored_here = 0

    def _score(self, pl_module, parts, generator):
        self.scored_here += int(parts.inputs.shape[0])
        return super()._score(pl_module, parts, generator)


def fit_and_table(**trainer_kwargs) -> dict:
    """Refresh at epoch 0 (before any step, so every process scores the same network), train one batch."""
    callback = Counting(warmup_epochs=0)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        **trainer_kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Plain(), ShapesDataModule(**DATA))
    return {**callback.state_dict(), "scored_here": callback.scored_here, "world_size": trainer.world_size}


def _ddp_table(rank: int, world_size: int) -> dict:
    # The process group exists already; Lightning joins it instead of launching processes.
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world_size), RANK=str(rank))
    return fit_and_table(accelerator="cpu", devices=world_size, strategy="ddp")


def test_ddp_ranks_hold_identical_tables_equal_to_single_process(ddp):
    single = fit_and_table(accelerator="cpu", devices=1)
    ranks = ddp(_ddp_table)
    first, second = ranks
    assert first["world_size"] == second["world_size"] == 2 and single["world_size"] == 1
    assert (
        single["scored_here"] == 11 and first["scored_here"] == second["scored_here"] == 6
    )  # shards, padded
    for key in ("v", "weights", "scored"):
        assert torch.equal(first[key], second[key])  # bitwise
    assert bool(first["scored"].all()) and first["N"] == single["N"] == 11
    assert torch.allclose(first["v"], single["v"], atol=1e-6, rtol=0)
    assert torch.allclose(first["weights"], single["weights"], atol=1e-6, rtol=0)
    assert first["last_refresh_epoch"] == second["last_refresh_epoch"] == 0


def _batch_mode_weights(rank: int, world_size: int) -> dict:
    """Batch mode's weighting under DDP with unequal shards (the last batch): each rank's rows of the weights of
    the global batch, as the callback computes them."""
    v = torch.tensor([[0.02, 0.30, 0.0, 0.05, 0.9], [0.10, 0.0]][rank], dtype=torch.float64)
    informative = torch.tensor([[True, True, False, True, True], [True, True]][rank])
    gathered, start = gather_rows(v)
    flags = gather_rows(informative.to(torch.float64))[0] > 0
    weights, _ = consistency_weights(gathered, informative=flags)
    return {"mine": weights[start : start + v.numel()], "global": weights, "start": start}


def test_batch_mode_weights_are_those_of_the_global_batch(ddp):
    first, second = ddp(_batch_mode_weights)
    v = torch.tensor([0.02, 0.30, 0.0, 0.05, 0.9, 0.10, 0.0], dtype=torch.float64)
    informative = torch.tensor([True, True, False, True, True, True, True])
    expected, _ = consistency_weights(v, informative=informative)
    assert torch.equal(first["global"], second["global"]) and torch.equal(first["global"], expected)
    assert (first["start"], second["start"]) == (0, 5)
    assert torch.equal(torch.cat([first["mine"], second["mine"]]), expected)
    assert float(expected[informative].double().mean()) == pytest.approx(1.0, abs=1e-6)  # clipped, mean 1
