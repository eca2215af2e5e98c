"""Watch a model's explanations while it trains: two callbacks added to an existing Trainer script.

The module is the library's plain ``ImageClassifier`` and the data the synthetic shapes with a spurious
background cue (bias 0.9). ``SaliencyMapLogger`` draws Grad-CAM and Integrated Gradients overlays of the same
validation images every epoch (PNG files here, since the script uses a CSV logger; TensorBoard, W&B and MLflow
get images), and ``ExplanationMetrics`` logs Grad-CAM's deletion AUC and pointing game as ``xai/*`` columns of
``metrics.csv``.

    python examples/explanation_callbacks.py --out callbacks_example     # 48 px, about 2 minutes on 2 CPU cores
    python examples/explanation_callbacks.py --out /tmp/cb --smoke       # a few steps at 24 px, for CI
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger

from lightning_xai.callbacks import ExplanationMetrics, SaliencyMapLogger
from lightning_xai.data import ShapesDataModule
from lightning_xai.modules import ImageClassifier


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("callbacks_example"), help="log folder")
    parser.add_argument("--smoke", action="store_true", help="a few training steps on tiny images (CI)")
    parser.add_argument("--epochs", type=int, default=4)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    L.seed_everything(0, verbose=False)
    if args.smoke:
        data = ShapesDataModule(batch_size=8, image_size=24, bias=0.9, train_size=16, val_size=8, test_size=8)
        epochs = 1
    else:
        data = ShapesDataModule(batch_size=64, image_size=48, bias=0.9, train_size=2048, val_size=128)
        epochs = args.epochs

    # --- the existing script: an unmodified module and Trainer, plus the two callbacks --------------------
    module = ImageClassifier("small_resnet", num_classes=data.num_classes, lr=3e-3)
    logger = CSVLogger(args.out)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=logger,
        inference_mode=False,  # explanations need gradients during validation
        callbacks=[
            SaliencyMapLogger("gradcam", num_samples=8),
            SaliencyMapLogger("integrated_gradients", attribute_args={"n_steps": 16}, dirname="saliency_ig"),
            ExplanationMetrics(["deletion", "pointing_game"], method="gradcam"),
        ],
        enable_progress_bar=not args.smoke,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, data)

    log_dir = Path(logger.log_dir)
    rows = [r for r in csv.DictReader((log_dir / "metrics.csv").open()) if r.get("xai/deletion")]
    for row in rows:
        print(f"epoch {row['epoch']}: deletion {float(row['xai/deletion']):.3f}, "
              f"pointing game {float(row['xai/pointing_game']):.2f}")  # fmt: skip
    print(f"overlays in {log_dir / 'saliency'} and {log_dir / 'saliency_ig'}")
    return log_dir


if __name__ == "__main__":
    main()
