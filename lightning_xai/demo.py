"""The demo: train a small classifier on synthetic shapes, explain it with Grad-CAM, and write what was found."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from tqdm.auto import tqdm

from .data import ShapesDataModule
from .explain import grad_cam
from .metrics import PointingGame
from .modules import ImageClassifier
from .viz import save_overlay_grid


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo`; the defaults train in about two minutes on two CPU cores."""

    out: str = "demo-out"
    model: str = "small_resnet"
    layer: str = "auto"
    epochs: int = 6
    train_size: int = 2048
    val_size: int = 256
    test_size: int = 256
    image_size: int = 48
    batch_size: int = 64
    lr: float = 3e-3
    num_overlays: int = 16
    seed: int = 0
    progress: bool = True

    @classmethod
    def quick(cls, **overrides: object) -> DemoConfig:
        """A smoke-run configuration (seconds, not minutes) for CI."""
        settings = dict(epochs=1, train_size=128, val_size=32, test_size=32, image_size=24, num_overlays=4)
        settings.update(overrides)
        return cls(**settings)  # type: ignore[arg-type]

    def validate(self) -> None:
        for name in ("epochs", "train_size", "val_size", "test_size", "batch_size", "num_overlays"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"`lr` must be positive, got {self.lr!r}")


def run_demo(config: DemoConfig) -> dict[str, object]:
    """Train, explain and write ``overlays.png`` and ``metrics.json`` into ``config.out``; return the metrics.

    The metrics are the accuracy on the held-out split and the pointing game of Grad-CAM against the object
    masks (the fraction of Grad-CAM maxima that fall on the object, tolerance 0).
    """
    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.seed, verbose=False)
    data = ShapesDataModule(
        batch_size=config.batch_size,
        image_size=config.image_size,
        train_size=config.train_size,
        val_size=config.val_size,
        test_size=config.test_size,
        seed=config.seed,
    )
    module = ImageClassifier(config.model, num_classes=data.num_classes, lr=config.lr)
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=config.progress,
        deterministic=True,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    train_seconds = time.perf_counter() - started

    model = module.model.eval()
    pointing = PointingGame(tolerance=0)
    correct = total = 0
    shown: dict[str, list[torch.Tensor]] = {"images": [], "maps": [], "masks": [], "titles": []}
    for batch in tqdm(data.test_dataloader(), desc="Grad-CAM", disable=not config.progress):
        images, labels, masks = batch["image"], batch["label"], batch["mask"]
        with torch.no_grad():
            predicted = model(images).argmax(1)
        correct += int((predicted == labels).sum())
        total += labels.numel()
        maps = grad_cam(model, images, labels, config.layer, upsample=True, normalize=True)
        pointing.update(maps, masks)
        room = config.num_overlays - len(shown["images"])
        if room > 0:
            shown["images"].extend(images[:room])
            shown["maps"].extend(maps[:room])
            shown["masks"].extend(masks[:room])
            shown["titles"].extend(
                f"{data.classes[int(y)]} -> {data.classes[int(p)]}"
                for y, p in zip(labels[:room], predicted[:room], strict=True)
            )

    save_overlay_grid(
        out / "overlays.png",
        torch.stack(shown["images"]),
        torch.stack(shown["maps"]),
        torch.stack(shown["masks"]),
        titles=shown["titles"],
    )
    metrics: dict[str, object] = {
        "accuracy": correct / total,
        "gradcam_pointing_game": float(pointing.compute()),
        "num_test_images": total,
        "train_seconds": round(train_seconds, 1),
        "config": asdict(config),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
