"""Train COMET (Comprehensive Attribution) on the synthetic shapes and look at its masks.

Three steps, each one call:

1. ``train_detector``: a plain classifier of the **full** images of the data module (the detector);
2. ``ComprehensiveAttribution``: a selector draws a mask, a predictor classifies the masked image, and the frozen
   detector penalises the selector when class evidence is left outside the mask; trained with a plain
   ``Trainer.fit``;
3. ``SelectorAttribution``: the trained selector's masks through the Captum interface, scored against the
   objects' masks (PxAP, pointing game) and written as an overlay PNG.

The images are raw values in [0, 1], so the fill value of the masked-out pixels is the dataset's channel mean.

    python examples/comprehensive_attribution.py --out comet_example          # 32 px, a few minutes on 2 CPU cores
    python examples/comprehensive_attribution.py --out /tmp/comet --smoke     # a few steps at 16 px, for CI
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch

from lightning_xai.attr import SelectorAttribution
from lightning_xai.data import ShapesDataModule
from lightning_xai.metrics import PixelAveragePrecision, PointingGame
from lightning_xai.modules import ComprehensiveAttribution, small_selector, train_detector
from lightning_xai.viz import save_overlay_grid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("comet_example"), help="folder for the overlay PNG")
    parser.add_argument("--smoke", action="store_true", help="a few training steps on tiny images (CI)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of each model (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.smoke:
        data = ShapesDataModule(
            batch_size=8, image_size=16, train_size=16, val_size=8, test_size=8, seed=args.seed
        )
        epochs, limits = 1, {"max_epochs": 1, "limit_val_batches": 1}
    else:
        data = ShapesDataModule(batch_size=64, image_size=32, train_size=1024, val_size=256, test_size=256)
        epochs, limits = args.epochs, {"max_epochs": args.epochs}

    # 1. the detector: a classifier of full images, trained on the same data
    detector = train_detector(data, "small_resnet", max_epochs=epochs, lr=2e-3, seed=args.seed)

    # 2. selector + predictor, with the frozen detector's penalty
    L.seed_everything(args.seed, verbose=False)
    module = ComprehensiveAttribution(
        selector=small_selector(width=8),
        predictor="small_resnet",
        detector=detector,
        fill=data.normalization()[0],  # raw images: fill with the dataset's channel mean
        lr=2e-3,
        warmup_epochs=1,
    )
    trainer = L.Trainer(
        **limits,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=not args.smoke,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, data)
    metrics = trainer.validate(module, data, verbose=False)[0]

    # 3. the masks, as an attribution method
    batch = next(iter(data.test_dataloader()))
    images, labels, masks = batch["image"][:8], batch["label"][:8], batch["mask"][:8]
    module.eval()
    maps = SelectorAttribution(module).attribute(images)
    pxap, pointing = PixelAveragePrecision(), PointingGame(tolerance=2)
    pxap.update(maps, masks)
    pointing.update(maps, masks)
    with torch.no_grad():
        predicted = module(images)[0].argmax(1)
    titles = [
        f"{data.classes[int(y)]} (pred {data.classes[int(p)]})"
        for y, p in zip(labels, predicted, strict=True)
    ]
    path = save_overlay_grid(args.out / "comet_masks.png", images, maps, masks=masks, titles=titles)
    print(
        f"validation: predictor accuracy {metrics['val_acc']:.2f}, detector accuracy on the complement "
        f"{metrics['val_detector_acc']:.2f}, mask area {metrics['val_mask_area']:.2f}"
    )
    print(
        f"masks of {len(images)} test images: PxAP {float(pxap.compute()):.2f}, pointing game {float(pointing.compute()):.2f}"
    )
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
