"""COMET (Comprehensive Attribution): accuracy and mask quality of the full method, its ablation without the
detector, and a plain classifier with Grad-CAM, on ``ShapesDataModule`` with and without a spurious cue.

For each setting of the background cue (``--biases``: ``none`` = cue independent of the label, or the fraction of
training images whose cue agrees with the label) and each seed, four models are trained on the same data, in the
same order, for the same number of epochs:

* ``plain``: ``ImageClassifier(small_resnet)`` on full images (the black box; its Grad-CAM is the peer map);
* ``detector``: :func:`~lightning_xai.modules.train_detector` with the same recipe and another seed (so the
  black box that scores fidelity is not the network the selector was trained against);
* ``full``: ``ComprehensiveAttribution(small_selector, small_resnet, detector)``, spec defaults for the loss
  (α=1, β=4, δ=2, λ=100, τ=0.6, batch hinge, frozen eval-mode detector) and the dataset mean as fill;
* ``ablation``: the same with ``use_detector=False`` (selector/predictor with the area hinge only).

Measured on the test split (bias-conflicting whenever a cue is on: its cue never equals the label):

* accuracy of the predictor on ``x_s`` (full, ablation) and of the plain classifier on ``x``;
* masks against the object masks: PxAP (19 thresholds), IoU-AUC (binarised at 0.6), pointing game
  (``--tolerance`` px), mean mask area; Grad-CAM (last stage, upsampled, max-normalised) of the plain
  classifier's true class as the peer;
* fidelity with the black box (the plain classifier): deletion and insertion AUC of each map (16 x 16 grid,
  dataset-mean baseline, softmax of the true class); and for the COMET masks the black box's accuracy on the
  selected image ``m x + (1-m) q`` (higher = the mask keeps the evidence) and on the complement
  ``(1-m) x + m q`` (lower = less evidence left outside: the "comprehensive" claim).

Every number is a mean over ``--seeds`` with the sample standard deviation. Phases are timed; the run is
single-threaded by default.

    python benchmarks/bench_comet.py                 # the BENCHMARKS.md tables (about 40 min per cue setting, 1 thread)
    python benchmarks/bench_comet.py --quick         # smoke run, under a minute
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lightning_xai.attr import SelectorAttribution
from lightning_xai.data import ShapesDataModule, ShapesDataset
from lightning_xai.explain import grad_cam
from lightning_xai.metrics import DeletionAUC, InsertionAUC, IoUAUC, PixelAveragePrecision, PointingGame
from lightning_xai.modules import ComprehensiveAttribution, ImageClassifier, small_selector, train_detector


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one seed, one epoch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--biases", default="none,0.8", help="comma-separated: 'none' or a bias-aligned fraction"
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=4096)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--curve-size", type=int, default=64, help="test images scored by deletion/insertion")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW lr of every model")
    parser.add_argument("--selector-width", type=int, default=8)
    parser.add_argument("--tolerance", type=float, default=2.0, help="pointing-game tolerance in pixels")
    parser.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.train_size, args.eval_size, args.curve_size, args.epochs = 1, 64, 32, 4, 1
    return args


def quiet_trainer(epochs: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def test_batches(data: ShapesDataModule) -> tuple[Tensor, Tensor, Tensor]:
    images, labels, masks = [], [], []
    for batch in data.test_dataloader():
        images.append(batch["image"])
        labels.append(batch["label"])
        masks.append(batch["mask"])
    return torch.cat(images), torch.cat(labels), torch.cat(masks)


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    logits = torch.cat([model(chunk) for chunk in images.split(128)])
    return float((logits.argmax(1) == labels).float().mean())


def map_quality(
    maps: Tensor, masks: Tensor, images: Tensor, labels: Tensor, black_box: nn.Module, fill: Tensor, args: Any
) -> dict[str, float]:
    pxap, iou, pointing = (
        PixelAveragePrecision(),
        IoUAUC(threshold=0.6),
        PointingGame(tolerance=args.tolerance),
    )
    pxap.update(maps, masks)
    iou.update(maps, masks)
    pointing.update(maps, masks)
    n = args.curve_size
    curves = {"resolution": 16, "baseline": fill.view(1, -1, 1, 1)}
    deletion, insertion = DeletionAUC(black_box, **curves), InsertionAUC(black_box, **curves)
    deletion.update(images[:n], maps[:n], labels[:n])
    insertion.update(images[:n], maps[:n], labels[:n])
    return {
        "pxap": float(pxap.compute()),
        "iou_auc": float(iou.compute()),
        "pointing": float(pointing.compute()),
        "area": float(maps.mean()),
        "deletion": float(deletion.compute()),
        "insertion": float(insertion.compute()),
    }


def run_setting(bias: float | None, seed: int, args: Any, times: dict[str, list[float]]) -> dict[str, Any]:
    data = ShapesDataModule(
        batch_size=args.batch,
        image_size=args.image_size,
        bias=bias,
        train_size=args.train_size,
        val_size=0,
        test_size=args.eval_size,
        seed=seed,
    )
    fill = data.normalization()[0]
    images, labels, masks = test_batches(data)
    # the cue independent of the label: whether a model learned the shapes at all (the 0.9 bar)
    unbiased = ShapesDataset(
        args.eval_size, split="val", bias=None, image_size=args.image_size, num_classes=data.num_classes,
        seed=seed + 1000,
    )  # fmt: skip
    unbiased_images = torch.stack([unbiased[i]["image"] for i in range(len(unbiased))])
    unbiased_labels = torch.tensor([int(unbiased[i]["label"]) for i in range(len(unbiased))])
    out: dict[str, Any] = {}

    start = time.perf_counter()
    L.seed_everything(seed, verbose=False)
    plain = ImageClassifier("small_resnet", num_classes=data.num_classes, lr=args.lr, weight_decay=0.03)
    quiet_trainer(args.epochs).fit(plain, data)
    black_box = plain.model.eval()
    times["plain"].append(time.perf_counter() - start)

    start = time.perf_counter()
    detector = train_detector(
        data, "small_resnet", max_epochs=args.epochs, lr=args.lr, weight_decay=0.03, seed=seed + 1000
    )
    times["detector"].append(time.perf_counter() - start)

    out["plain"] = {
        "acc": accuracy(black_box, images, labels),
        "acc_unbiased": accuracy(black_box, unbiased_images, unbiased_labels),
        "detector_acc": accuracy(detector, images, labels),
        "detector_acc_unbiased": accuracy(detector, unbiased_images, unbiased_labels),
    }
    cams = grad_cam(black_box, images, labels, upsample=True, normalize=True).clamp(0, 1)
    out["plain"].update(map_quality(cams, masks, images, labels, black_box, fill, args))

    for name, use_detector in (("full", True), ("ablation", False)):
        start = time.perf_counter()
        L.seed_everything(seed, verbose=False)
        module = ComprehensiveAttribution(
            small_selector(args.selector_width),
            "small_resnet",
            detector,
            use_detector=use_detector,
            fill=fill,
            lr=args.lr,
            warmup_epochs=1,
        )
        quiet_trainer(args.epochs).fit(module, data)
        times[name].append(time.perf_counter() - start)
        module.eval()
        with torch.no_grad():
            logits = torch.cat([module(chunk)[0] for chunk in images.split(128)])
            logits_unbiased = torch.cat([module(chunk)[0] for chunk in unbiased_images.split(128)])
        maps = SelectorAttribution(module).attribute(images)
        selected, complement = module.compose(images, maps)
        row = {
            "acc": float((logits.argmax(1) == labels).float().mean()),
            "acc_unbiased": float((logits_unbiased.argmax(1) == unbiased_labels).float().mean()),
            "bb_acc_selected": accuracy(black_box, selected, labels),
            "bb_acc_complement": accuracy(black_box, complement, labels),
        }
        row.update(map_quality(maps, masks, images, labels, black_box, fill, args))
        out[name] = row
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    biases = [None if b.strip().lower() == "none" else float(b) for b in args.biases.split(",")]
    times: dict[str, list[float]] = {k: [] for k in ("plain", "detector", "full", "ablation")}
    results: dict[str, list[dict[str, Any]]] = {}
    begin = time.perf_counter()
    for bias in biases:
        key = "none" if bias is None else str(bias)
        results[key] = [run_setting(bias, seed, args, times) for seed in range(args.seeds)]
    total = time.perf_counter() - begin

    print(
        f"\nShapesDataModule {args.image_size} px, {args.train_size} training images, {args.eval_size} test images "
        f"({args.curve_size} for deletion/insertion), {args.epochs} epochs, batch {args.batch}, AdamW lr {args.lr} "
        f"wd 0.03, {args.seeds} seeds; predictor/classifier/detector small_resnet, selector small_selector(width "
        f"{args.selector_width}); torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} thread(s); total {total / 60:.1f} min"
    )
    for key, runs in results.items():
        cue = (
            "no cue (cue independent of the label)"
            if key == "none"
            else f"cue agrees with the label in {key} of training images; test bias-conflicting"
        )
        print(f"\n### {cue}\n")
        print("| model / map | acc. unbiased ↑ | test acc. ↑ | PxAP ↑ | IoU-AUC ↑ | pointing ↑ | mask area | deletion ↓ | insertion ↑ "
              "| black box on x_s ↑ | black box on complement ↓ |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        labels = {
            "full": "COMET (full)",
            "ablation": "ablation (no detector)",
            "plain": "plain classifier + Grad-CAM",
        }
        for name in ("full", "ablation", "plain"):
            cells = [labels[name]]
            for metric in ("acc_unbiased", "acc", "pxap", "iou_auc", "pointing", "area", "deletion", "insertion",
                           "bb_acc_selected", "bb_acc_complement"):  # fmt: skip
                values = [run[name][metric] for run in runs if metric in run[name]]
                cells.append(mean_std(values) if values else "–")
            print("| " + " | ".join(cells) + " |")
        det = [run["plain"]["detector_acc"] for run in runs]
        det_unbiased = [run["plain"]["detector_acc_unbiased"] for run in runs]
        print(f"\ndetector (full images) test accuracy: {mean_std(det)}; unbiased: {mean_std(det_unbiased)}")
        low = [
            f"{name} seed {seed}: {run[name]['acc_unbiased']:.3f}"
            for seed, run in enumerate(runs)
            for name in ("full", "ablation", "plain")
            if run[name]["acc_unbiased"] < 0.9
        ]
        if low:
            print(f"WARNING: unbiased accuracy below 0.9, the table says little about these models: {low}")
    print("\n| phase | mean seconds per run |\n|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.mean(values):.1f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results, "times": times}, handle, indent=1)


if __name__ == "__main__":
    main()
