"""ExplanationConsistencyReweighting under 2-process CPU DDP: every rank holds the single-process table."""

from __future__ import annotations

import os
import warnings

import lightning as L
import torch
from torch import nn

from lightning_xai.callbacks import ExplanationConsistencyReweighting
from lightning_xai.data import ShapesDataModule
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
