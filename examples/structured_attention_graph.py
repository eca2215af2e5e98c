"""Structured Attention Graphs: several small sets of patches, each enough for a confident prediction.

A small ResNet is trained for a moment on synthetic one-shape images. Shown an image with *two* copies of the
shape, it can be confident from either copy alone, which a single heatmap cannot say. ``StructuredAttentionGraph``
searches for minimal sufficient sets of patches with a beam search, keeps a diverse few, and draws how the
confidence falls as patches are removed; the DNF string reads "confident if P.. & P.. are visible, or P.. & ..".

    python examples/structured_attention_graph.py --out sag_example            # 48 px, about a minute
    python examples/structured_attention_graph.py --out /tmp/sag --smoke       # a few steps at 32 px, for CI
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from lightning_xai.attr import StructuredAttentionGraph
from lightning_xai.data import ShapesDataModule, ShapesDataset
from lightning_xai.modules import ImageClassifier
from lightning_xai.viz import save_sag_png


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("sag_example"), help="folder for the PNG files")
    parser.add_argument("--smoke", action="store_true", help="a few training steps on tiny images (CI)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--images", type=int, default=4, help="two-object images to explain")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def object_patches(instance_masks: torch.Tensor, grid: int) -> list[set[int]]:
    """The grid patches that each object touches."""
    cover = F.adaptive_max_pool2d(instance_masks.float()[:, None], grid)[:, 0].flatten(1) > 0
    return [set(row.nonzero()[:, 0].tolist()) for row in cover]


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    size, grid = (32, 4) if args.smoke else (48, 6)
    data = ShapesDataModule(
        batch_size=64,
        image_size=size,
        train_size=64 if args.smoke else 2048,
        val_size=64,
        test_size=64,
        seed=args.seed,
    )
    module = ImageClassifier("small_resnet", num_classes=data.num_classes, lr=3e-3)
    trainer = L.Trainer(
        **({"max_steps": 2} if args.smoke else {"max_epochs": args.epochs}),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=not args.smoke,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    model = module.model.eval()

    # --- explain two-object images --------------------------------------------------------------------
    pairs = ShapesDataset(args.images, image_size=size, num_objects=2, split="test", seed=args.seed + 1)
    items = [pairs[i] for i in range(len(pairs))]
    x = torch.stack([item["image"] for item in items])
    labels = torch.stack([item["label"] for item in items])
    sag = StructuredAttentionGraph(model)
    results = sag.explain(
        x,
        target=labels,
        grid_size=grid,
        patch_interpolation="nearest",  # patches are whole grid cells
        max_root_size=3 if args.smoke else 12,
        heuristic_kwargs={"n_steps": 4} if args.smoke else None,
        seed=args.seed,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (item, result) in enumerate(zip(items, results, strict=True)):
        a, b = object_patches(item["instance_masks"], grid)
        on = [name for name, cells in (("A", a), ("B", b)) if any(root <= cells for root in result.roots)]
        print(
            f"image {i} ({pairs.classes[result.target]}, p = {result.p_full:.3f}): {result.dnf or 'no root'}; "
            f"roots within object(s) {', '.join(on) or 'none'}; {len(result.nodes)} graph nodes"
        )
        paths.append(save_sag_png(result, args.out / f"sag_{i}.png", dpi=100 if not args.smoke else 60))
    print(f"wrote {len(paths)} graphs to {args.out}")
    return paths


if __name__ == "__main__":
    main()
