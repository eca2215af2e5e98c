"""The demo's synthetic part: train the models on biased shapes, explain and score them, draw the figures."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attr.registry import explain_batch
from ..data import ShapesDataModule, ShapesDataset
from ..explain import constant_rows
from ..metrics.functional import deletion_auc, insertion_auc, pointing_game
from ..models import LogitsForward, logits_of
from ..viz.overlay import _to_hwc, overlay
from ..viz.report import figure_png
from ..viz.sag import render_sag
from .config import METHODS, DemoConfig


def _fit(config: DemoConfig, module: L.LightningModule, data: ShapesDataModule, callbacks: list) -> float:
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=config.progress,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return time.perf_counter() - started


def demo_data(config: DemoConfig) -> ShapesDataModule:
    """The demo's biased shapes: train and val follow ``config.bias``, test is bias-conflicting."""
    return ShapesDataModule(
        batch_size=config.batch_size,
        image_size=config.image_size,
        bias=config.bias,
        train_size=config.train_size,
        val_size=config.val_size,
        test_size=config.test_size,
        seed=config.seed,
    )


def train_models(
    config: DemoConfig,
    data: ShapesDataModule,
    extra_callbacks: Callable[[str], list[L.Callback]] | None = None,
) -> tuple[dict[str, nn.Module], list[dict]]:
    """The baseline, MHEX, consistency-reweighted and Comprehensive Attribution models, trained on the same
    data for the same number of epochs; returns the trained modules (eval mode) and a row per model.
    ``extra_callbacks(model name)`` adds callbacks to a model's run (e.g. per-epoch measurements)."""
    from ..callbacks import ExplanationConsistencyReweighting, MultiHeadExplainer
    from ..modules import ComprehensiveAttribution, ImageClassifier

    def classifier() -> ImageClassifier:
        return ImageClassifier(config.model, num_classes=data.num_classes, lr=config.lr)

    plans = {
        "baseline": ("ImageClassifier (cross-entropy)", classifier, list),
        "MHEX": ("+ MultiHeadExplainer callback", classifier, lambda: [MultiHeadExplainer()]),
        "consistency-reweighted": (
            "+ ExplanationConsistencyReweighting callback (its defaults: 5 warm-up epochs, then a refresh every 5)",
            classifier,
            lambda: [
                # A refresh every epoch from epoch 1 scores a model that still follows the cue; measured over 3
                # seeds it lost 0.36 of bias-conflicting accuracy against the baseline, the defaults 0.08
                # (BENCHMARKS.md, "The demo's training-time models").
                ExplanationConsistencyReweighting(
                    layer=config.layer,
                    score_dataloader=data.train_dataloader(),  # no augmentation to keep out of the scores
                )
            ],
        ),
        "Comprehensive Attribution": (
            "selector + predictor; the trained baseline is the frozen detector",
            lambda: ComprehensiveAttribution(
                predictor=config.model,
                detector=models["baseline"].model,
                num_classes=data.num_classes,
                fill=data.normalization()[0],  # raw [0, 1] images: the hidden part shows the mean colour
                lr=config.lr,
                warmup_epochs=0,
            ),
            list,
        ),
    }
    models: dict[str, nn.Module] = {}
    rows: list[dict] = []
    for name, (how, build, callbacks) in plans.items():
        L.seed_everything(config.seed, verbose=False)
        module = build()
        seconds = _fit(config, module, data, callbacks() + (extra_callbacks(name) if extra_callbacks else []))
        models[name] = module.eval()
        rows.append({"model": name, "training": how, "train seconds": round(seconds)})
    return models, rows


@torch.no_grad()
def accuracy(model: nn.Module, loader: Any) -> float:
    correct = total = 0
    for batch in loader:
        predicted = logits_of(model(batch["image"])).argmax(1)
        correct += int((predicted == batch["label"]).sum())
        total += batch["label"].numel()
    return correct / max(total, 1)


# --------------------------------------------------------------------------------------------- explanations


def explain_all(
    config: DemoConfig,
    models: dict[str, nn.Module],
    images: Tensor,
    labels: Tensor,
    masks: Tensor,
    *,
    methods: tuple[tuple[str, str, str], ...] = METHODS,
    method_settings: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[dict], dict[str, Tensor], dict[str, dict[str, np.ndarray]]]:
    """Every method of ``methods`` (label, model key, method name) on the same images: a row of scores per
    method, the maps, and the mean deletion / insertion curves. ``method_settings`` default to the config's."""
    settings = config.method_settings if method_settings is None else method_settings
    rows, maps, curves = [], {}, {}
    # I-GOS's 28x28 mask is made for 224 px images (8 px cells); keep cells of 4 px on small images
    mask_size = max(4, min(28, images.shape[-1] // 4))
    defaults = {"igos": {"mask_size": mask_size}, "igos++": {"mask_size": mask_size}}
    for label, model_key, method in tqdm(methods, desc="explaining", disable=not config.progress):
        model = models[model_key]
        started = time.perf_counter()
        explained = explain_batch(
            model,
            images,
            labels,
            method,
            layer=config.layer,
            attribute_args={**defaults.get(method, {}), **settings.get(method, {})},
        )
        seconds = (time.perf_counter() - started) / images.shape[0]
        forward = LogitsForward(model)
        deletion = deletion_auc(forward, images, explained, labels, return_curves=True, reduction="none")
        insertion = insertion_auc(forward, images, explained, labels, return_curves=True, reduction="none")
        maps[label] = explained
        curves[label] = {
            "deletion": deletion["curves"].nanmean(0).numpy(),
            "insertion": insertion["curves"].nanmean(0).numpy(),
        }
        rows.append(
            {
                "method": label,
                "model": model_key,
                # over the maps that rank something; None when every map is constant
                "deletion AUC ↓": _finite_or_none(deletion["auc"].nanmean()),
                "insertion AUC ↑": _finite_or_none(insertion["auc"].nanmean()),
                "pointing game ↑": _finite_or_none(pointing_game(explained, masks, tolerance=0)),
                "constant maps": int(constant_rows(explained).sum()),
                "seconds / image": round(seconds, 3),
            }
        )
    return rows, maps, curves


def _finite_or_none(value: Tensor) -> float | None:
    return float(value) if bool(torch.isfinite(value)) else None


def overlays_figure(
    images: Tensor, masks: Tensor, maps: dict[str, Tensor], count: int, row_titles: list[str] | None = None
) -> plt.Figure:
    """Rows: images; columns: the image (titled by ``row_titles`` when given), then each method's heatmap over
    it (white: the object's outline)."""
    count = min(count, images.shape[0])
    columns = 1 + len(maps)
    fig, axes = plt.subplots(count, columns, figsize=(1.9 * columns, 1.9 * count + 0.4), squeeze=False)
    for row in range(count):
        axes[row, 0].imshow(_to_hwc(images[row]))
        for col, (label, heat) in enumerate(maps.items(), start=1):
            axes[row, col].imshow(overlay(images[row], heat[row]))
            axes[row, col].contour(masks[row].float().numpy(), levels=[0.5], colors="white", linewidths=0.8)
            if row == 0:
                axes[row, col].set_title(label, fontsize=8)
        if row_titles is not None:
            axes[row, 0].set_title(row_titles[row], fontsize=7)
        elif row == 0:
            axes[row, 0].set_title("image", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def curves_figure(curves: dict[str, dict[str, np.ndarray]]) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, kind in zip(axes, ("deletion", "insertion"), strict=True):
        for label, values in curves.items():
            curve = values[kind]
            ax.plot(np.linspace(0, 1, len(curve)), curve, label=label)
        ax.set_xlabel("fraction of cells " + ("removed" if kind == "deletion" else "inserted"))
        ax.set_ylabel("softmax score of the class")
        ax.set_title(
            f"{kind} curves (mean over images; {'lower' if kind == 'deletion' else 'higher'} is better)"
        )
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


#: Two-object test images searched for the SAG gallery, per image shown.
SAG_CANDIDATES = 3


def structured_attention_graphs(config: DemoConfig, model: nn.Module) -> tuple[list[dict[str, Any]], dict]:
    """SAGs of the baseline on two-object test images (both objects show the class): ``SAG_CANDIDATES`` images
    per image shown are searched, and the gallery shows those whose roots lie most on the objects. An image that
    SAG cannot explain (the baseline alone keeps the class: every patch would be a "root") is never shown; the
    second value counts the candidates, those uninformative images and those without a root."""
    if config.sag_images == 0:
        return [], {}
    count = config.sag_images * SAG_CANDIDATES
    dataset = ShapesDataset(
        count, image_size=config.image_size, num_objects=2, split="test", seed=config.seed + 1
    )
    batch = torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])
    settings = {"seed": config.seed, **config.method_settings.get("sag", {})}
    found = graphs(model, batch["image"], batch["label"], dataset.classes, settings, masks=batch["mask"])
    shown = [g for g in found if g["roots"] and not g["uninformative"]]
    shown.sort(key=lambda g: -g["on_object"])
    summary = {
        "candidates": count,
        "uninformative": sum(g["uninformative"] for g in found),
        "without_root": sum(not g["roots"] and not g["uninformative"] for g in found),
    }
    return shown[: config.sag_images], summary


def graphs(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    classes: list[str],
    settings: dict[str, Any],
    masks: Tensor | None = None,
) -> list[dict[str, Any]]:
    """A Structured Attention Graph per image for its label: the class name, root count, DNF, whether SAG could
    explain it at all, the share of the roots' area on the object (with ``masks``) and a PNG."""
    from ..attr import StructuredAttentionGraph
    from ..attr.sag import patch_masks

    results = StructuredAttentionGraph(LogitsForward(model)).explain(images, labels, **settings)
    rows = []
    for i, (label, result) in enumerate(zip(labels, results, strict=True)):
        on_object = None
        if masks is not None and result.roots:
            area = patch_masks(result.roots, result.grid_size, images.shape[-2:], result.patch_interpolation)
            on_object = float((area * masks[i].float()).sum() / area.sum().clamp_min(1e-12))
        rows.append(
            {
                "class": classes[int(label)],
                "roots": len(result.roots),
                "dnf": result.dnf,
                "uninformative": bool(result.stats.get("uninformative")),
                "on_object": on_object,
                "png": _sag_png(result),
            }
        )
    return rows


def _sag_png(result: Any) -> bytes:
    return figure_png(render_sag(result))


# ------------------------------------------------------------------------------------------------------ run
