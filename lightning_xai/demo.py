"""The demo: train models on biased synthetic shapes with and without the library's training-time methods,
explain them with every method of the library, score the explanations, and write one HTML report."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attr.registry import explain_batch
from .data import ShapesDataModule, ShapesDataset
from .metrics.functional import deletion_auc, insertion_auc, pointing_game
from .models import LogitsForward, logits_of
from .viz.overlay import _to_hwc, overlay
from .viz.report import HTMLReport, figure_png

#: (label in the report, model key, method name) of the explanations the demo compares.
METHODS: tuple[tuple[str, str, str], ...] = (
    ("Grad-CAM", "baseline", "gradcam"),
    ("Integrated Gradients", "baseline", "integrated_gradients"),
    ("I-GOS", "baseline", "igos"),
    ("iGOS++", "baseline", "igos++"),
    ("ADVISE", "baseline", "advise"),
    ("MHEX heads", "MHEX", "mhex"),
    ("Comprehensive Attribution mask", "Comprehensive Attribution", "selector"),
)


#: The real-photo section's method settings: the methods' own defaults, except fewer I-GOS / iGOS++ iterations
#: and integration steps (the demo's time budget; ``benchmarks/bench_real.py`` scores the defaults).
REAL_METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 20, "internal_batch_size": 20},
    "igos": {"n_iterations": 5, "n_steps": 10},
    "igos++": {"n_iterations": 2, "n_steps": 5},
    "sag": {"max_roots": 5, "max_root_size": 8, "heuristic_kwargs": {"n_iterations": 2, "n_steps": 10}},
}


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo`; the defaults take about eight minutes on two idle CPU cores
    (``real=True`` adds about two)."""

    out: str = "demo-out"
    model: str = "small_resnet"
    layer: str = "auto"
    epochs: int = 8
    train_size: int = 3072
    val_size: int = 128
    test_size: int = 256
    image_size: int = 32
    bias: float = 0.8
    batch_size: int = 64
    lr: float = 3e-3
    explain_images: int = 8
    num_overlays: int = 6
    sag_images: int = 2
    seed: int = 0
    progress: bool = True
    #: extra ``attribute`` arguments per method name (``"sag"`` for the graphs' search).
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: also explain real photos with the pretrained EfficientNet-Lite0 (needs the ``[real]`` extra)
    real: bool = False
    #: the photos of the real section (comma-separated names of ``lightning_xai.data.PHOTOS``); four of the six
    #: keep the demo under ten minutes, ``benchmarks/bench_real.py`` scores all of them
    real_photos: str = "camera,chelsea,coffee,quokka"
    real_image_size: int = 224
    #: Structured Attention Graphs of the first photos
    real_sag_images: int = 1
    real_method_settings: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {k: dict(v) for k, v in REAL_METHOD_SETTINGS.items()}
    )

    @classmethod
    def quick(cls, **overrides: object) -> DemoConfig:
        """A smoke-run configuration (about a minute) for CI."""
        settings: dict[str, Any] = dict(
            epochs=1,
            train_size=96,
            val_size=32,
            test_size=32,
            image_size=24,
            explain_images=2,
            num_overlays=2,
            sag_images=1,
            method_settings={
                "integrated_gradients": {"n_steps": 4},
                "igos": {"n_iterations": 2, "n_steps": 2},
                "igos++": {"n_iterations": 2, "n_steps": 2},
                "sag": {
                    "grid_size": 3,
                    "max_roots": 2,
                    "heuristic_kwargs": {"n_iterations": 1, "n_steps": 2},
                },
            },
            real_photos="camera,quokka",
            real_image_size=96,
        )
        # the real section keeps its own (already shortened) settings: two photos at 96 px are cheap
        settings["real_method_settings"] = {
            **{k: dict(v) for k, v in REAL_METHOD_SETTINGS.items()},
            "sag": {**settings["method_settings"]["sag"], "max_root_size": 4},
        }
        settings.update(overrides)
        return cls(**settings)  # type: ignore[arg-type]

    def validate(self) -> None:
        for name in ("epochs", "train_size", "val_size", "test_size", "batch_size", "explain_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        for name in ("num_overlays", "sag_images", "real_sag_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"`lr` must be positive, got {self.lr!r}")
        if not 0 <= self.bias <= 1:
            raise ValueError(f"`bias` must be in [0, 1], got {self.bias!r}")
        if self.real:
            from .data import load_photos

            load_photos([], self.real_image_size)  # checks the size
            load_photos(self.real_photos.split(","), 8)  # the names and the packages, cheaply


# ------------------------------------------------------------------------------------------------- training


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


def train_models(config: DemoConfig, data: ShapesDataModule) -> tuple[dict[str, nn.Module], list[dict]]:
    """The baseline, MHEX, consistency-reweighted and Comprehensive Attribution models, trained on the same
    data for the same number of epochs; returns the trained modules (eval mode) and a row per model."""
    from .callbacks import ExplanationConsistencyReweighting, MultiHeadExplainer
    from .modules import ComprehensiveAttribution, ImageClassifier

    def classifier() -> ImageClassifier:
        return ImageClassifier(config.model, num_classes=data.num_classes, lr=config.lr)

    plans = {
        "baseline": ("ImageClassifier (cross-entropy)", classifier, list),
        "MHEX": ("+ MultiHeadExplainer callback", classifier, lambda: [MultiHeadExplainer()]),
        "consistency-reweighted": (
            "+ ExplanationConsistencyReweighting callback (refresh every epoch after one warm-up epoch)",
            classifier,
            lambda: [
                ExplanationConsistencyReweighting(
                    warmup_epochs=1,
                    refresh_every=1,
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
        seconds = _fit(config, module, data, callbacks())
        models[name] = module.eval()
        rows.append({"model": name, "training": how, "train seconds": round(seconds)})
    return models, rows


@torch.no_grad()
def _accuracy(model: nn.Module, loader: Any) -> float:
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
            "deletion": deletion["curves"].mean(0).numpy(),
            "insertion": insertion["curves"].mean(0).numpy(),
        }
        rows.append(
            {
                "method": label,
                "model": model_key,
                "deletion AUC ↓": float(deletion["auc"].mean()),
                "insertion AUC ↑": float(insertion["auc"].mean()),
                "pointing game ↑": float(pointing_game(explained, masks, tolerance=0)),
                "seconds / image": round(seconds, 3),
            }
        )
    return rows, maps, curves


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


def structured_attention_graphs(config: DemoConfig, model: nn.Module) -> list[dict[str, Any]]:
    """SAGs of the baseline on two-object test images (both objects show the class)."""
    if config.sag_images == 0:
        return []
    dataset = ShapesDataset(
        config.sag_images, image_size=config.image_size, num_objects=2, split="test", seed=config.seed + 1
    )
    batch = torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])
    settings = {"seed": config.seed, **config.method_settings.get("sag", {})}
    return graphs(model, batch["image"], batch["label"], dataset.classes, settings)


def graphs(
    model: nn.Module, images: Tensor, labels: Tensor, classes: list[str], settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """A Structured Attention Graph per image for its label: the class name, root count, DNF and a PNG."""
    from .attr import StructuredAttentionGraph

    results = StructuredAttentionGraph(LogitsForward(model)).explain(images, labels, **settings)
    return [
        {"class": classes[int(label)], "roots": len(result.roots), "dnf": result.dnf, "png": _sag_png(result)}
        for label, result in zip(labels, results, strict=True)
    ]


def _sag_png(result: Any) -> bytes:
    return figure_png(result.render())


# ------------------------------------------------------------------------------------------------------ run


def run_demo(config: DemoConfig) -> dict[str, object]:
    """Train, explain, score and write ``report.html``, ``overlays.png`` and ``metrics.json`` into
    ``config.out``; return the metrics."""
    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    L.seed_everything(config.seed, verbose=False)
    data = ShapesDataModule(
        batch_size=config.batch_size,
        image_size=config.image_size,
        bias=config.bias,
        train_size=config.train_size,
        val_size=config.val_size,
        test_size=config.test_size,
        seed=config.seed,
    )
    real = None
    if config.real:  # first, so that a missing package or photo fails before the training
        from .demo_real import explain_photos

        real = explain_photos(config)
    models, training_rows = train_models(config, data)
    for row in training_rows:
        row["bias-conflicting test accuracy"] = _accuracy(models[row["model"]], data.test_dataloader())

    test = torch.utils.data.default_collate([data.datasets["test"][i] for i in range(config.explain_images)])
    images, labels, masks = test["image"], test["label"], test["mask"]
    method_rows, maps, curves = explain_all(config, models, images, labels, masks)
    sags = structured_attention_graphs(config, models["baseline"])

    overlays = overlays_figure(images, masks, maps, max(config.num_overlays, 1))
    overlays.savefig(out / "overlays.png", dpi=100)
    seconds = time.perf_counter() - started
    metrics: dict[str, object] = {
        "models": training_rows,
        "methods": method_rows,
        "sags": [{k: v for k, v in s.items() if k != "png"} for s in sags],
        "seconds": round(seconds, 1),
        "config": asdict(config),
    }
    if real is not None:
        from .demo_real import real_metrics

        metrics["real"] = real_metrics(real)
        real["figure"].savefig(out / "overlays_real.png", dpi=100)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    _report(config, data, training_rows, method_rows, overlays, curves, sags, seconds, real).save(
        out / "report.html"
    )
    return metrics


def _report(
    config: DemoConfig,
    data: ShapesDataModule,
    training_rows: list[dict],
    method_rows: list[dict],
    overlays: plt.Figure,
    curves: dict[str, dict[str, np.ndarray]],
    sags: list[dict[str, Any]],
    seconds: float,
    real: dict[str, Any] | None = None,
) -> HTMLReport:
    from . import __version__

    report = HTMLReport("lightning_xai demo report")
    report.paragraph(
        f"Synthetic shapes ({', '.join(data.classes)}) at {config.image_size} px. In training, the background "
        f"tint agrees with the label for {config.bias:.0%} of the images (a spurious cue); the test split is "
        "bias-conflicting: its tint never agrees with the label, so a model that learnt the tint instead of "
        "the shape fails there, and its explanations point at the background instead of the object."
    )
    report.heading("Models")
    report.paragraph(
        f"Each model trained for {config.epochs} epochs on {config.train_size} images (batch {config.batch_size}, "
        f"lr {config.lr}), seed {config.seed}."
    )
    report.table(training_rows)
    report.heading("Explanations compared")
    report.paragraph(
        f"{config.explain_images} bias-conflicting test images, each explained for its label. Deletion / "
        "insertion: the I-GOS protocol (28×28 cells, blurred baseline; area under the class score as the "
        "most salient cells are removed / inserted). Pointing game: the map's maximum lies on the object."
    )
    report.table(method_rows)
    report.figure(overlays, "Heatmaps of every method (white outline: the object's pixel mask).")
    report.figure(curves_figure(curves), "Deletion and insertion curves, mean over the explained images.")
    if sags:
        report.heading("Structured Attention Graphs")
        report.paragraph(
            "Two-object images: each root is a minimal set of patches that alone keeps the baseline's confidence "
            "above the threshold; the graph shows how the confidence falls as patches are removed."
        )
        for sag in sags:
            report.image(sag["png"], f"class {sag['class']}: {sag['roots']} root(s); {sag['dnf']}")
    if real is not None:
        from .demo_real import add_real_section

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
