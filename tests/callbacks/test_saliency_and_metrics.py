"""SaliencyMapLogger and ExplanationMetrics on an unmodified LightningModule, with every kind of logger."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.logger import Logger
from PIL import Image

from lightning_xai.callbacks import ExplanationMetrics, SaliencyMapLogger
from lightning_xai.data import ShapesDataModule
from lightning_xai.metrics import DeletionAUC, PointingGame, Sparseness
from lightning_xai.modules import ImageClassifier

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")


def data(**kwargs) -> ShapesDataModule:
    settings = dict(batch_size=8, image_size=24, train_size=16, val_size=12, test_size=8, seed=3)
    return ShapesDataModule(**{**settings, **kwargs})


def module() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier("small_resnet", num_classes=4)


def trainer(tmp_path: Path, callbacks, logger, **kwargs) -> L.Trainer:
    settings = dict(
        max_epochs=1,
        default_root_dir=tmp_path,
        inference_mode=False,
        callbacks=callbacks,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**settings, **kwargs})


def not_blank(path: Path) -> bool:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return pixels.std() > 5.0


# ------------------------------------------------------------------------------------------ SaliencyMapLogger


def test_tensorboard_gets_an_image(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path)
    trainer(tmp_path, [SaliencyMapLogger(num_samples=4)], logger).fit(module(), data())
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["saliency/gradcam"]
    (image,) = events.Images("saliency/gradcam")
    assert image.step == 0 and image.width > 100 and image.height > 50


def test_csv_logger_gets_png_files_every_n_epochs(tmp_path):
    logger = CSVLogger(tmp_path)
    callback = SaliencyMapLogger(
        "integrated_gradients", attribute_args={"n_steps": 4}, num_samples=3, every_n_epochs=2
    )
    trainer(tmp_path, [callback], logger, max_epochs=3).fit(module(), data())
    folder = Path(logger.log_dir) / "saliency"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0.png", "epoch=2.png"]
    assert all(not_blank(p) for p in folder.iterdir())
    assert callback.written == [folder / "epoch=0.png", folder / "epoch=2.png"]


def test_no_logger_writes_under_default_root_dir(tmp_path):
    callback = SaliencyMapLogger(num_samples=20)  # more than the 12 validation samples: shows them all
    trainer(tmp_path, [callback], logger=False).fit(module(), data())
    path = tmp_path / "saliency" / "epoch=0.png"
    assert path.exists() and not_blank(path)
    assert callback._samples["inputs"].shape[0] == 12


class _FakeExperiment:
    def __init__(self) -> None:
        self.artifacts: list[tuple[str, str, str]] = []

    def log_artifact(self, run_id: str, path: str, artifact_path: str) -> None:
        assert Path(path).exists() and not_blank(Path(path))
        self.artifacts.append((run_id, Path(path).name, artifact_path))


class _FakeLogger(Logger):
    name = "fake"
    version = 0

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, int]] = []
        self._experiment = _FakeExperiment()
        self.run_id = "run-1"

    @property
    def experiment(self) -> _FakeExperiment:
        return self._experiment

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_image(self, key: str, images: list, step: int | None = None) -> None:
        assert images[0].dtype == np.uint8 and images[0].ndim == 3
        self.images.append((key, step))


class WandbLogger(_FakeLogger):
    """Stands in for lightning's WandbLogger (the callback recognises loggers by class name)."""


class MLFlowLogger(_FakeLogger):
    """Stands in for lightning's MLFlowLogger."""


def test_wandb_and_mlflow_receive_images(tmp_path):
    wandb, mlflow = WandbLogger(), MLFlowLogger()
    trainer(tmp_path, [SaliencyMapLogger(num_samples=2)], [wandb, mlflow]).fit(module(), data())
    assert wandb.images == [("saliency/gradcam", 2)]
    assert mlflow.experiment.artifacts == [("run-1", "epoch=0.png", "saliency")]


def test_only_rank_zero_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(L.Trainer, "is_global_zero", property(lambda self: False))
    trainer(tmp_path, [SaliencyMapLogger(num_samples=2)], logger=False).fit(module(), data())
    assert not (tmp_path / "saliency").exists()


def test_validate_under_inference_mode_names_the_fix(tmp_path):
    for callback in (SaliencyMapLogger(num_samples=2), ExplanationMetrics(["deletion"])):
        run = trainer(tmp_path, [callback], logger=False, inference_mode=True)
        with pytest.raises(RuntimeError, match=r"inference_mode=False"):
            run.validate(module(), data(), verbose=False)


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="unknown attribution method 'gradcm'"):
        SaliencyMapLogger("gradcm")
    with pytest.raises(ValueError, match="num_samples"):
        SaliencyMapLogger(num_samples=0)
    with pytest.raises(ValueError, match="unknown metric 'delete'"):
        ExplanationMetrics(["delete"])
    with pytest.raises(ValueError, match="stages"):
        ExplanationMetrics(["deletion"], stages=("train",))
    with pytest.raises(ValueError, match="target"):
        ExplanationMetrics(["deletion"], target="other")


# ----------------------------------------------------------------------------------------- ExplanationMetrics


def _by_hand(model: ImageClassifier, dm: ShapesDataModule, split: str) -> dict[str, float]:
    """Grad-CAM of the label with Captum, scored with the metrics directly, over every batch of a split."""
    model.eval()
    deletion = DeletionAUC(model)
    pointing = PointingGame()
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    gradcam = LayerGradCam(model, model.model.layer4)
    for batch in loader:
        maps = gradcam.attribute(batch["image"], target=batch["label"]).detach()
        maps = torch.nn.functional.interpolate(maps, size=batch["image"].shape[-2:], mode="bilinear")[:, 0]
        deletion.update(batch["image"], maps, batch["label"])
        pointing.update(maps, batch["mask"])
    return {
        "deletion": float(deletion.compute()),
        "deletion_n_skipped": float(deletion.n_skipped),
        "pointing_game": float(pointing.compute()),
        "pointing_game_n_skipped": float(pointing.n_skipped),
    }


def test_logged_values_equal_the_metrics_computed_by_hand(tmp_path):
    dm = data()
    dm.setup("fit")
    model = module()
    callback = ExplanationMetrics(["deletion", "pointing_game"], stages=("validate", "test"))
    run = trainer(tmp_path, [callback], logger=CSVLogger(tmp_path))
    run.validate(model, dm, verbose=False)
    logged = {k: float(v) for k, v in run.callback_metrics.items() if k.startswith("xai/")}
    expected = _by_hand(model, dm, "val")
    assert logged == pytest.approx({f"xai/{k}": v for k, v in expected.items()}, abs=1e-5)
    run.test(model, dm, verbose=False)
    dm.setup("test")
    expected = _by_hand(model, dm, "test")
    skipped = {k: expected.pop(k) for k in ("deletion_n_skipped", "pointing_game_n_skipped")}
    assert callback.last_values == pytest.approx({f"xai/{k}": v for k, v in expected.items()}, abs=1e-5)
    for key, count in skipped.items():  # degenerate maps are logged
        assert float(run.callback_metrics[f"xai/{key}"]) == count
    csv = (Path(run.logger.log_dir) / "metrics.csv").read_text()
    assert "xai/deletion" in csv and "xai/pointing_game" in csv and "xai/pointing_game_n_skipped" in csv


def test_metrics_from_mapping_class_paths_and_max_batches(tmp_path):
    callback = ExplanationMetrics(
        {
            "del8": {"class_path": "lightning_xai.metrics.DeletionAUC", "init_args": {"resolution": 8}},
            "sparse": "lightning_xai.metrics.Sparseness",
        },
        max_batches=1,
        prefix="x/",
    )
    run = trainer(tmp_path, [callback], logger=False)
    model, dm = module(), data()
    run.validate(model, dm, verbose=False)
    assert set(callback.last_values) == {"x/del8", "x/sparse"}
    model.eval()
    batch = next(iter(dm.val_dataloader()))  # one batch of 8 of the 12 samples only
    maps = LayerGradCam(model, model.model.layer4).attribute(batch["image"], target=batch["label"]).detach()
    maps = torch.nn.functional.interpolate(maps, size=(24, 24), mode="bilinear")[:, 0]
    assert callback.last_values["x/sparse"] == pytest.approx(float(Sparseness()(maps)), abs=1e-5)


def test_clear_errors_for_missing_masks_and_unsupported_metrics(tmp_path):
    with pytest.raises(ValueError, match=r"ExplanationConsistency\.update takes"):
        run = trainer(tmp_path, [ExplanationMetrics(["lightning_xai.metrics.ExplanationConsistency"])], False)
        run.validate(module(), data(), verbose=False)

    def no_masks(batch):
        from lightning_xai.data import Batch

        return Batch(inputs=batch["image"], target=batch["label"])

    run = trainer(tmp_path, [ExplanationMetrics(["pointing_game"], batch_adapter=no_masks)], logger=False)
    with pytest.raises(ValueError, match="needs ground-truth masks"):
        run.validate(module(), data(), verbose=False)


def test_every_metric_that_skips_maps_logs_its_skip_count(tmp_path):
    skipping = {
        "pointing_game": "pointing_game",
        "energy_pointing_game": "energy_pointing_game",
        "iou_auc": {"class_path": "iou_auc", "init_args": {"normalize": "minmax"}},
        "pxap": {"class_path": "pxap", "init_args": {"normalize": "minmax"}},
        "sparseness": "sparseness",
        "complexity": "complexity",
    }
    callback = ExplanationMetrics(skipping, max_batches=1)
    run = trainer(tmp_path, [callback], logger=False)
    run.validate(module(), data(), verbose=False)
    logged = {k for k in run.callback_metrics if k.startswith("xai/")}
    assert {f"xai/{name}_n_skipped" for name in skipping} <= logged
