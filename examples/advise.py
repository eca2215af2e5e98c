"""Explain a trained CNN with ADVISE and compare it with Grad-CAM on the same layer.

Trains the library's ``ImageClassifier`` (``small_resnet``) on the synthetic shapes data with a plain Lightning
Trainer, then explains test images with ``ADVISE`` on ``layer4``: every channel's activations get an adaptive
kernel density estimate, channels are grouped by its number of peaks, each group gets a Grad-CAM, and the group
with the best AVX is returned. The script prints the groups of the first image, scores ADVISE and Grad-CAM with
the AVX metric and the pointing game, and writes an overlay PNG of the ADVISE maps with the objects' outlines.

    python examples/advise.py --out advise_example          # 48 px shapes, about 2 minutes on 2 CPU cores
    python examples/advise.py --out /tmp/advise --smoke     # a few steps at 32 px, for CI
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch

from lightning_xai.attr import ADVISE
from lightning_xai.data import ShapesDataModule
from lightning_xai.explain import grad_cam
from lightning_xai.metrics import AVX, PointingGame
from lightning_xai.modules import ImageClassifier
from lightning_xai.viz import save_overlay_grid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("advise_example"), help="folder for the overlay PNG")
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

    module = ImageClassifier("small_resnet", num_classes=data.num_classes, lr=3e-3)
    L.Trainer(
        **limits,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=not args.smoke,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    ).fit(module, data)
    model = module.model.eval()

    batch = next(iter(data.test_dataloader()))
    images, labels, masks = batch["image"][:8], batch["label"][:8], batch["mask"][:8]
    # The classifier takes [0, 1] pixels, so ADVISE needs no mean/std to score masked images with AVX.
    explainer = ADVISE(model, "layer4")
    maps, details = explainer.attribute(images, target=labels, upsample=True, return_details=True)

    first = details.valid_groups[0].nonzero()[:, 0].tolist()
    print(f"image 0: {details.relevance.shape[1]} channels, peak counts of the competing groups {first}")
    for g in first:
        print(
            f"  g={g}: {int(details.group_sizes[0, g])} channels, "
            f"AVX {float(details.group_scores['avx'][0, g]):.3f}"
        )
    print(f"  chosen g={int(details.selected_group[0])}")
    print(f"KDE dropped {float(details.dropped_fraction.mean()):.1%} of the activations (outside [0, 1])")

    # AVX of the returned maps: the runner-up's map of the same group for ADVISE, Grad-CAM of the runner-up
    # for Grad-CAM; both through the same metric.
    index = torch.arange(len(images))
    chosen = details.selected_group.clamp_min(0)
    runner_up = details.runner_up_maps[index, chosen].unsqueeze(1)
    cams = {
        c: grad_cam(model, images, target, "layer4", upsample=True, normalize=True)
        for c, target in (("top1", labels), ("top2", details.runner_up))
    }
    candidates = {"ADVISE": (maps, runner_up), "Grad-CAM": (cams["top1"], cams["top2"])}
    for name, (top1, top2) in candidates.items():
        avx = AVX(model, map_normalization="minmax")
        avx.update(images, top1, top2, target=labels)
        pointing = PointingGame(tolerance=2)
        pointing.update(top1, masks)
        print(
            f"{name:8s}  AVX {float(avx.compute()['avx']):.3f}  pointing game {float(pointing.compute()):.2f}"
        )

    titles = [
        f"{data.classes[int(y)]}, g={int(g)}" for y, g in zip(labels, details.selected_group, strict=True)
    ]
    path = save_overlay_grid(args.out / "advise_overlay.png", images, maps, masks=masks, titles=titles)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
