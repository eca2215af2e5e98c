"""Every post-hoc method on real photos with a pretrained ImageNet model: deletion, insertion, pointing, seconds.

Model: ``lightning_xai.models.pretrained("efficientnet_lite0")`` (ImageNet-1k EfficientNet-Lite0, pixels in
[0, 1]). Photos: ``lightning_xai.data.load_photos()`` (six photos, 224 px, each with the ImageNet class of its
object and a box or polygon mask). Each photo is explained for the class of its object, one photo per call.

Metrics, the I-GOS protocol: deletion and insertion AUC on a 28×28 grid of cells, blurred baseline, softmax
score of the class (``preset="igos"``); the pointing game against the object's mask, exact (tolerance 0) and with
TorchRay's 15 px. Seconds per image are the method's call only, measured in the same run for every method.

Methods: Grad-CAM (last stage), Integrated Gradients (black baseline, 50 steps), I-GOS and iGOS++ (their
defaults unless ``--igos-iterations`` / ``--igospp-iterations`` say otherwise), ADVISE (defaults) and a uniform
random map (seeded). Results are written after every method (``--json``), so a long run that is stopped keeps
what it finished.

Examples::

    python benchmarks/bench_real.py --quick                       # smoke run: two photos at 64 px
    python benchmarks/bench_real.py --json real.json              # the table in BENCHMARKS.md
    python benchmarks/bench_real.py --methods igos++ --igospp-iterations 20
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from tqdm.auto import tqdm

from lightning_xai.attr import IGOSOptions
from lightning_xai.attr.registry import explain_batch
from lightning_xai.data import PHOTOS, load_photos
from lightning_xai.metrics.functional import deletion_auc, insertion_auc, pointing_game
from lightning_xai.models import LogitsForward, pretrained

METHODS = ("gradcam", "integrated_gradients", "igos", "igos++", "advise", "random")
LABELS = {
    "gradcam": "Grad-CAM",
    "integrated_gradients": "Integrated Gradients",
    "igos": "I-GOS",
    "igos++": "iGOS++",
    "advise": "ADVISE",
    "random": "random",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: two photos at 64 px, few iterations")
    parser.add_argument("--photos", default=",".join(PHOTOS), help="comma-separated photo names")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--igos-iterations", type=int, default=None, help="I-GOS n_iterations (default: its own)"
    )
    parser.add_argument(
        "--igospp-iterations", type=int, default=None, help="iGOS++ n_iterations (default: own)"
    )
    parser.add_argument(
        "--igos-reference",
        action="store_true",
        help="I-GOS / iGOS++ with the references' integration and line search (IGOSOptions.reference, "
        "plain line search) instead of the defaults",
    )
    parser.add_argument("--ig-steps", type=int, default=50, help="Integrated Gradients n_steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", default=None, help="write the raw numbers to this JSON file (after each method)"
    )
    args = parser.parse_args()
    if args.quick:
        args.photos, args.image_size, args.ig_steps = "coffee,quokka", 64, 4
        args.igos_iterations = args.igospp_iterations = 1
    return args


def method_arguments(method: str, args: argparse.Namespace) -> dict:
    if method == "integrated_gradients":
        return {"n_steps": args.ig_steps, "internal_batch_size": args.ig_steps}
    iterations = {"igos": args.igos_iterations, "igos++": args.igospp_iterations}.get(method)
    settings: dict = {"seed": args.seed} if method in ("igos", "igos++") else {}
    if iterations is not None:
        settings["n_iterations"] = iterations
    if args.igos_reference and method in ("igos", "igos++"):
        settings.update({**IGOSOptions.reference_fields, "line_search": "plain"})
    if args.quick and method in ("igos", "igos++"):
        settings.update(n_steps=2, mask_size=8)
    return settings


def explain(model, image, label, method: str, args: argparse.Namespace) -> torch.Tensor:
    if method == "random":
        generator = torch.Generator().manual_seed(args.seed + label)
        return torch.rand((1, *image.shape[-2:]), generator=generator)
    return explain_batch(
        model, image[None], torch.tensor([label]), method, attribute_args=method_arguments(method, args)
    )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    photos = load_photos(args.photos.split(","), image_size=args.image_size)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    model = pretrained("efficientnet_lite0")
    forward = LogitsForward(model)
    with torch.no_grad():
        probabilities = model(torch.stack([p.image for p in photos])).softmax(1)
    photo_rows = [
        {
            "photo": p.name,
            "class": p.class_name,
            "p(class)": round(float(probabilities[i, p.label]), 3),
            "top-1": model.class_names[int(probabilities[i].argmax())],
            "object area": round(float(p.mask.float().mean()), 3),
        }
        for i, p in enumerate(photos)
    ]
    results: dict = {
        "photos": photo_rows,
        "methods": {},
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads",
    }
    for method in methods:
        rows = []
        for photo in tqdm(photos, desc=LABELS[method], leave=False):
            started = time.perf_counter()
            heat = explain(model, photo.image, photo.label, method, args)
            seconds = time.perf_counter() - started
            image, target, mask = photo.image[None], torch.tensor([photo.label]), photo.mask[None]
            rows.append(
                {
                    "photo": photo.name,
                    "seconds": seconds,
                    "deletion": float(deletion_auc(forward, image, heat, target)),
                    "insertion": float(insertion_auc(forward, image, heat, target)),
                    "pointing": float(pointing_game(heat, mask, tolerance=0)),
                    "pointing_15px": float(pointing_game(heat, mask, tolerance=15 * args.image_size / 224)),
                }
            )
        results["methods"][method] = {"settings": method_arguments(method, args), "per_photo": rows}
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=2)
    print_tables(results)


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def print_tables(results: dict) -> None:
    print("| photo | class | p(class) | top-1 | object area |\n|---|---|---:|---|---:|")
    for row in results["photos"]:
        print(
            f"| {row['photo']} | {row['class']} | {row['p(class)']} | {row['top-1']} | {row['object area']} |"
        )
    print(
        "\n| method | deletion AUC ↓ | insertion AUC ↑ | pointing (exact) ↑ | pointing (15 px) ↑ | s / image |"
        "\n|---|---|---|---|---|---:|"
    )
    for method, entry in results["methods"].items():
        rows = entry["per_photo"]
        cells = [_mean_sd([r[k] for r in rows]) for k in ("deletion", "insertion")]
        hits = [f"{sum(r[k] for r in rows):.0f} / {len(rows)}" for k in ("pointing", "pointing_15px")]
        seconds = statistics.fmean(r["seconds"] for r in rows)
        print(f"| {LABELS[method]} | {' | '.join(cells)} | {' | '.join(hits)} | {seconds:.1f} |")
    names = [r["photo"] for r in results["photos"]]
    print("\nPer photo, deletion / insertion:\n\n| method | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for method, entry in results["methods"].items():
        cells = [f"{r['deletion']:.3f} / {r['insertion']:.3f}" for r in entry["per_photo"]]
        print(f"| {LABELS[method]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
