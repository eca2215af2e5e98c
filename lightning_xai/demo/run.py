"""Run the demo end to end and write its report."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..data import ShapesDataModule
from ..viz.report import HTMLReport
from .config import DemoConfig
from .real import add_real_section, explain_photos, real_metrics
from .synthetic import (
    accuracy,
    curves_figure,
    demo_data,
    explain_all,
    overlays_figure,
    structured_attention_graphs,
    train_models,
)


def run_demo(config: DemoConfig) -> dict[str, object]:
    """Train, explain, score and write ``report.html``, ``overlays.png`` and ``metrics.json`` into
    ``config.out``; return the metrics."""
    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    L.seed_everything(config.seed, verbose=False)
    data = demo_data(config)
    real = None
    if config.real:  # first, so that a missing package or photo fails before the training
        real = explain_photos(config)
    models, training_rows = train_models(config, data)
    for row in training_rows:
        row["in-distribution accuracy"] = accuracy(models[row["model"]], data.val_dataloader())
        row["bias-conflicting accuracy"] = accuracy(models[row["model"]], data.test_dataloader())

    test = torch.utils.data.default_collate([data.datasets["test"][i] for i in range(config.explain_images)])
    images, labels, masks = test["image"], test["label"], test["mask"]
    method_rows, maps, curves = explain_all(config, models, images, labels, masks)
    sags, sag_summary = structured_attention_graphs(config, models["baseline"])

    overlays = overlays_figure(images, masks, maps, max(config.num_overlays, 1))
    overlays.savefig(out / "overlays.png", dpi=100)
    seconds = time.perf_counter() - started
    metrics: dict[str, object] = {
        "models": training_rows,
        "methods": method_rows,
        "sags": [{k: v for k, v in s.items() if k != "png"} for s in sags],
        "sag_search": sag_summary,
        "seconds": round(seconds, 1),
        "config": asdict(config),
    }
    if real is not None:
        metrics["real"] = real_metrics(real)
        real["figure"].savefig(out / "overlays_real.png", dpi=100)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    _report(
        config, data, training_rows, method_rows, overlays, curves, (sags, sag_summary), seconds, real
    ).save(out / "report.html")
    return metrics


def _where_roots_lie(sags: list[dict[str, Any]]) -> str:
    """A sentence on where the shown roots lie, from their share of area on the objects."""
    if not sags:
        return ""
    share = sum(s["on_object"] for s in sags) / len(sags)
    if share < 0.5:
        return (
            f" Even these roots lie mostly on the background ({share:.0%} of their area on the objects): what "
            "suffices for the baseline's decision is the tint, the shortcut it learnt."
        )
    return f" Their roots lie mostly on the objects ({share:.0%} of their area)."


#: Below this held-out in-distribution accuracy a model has not learnt its task, and its figures say nothing.
LEARNT = 0.9


def model_sentences(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per model, written from its accuracies against the baseline's (no claim the numbers do not
    make)."""
    baseline = next(r for r in rows if r["model"] == "baseline")
    base_in, base_out = baseline["in-distribution accuracy"], baseline["bias-conflicting accuracy"]
    if base_in < LEARNT:
        return [
            f"The baseline reaches {base_in:.2f} on held-out images of its training distribution, below {LEARNT}: "
            "it has not learnt its task, so none of the comparisons below says anything (train longer)."
        ]
    learnt_cue = "took the background shortcut" if base_out < 0.5 else "learnt the shapes"
    sentences = [
        f"The baseline learnt its task ({base_in:.2f} in distribution) and {learnt_cue}: {base_out:.2f} on "
        "bias-conflicting images."
    ]
    for row in rows:
        if row is baseline:
            continue
        gain = row["bias-conflicting accuracy"] - base_out
        if row["in-distribution accuracy"] < LEARNT:
            verdict = f"has not learnt its task ({row['in-distribution accuracy']:.2f} in distribution)"
        elif abs(gain) < 0.02:
            verdict = "does as well as the baseline on bias-conflicting images, no better"
        elif gain > 0:
            verdict = f"improves bias-conflicting accuracy by {gain:.2f} over the baseline"
        else:
            verdict = f"loses {-gain:.2f} of bias-conflicting accuracy against the baseline here"
        sentences.append(
            f"{row['model']}: {row['in-distribution accuracy']:.2f} in distribution, "
            f"{row['bias-conflicting accuracy']:.2f} bias-conflicting; it {verdict}."
        )
    return sentences


def _report(
    config: DemoConfig,
    data: ShapesDataModule,
    training_rows: list[dict],
    method_rows: list[dict],
    overlays: plt.Figure,
    curves: dict[str, dict[str, np.ndarray]],
    sag_gallery: tuple[list[dict[str, Any]], dict[str, int]],
    seconds: float,
    real: dict[str, Any] | None = None,
) -> HTMLReport:
    from .. import __version__

    report = HTMLReport("lightning_xai demo report")
    report.paragraph(
        f"Synthetic shapes ({', '.join(data.classes)}) at {config.image_size} px. In training, the background "
        f"tint agrees with the label for {config.bias:.0%} of the images (a spurious cue); the test split is "
        "bias-conflicting: its tint never agrees with the label, so a model that learnt the tint instead of "
        "the shape fails there, and its explanations point at the background instead of the object."
    )
    report.heading("Models")
    report.paragraph(
        f"Each model trained for {config.epochs} epoch{'s' if config.epochs != 1 else ''} on {config.train_size} "
        f"images (batch {config.batch_size}, lr {config.lr}), seed {config.seed}. In distribution: "
        f"{config.val_size} held-out images of the training distribution (the cue agrees with the label for "
        f"{config.bias:.0%}); bias-conflicting: {config.test_size} images whose cue never agrees."
    )
    report.table(training_rows)
    for sentence in model_sentences(training_rows):
        report.paragraph(sentence)
    report.heading("Explanations compared")
    report.paragraph(
        f"{config.explain_images} bias-conflicting test images, each explained for its label. Deletion / "
        "insertion: the I-GOS protocol (28×28 cells, blurred baseline; area under the class score as the "
        "most salient cells are removed / inserted). Pointing game: the map's maximum lies on the object."
    )
    report.table(method_rows)
    report.figure(overlays, "Heatmaps of every method (white outline: the object's pixel mask).")
    report.figure(curves_figure(curves), "Deletion and insertion curves, mean over the explained images.")
    sags, searched = sag_gallery
    if searched:
        report.heading("Structured Attention Graphs")
        report.paragraph(
            "Two-object images: each root is a minimal set of patches that alone keeps the baseline's confidence "
            f"above the threshold. {searched['candidates']} bias-conflicting images were searched; "
            f"{searched['uninformative']} could not be explained (the black baseline alone already gives the "
            f"class, so every patch would be a root) and {searched['without_root']} had no root within the search "
            f"limits. Shown: the {len(sags)} whose roots lie most on the objects." + _where_roots_lie(sags)
        )
        for sag in sags:
            report.image(
                sag["png"],
                f"class {sag['class']}: {sag['roots']} root(s), {sag['on_object']:.0%} of their area on the "
                f"objects; {sag['dnf']}",
            )
    if real is not None:
        add_real_section(report, config, real)
    report.heading("Run")
    report.table(
        [
            {"setting": "lightning_xai", "value": __version__},
            {"setting": "torch", "value": torch.__version__},
            {"setting": "machine", "value": f"{platform.machine()}, {torch.get_num_threads()} torch threads"},
            {"setting": "total seconds", "value": round(seconds, 1)},
        ]
    )
    report.paragraph(json.dumps(asdict(config), default=str), note=True)
    return report
