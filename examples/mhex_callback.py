"""Add MHEX to a Trainer script you already have, then look at what the heads point at.

The module is the library's plain ``ImageClassifier`` (``small_resnet``, a timm ResNet for small images, with
``self.criterion = nn.CrossEntropyLoss()``), left exactly as it is. The only change to the training script is the
``MultiHeadExplainer`` callback: it injects attention gates and deep-supervision heads into the model in
``setup`` and adds the heads' losses to the module's own loss. After training, ``MHEXAttribution`` turns the
heads' equivalent matrices into saliency maps, written as an overlay PNG with the objects' outlines.

    python examples/mhex_callback.py --out mhex_example            # 48 px shapes, about 2 minutes on 2 CPU cores
    python examples/mhex_callback.py --out /tmp/mhex --smoke       # a few steps at 32 px, for CI
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch

from lightning_xai.attr.mhex import MHEXAttribution
from lightning_xai.callbacks import MultiHeadExplainer
from lightning_xai.data import ShapesDataModule
from lightning_xai.metrics import PointingGame
from lightning_xai.modules import ImageClassifier
from lightning_xai.viz import save_overlay_grid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("mhex_example"), help="folder for the overlay PNG")
    parser.add_argument("--smoke", action="store_true", help="a few training steps on tiny images (CI)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    if args.smoke:
        data = ShapesDataModule(
            batch_size=8, image_size=32, train_size=16, val_size=8, test_size=8, seed=args.seed
        )
        limits = {"max_steps": 2, "limit_val_batches": 1}
    else:
        data = ShapesDataModule(batch_size=64, image_size=48, train_size=1536, val_size=256, test_size=256)
        limits = {"max_epochs": args.epochs}

    # --- the user's existing script: an unmodified LightningModule and Trainer --------------------------
    module = ImageClassifier("small_resnet", num_classes=data.num_classes, lr=3e-3)
    trainer = L.Trainer(
        **limits,
        callbacks=[MultiHeadExplainer()],  # the one added line
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=not args.smoke,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, data)

    # --- explanations from the trained heads ------------------------------------------------------------
    batch = next(iter(data.test_dataloader()))
    images, labels, masks = batch["image"][:8], batch["label"][:8], batch["mask"][:8]
    module.eval()
    maps = MHEXAttribution(module.model).attribute(images, target=labels)
    pointing = PointingGame(tolerance=2)
    pointing.update(maps, masks)
    with torch.no_grad():
        predicted = module(images).argmax(1)
    titles = [
        f"{data.classes[int(y)]} (pred {data.classes[int(p)]})"
        for y, p in zip(labels, predicted, strict=True)
    ]
    path = save_overlay_grid(args.out / "mhex_overlay.png", images, maps, masks=masks, titles=titles)
    print(f"pointing game on {len(images)} test images: {float(pointing.compute()):.2f}")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
