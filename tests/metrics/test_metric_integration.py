"""Localisation, complexity and consistency metrics inside a torchmetrics ``MetricCollection``, logged from a
``LightningModule`` during a short CPU ``Trainer`` run, and on CUDA when there is one (spec metrics.md §11.8)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MetricCollection

from lightning_xai.metrics.complexity import Complexity, Sparseness
from lightning_xai.metrics.consistency import ExplanationConsistency
from lightning_xai.metrics.functional import (
    energy_pointing_game,
    iou_auc,
    pixel_average_precision,
    pointing_game,
)
from lightning_xai.metrics.functional.complexity import complexity, sparseness
from lightning_xai.metrics.functional.consistency import explanation_consistency
from lightning_xai.metrics.localisation import EnergyPointingGame, IoUAUC, PixelAveragePrecision, PointingGame


def make_data(n: int = 8, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    maps = torch.rand(n, 1, size, size, generator=g)
    masks = torch.rand(n, size, size, generator=g) > 0.6
    masks[:, 0, 0] = True
    maps_b = (maps + 0.3 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)
    return x, maps, masks, maps_b


def expected_values(maps, masks, maps_b) -> dict[str, torch.Tensor]:
    return {
        "pointing_game": pointing_game(maps, masks, tolerance=2),
        "energy_pointing_game": energy_pointing_game(maps, masks),
        "iou_auc": iou_auc(maps, masks, threshold=0.5),
        "pxap": pixel_average_precision(maps, masks),
        "sparseness": sparseness(maps),
        "complexity": complexity(maps),
        "consistency": explanation_consistency(maps, maps_b),
    }


def attribution_collection(**kwargs) -> MetricCollection:
    return MetricCollection(
        {
            "pointing_game": PointingGame(tolerance=2),
            "energy_pointing_game": EnergyPointingGame(),
            "iou_auc": IoUAUC(threshold=0.5),
            "pxap": PixelAveragePrecision(),
            "sparseness": Sparseness(),
            "complexity": Complexity(),
        },
        **kwargs,
    )


@pytest.mark.parametrize("compute_groups", [True, False])
def test_metric_collection(compute_groups):
    _, maps, masks, maps_b = make_data()
    collection = attribution_collection(compute_groups=compute_groups)
    # Keyword arguments reach each metric only when its update() takes them (masks skip the complexity ones).
    for rows in (slice(0, 3), slice(3, 8)):
        collection.update(attributions=maps[rows], masks=masks[rows])
    out = collection.compute()
    expected = expected_values(maps, masks, maps_b)
    assert set(out) == set(expected) - {"consistency"}
    for name, value in out.items():
        torch.testing.assert_close(value, expected[name], msg=name)
    collection.reset()
    assert collection["pxap"].fg_hist.sum().item() == 0


def test_metric_collection_with_dict_outputs():
    _, maps, masks, maps_b = make_data()
    collection = MetricCollection(
        {
            "iou": IoUAUC(threshold=0.5, return_mean_iou=True),
            "sparse": Sparseness(return_per_sample=True),
        },
        prefix="val/",
    )
    collection.update(attributions=maps, masks=masks)
    out = collection.compute()
    assert set(out) == {"val/iou_auc", "val/mean_iou", "val/sparseness", "val/scores"}
    torch.testing.assert_close(out["val/iou_auc"], iou_auc(maps, masks, threshold=0.5))
    torch.testing.assert_close(out["val/scores"], sparseness(maps, reduction="none"))
    pairs = MetricCollection(
        {"cosine": ExplanationConsistency(), "pearson": ExplanationConsistency(similarity="pearson")}
    )
    pairs.update(maps, maps_b)
    torch.testing.assert_close(pairs.compute()["cosine"], explanation_consistency(maps, maps_b))
    torch.testing.assert_close(
        pairs.compute()["pearson"], explanation_consistency(maps, maps_b, similarity="pearson")
    )


class ExplainedModule(L.LightningModule):
    """A tiny regression module that scores precomputed maps in its validation loop."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.pointing_game = PointingGame(tolerance=2)
        self.energy_pointing_game = EnergyPointingGame()
        self.iou_auc = IoUAUC(threshold=0.5)
        self.pxap = PixelAveragePrecision()
        self.consistency = ExplanationConsistency()
        self.train_sparseness = Sparseness()
        self.collection = MetricCollection(
            {"sparseness": Sparseness(), "complexity": Complexity()}, prefix="col/"
        )

    def training_step(self, batch, batch_idx):
        x, maps, _, _ = batch
        self.train_sparseness.update(maps)
        self.log("train/sparseness", self.train_sparseness, on_step=False, on_epoch=True)
        return self.layer(x).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        _, maps, masks, maps_b = batch
        self.pointing_game.update(maps, masks)
        self.energy_pointing_game.update(maps, masks)
        self.iou_auc.update(maps, masks)
        self.pxap.update(maps, masks)
        self.consistency.update(maps, maps_b)
        self.collection.update(attributions=maps)
        for name in ("pointing_game", "energy_pointing_game", "iou_auc", "pxap", "consistency"):
            self.log(f"val/{name}", getattr(self, name), on_step=False, on_epoch=True)
        self.log_dict(self.collection, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_logged_from_lightning_module(tmp_path):
    x, maps, masks, maps_b = make_data(n=8)
    loader = DataLoader(TensorDataset(x, maps, masks, maps_b), batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        limit_train_batches=2,
        limit_val_batches=3,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(ExplainedModule(), loader, loader)
    logged = trainer.callback_metrics
    # Validation saw the first 3 batches (6 samples); training the first 2 (4 samples).
    expected = expected_values(maps[:6], masks[:6], maps_b[:6])
    for name in ("pointing_game", "energy_pointing_game", "iou_auc", "pxap", "consistency"):
        torch.testing.assert_close(logged[f"val/{name}"], expected[name], msg=name)
    torch.testing.assert_close(logged["col/sparseness"], expected["sparseness"])
    torch.testing.assert_close(logged["col/complexity"], expected["complexity"])
    torch.testing.assert_close(logged["train/sparseness"], sparseness(maps[:4]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    _, maps, masks, maps_b = make_data(n=6, size=16)
    class_ids = torch.tensor([0, 1, 1, 0, 2, 2])
    metrics = [
        (PointingGame(tolerance=3, num_classes=3, average="macro"), (maps, masks, class_ids)),
        (EnergyPointingGame(), (maps, masks)),
        (IoUAUC(threshold=0.5, return_mean_iou=True), (maps, masks)),
        (PixelAveragePrecision(compat="comet"), (maps, masks)),
        (Sparseness(return_per_sample=True), (maps,)),
        (Complexity(), (maps,)),
        (ExplanationConsistency(similarity="ssim", return_per_sample=True), (maps, maps_b)),
        (ExplanationConsistency(), (maps, maps_b)),
    ]
    for metric, args in metrics:
        metric.update(*args)
        cpu = metric.compute()
        metric.reset()
        metric.to("cuda")
        metric.update(*(a.cuda() for a in args))
        gpu = metric.compute()
        name = type(metric).__name__
        if isinstance(cpu, dict):
            for key in cpu:
                assert gpu[key].device.type == "cuda", name
                torch.testing.assert_close(gpu[key].cpu(), cpu[key], atol=1e-5, rtol=1e-5, msg=name)
        else:
            assert gpu.device.type == "cuda", name
            torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5, msg=name)
