"""I-GOS and iGOS++: cost in pass-equivalents, batching speed-up, and quality on synthetic shapes.

Three parts, each printed as a Markdown table:

* ``cost``: **pass-equivalents per image** = seconds per explained image / seconds per image of the same
  model's plain forward+backward (``model(x)``, then ``.backward()`` of the summed logits into the
  parameters) at batch 20, both measured in this run. The pass time is taken right before and right after
  each variant and averaged; the ``drift`` column shows how much the machine's load moved it in between.
  ResNet-18 (timm, ImageNet layout, 1000 classes, random weights since nothing is downloaded) at 224 px on
  CPU, a batch of 8 shapes images, 28×28 mask, the methods' defaults (I-GOS 15 iterations × 20 points,
  iGOS++ 20 × 20), both line-search variants, targets = the predicted classes. ``rows`` counts model inputs
  per image: forward+backward rows of the gradient passes, forward-only rows of the line search and the L1
  schedule. The cost of the line search depends on the model (how often trials are rejected); these rows
  make that visible.
* ``speedup``: seconds per image of one batch-8 call against a loop of batch-1 calls of our own code on the
  same images (same model and settings as ``cost``).
* ``quality``: ``small_resnet`` (a timm ResNet with a stride-1 stem, from ``lightning_xai.models``) trained
  inside this script on bias-free 64 px shapes (``ShapesDataModule``, normalised inputs); correctly
  classified test images, explained for their label. Deletion and insertion AUC with the I-GOS protocol
  (28×28 cells, blur baseline; ``lightning_xai.metrics``) and the pointing game against the object masks
  (tolerance 15 px at 224 px, scaled to 64 px; every maximiser of a map counts, so a plateau of maximal
  values that touches the object is a hit) and the share of the positive attribution inside the object
  (energy pointing game). Baselines: Captum ``IntegratedGradients`` (blur baseline, 50 steps), Captum
  ``LayerGradCam`` on ``layer4`` (8×8 at 64 px) and ``layer3`` (16×16), a uniform random map.

The default is one CPU thread: on a shared two-core machine a second thread made every model call slower.

Examples::

    python benchmarks/bench_igos.py --quick                          # smoke run, < 1 minute
    python benchmarks/bench_igos.py --parts quality --cache /tmp/igos_small_resnet.pt
    python benchmarks/bench_igos.py --parts cost --variants IGOS:plain,IGOS:integrated
    python benchmarks/bench_igos.py --parts speedup
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import timm
import torch
from captum.attr import IntegratedGradients, LayerGradCam
from torch import nn

from lightning_xai.attr import IGOS, IGOSOptions, IGOSPlusPlus
from lightning_xai.data import ShapesDataModule, ShapesDataset
from lightning_xai.explain import make_baseline
from lightning_xai.metrics.functional import deletion_auc, energy_pointing_game, insertion_auc, pointing_game
from lightning_xai.models import small_resnet

METHODS: dict[str, type] = {"IGOS": IGOS, "IGOSPlusPlus": IGOSPlusPlus}
ALL_VARIANTS = (
    "IGOS:plain,IGOS:plain:reference,IGOS:integrated,IGOSPlusPlus:plain,IGOSPlusPlus:plain:reference"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny sizes, few iterations (< 1 min)"
    )
    parser.add_argument(
        "--parts", default="cost,speedup,quality", help="comma-separated: cost, speedup, quality"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--variants",
        default=ALL_VARIANTS,
        help=f"method:line_search[:settings] items (default {ALL_VARIANTS})",
    )
    parser.add_argument(
        "--cost-batch", type=int, default=8, help="images explained in the cost part (default 8)"
    )
    parser.add_argument(
        "--cost-size", type=int, default=224, help="image side of the cost part (default 224)"
    )
    parser.add_argument("--pass-batch", type=int, default=20, help="batch of the forward+backward reference")
    parser.add_argument(
        "--internal-batch-size", type=int, default=40, help="model inputs per forward call (default 40)"
    )
    parser.add_argument(
        "--speedup-images", type=int, default=8, help="images of the batch-1 loop (default 8)"
    )
    parser.add_argument("--speedup-variant", default="IGOS:plain", help="method:line_search for the speed-up")
    parser.add_argument("--quality-images", type=int, default=32, help="test images explained (default 32)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the shapes images (default 64)")
    parser.add_argument("--train-size", type=int, default=20000, help="training images (default 20000)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (default 1)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak one-cycle learning rate (default 3e-3)")
    parser.add_argument(
        "--cache", default=None, help="load the trained weights from / save them to this file"
    )
    parser.add_argument("--json", default=None, help="also write the raw results to this file")
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.iterations = {"IGOS": None, "IGOSPlusPlus": None}
    args.steps = None
    args.mask_size = 28
    if args.quick:
        args.cost_batch, args.cost_size, args.pass_batch = 2, 32, 4
        args.speedup_images, args.quality_images = 2, 2
        args.train_size, args.epochs, args.image_size = 32, 1, 32
        args.iterations = {"IGOS": 2, "IGOSPlusPlus": 2}
        args.steps, args.mask_size = 2, 4
    return args


# --------------------------------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------------------------------


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def trained_model(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, torch.Tensor, dict]:
    """``small_resnet`` (a timm ResNet with a stride-1 stem) trained on normalised shapes. The model consumes
    normalised images, so the methods' noise (σ = 0.2) is in the same units as in the references."""
    data = ShapesDataModule(
        batch_size=64,
        image_size=args.image_size,
        train_size=args.train_size,
        val_size=0,
        test_size=512,
        seed=args.seed,
    )
    mean, std = data.normalization()
    torch.manual_seed(args.seed)
    model = small_resnet(num_classes=data.num_classes)
    info: dict = {}
    if args.cache:
        try:
            state = torch.load(args.cache, weights_only=True)
            model.load_state_dict(state["model"])
            info = {"train_seconds": float(state["train_seconds"]), "cached": True}
        except FileNotFoundError:
            pass
    if not info:
        optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=args.lr, total_steps=args.epochs * len(data.train_dataloader())
        )
        model.train()
        start = time.perf_counter()
        for _ in range(args.epochs):
            for batch in data.train_dataloader():
                loss = nn.functional.cross_entropy(
                    model(normalise(batch["image"], mean, std)), batch["label"]
                )
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
        info = {"train_seconds": time.perf_counter() - start, "cached": False}
        if args.cache:
            torch.save({"model": model.state_dict(), "train_seconds": info["train_seconds"]}, args.cache)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in data.test_dataloader():
            correct += int((model(normalise(batch["image"], mean, std)).argmax(1) == batch["label"]).sum())
            total += len(batch["label"])
    info["test_accuracy"] = correct / total
    return model, mean, std, info


def cost_model(args: argparse.Namespace) -> nn.Module:
    """ResNet-18 as in the references (ImageNet layout, 1000 classes), random weights: nothing is downloaded."""
    torch.manual_seed(args.seed)
    return timm.create_model("resnet18", pretrained=False, num_classes=1000).eval()


def shapes(count: int, size: int, seed: int, model: nn.Module, mean, std, correct_only: bool = True):
    """The first ``count`` test images (normalised), their target classes and object masks: with
    ``correct_only``, the images the model classifies correctly, for their label; else any image, for the
    model's prediction."""
    data = ShapesDataset(4 * count + 64, image_size=size, split="test", seed=seed)
    picked = []
    for i in range(len(data)):
        item = data[i]
        x = normalise(item["image"][None], mean, std)
        with torch.no_grad():
            predicted = model(x).argmax(1)[0]
        if not correct_only:
            picked.append((x[0], predicted, item["mask"]))
        elif int(predicted) == int(item["label"]):
            picked.append((x[0], item["label"], item["mask"]))
        if len(picked) == count:
            break
    if len(picked) < count:
        raise RuntimeError(f"only {len(picked)} of {count} images were classified correctly")
    xs, labels, masks = zip(*picked, strict=True)
    return torch.stack(xs), torch.stack(labels), torch.stack(masks)


# --------------------------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------------------------


def pass_seconds(model: nn.Module, size: int, batch: int, repeats: int = 3) -> float:
    """Median seconds per image of ``model(x)`` + ``.backward()`` of the summed logits (parameter gradients)."""
    x = torch.randn(batch, 3, size, size)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model(x).sum().backward()
        times.append((time.perf_counter() - start) / batch)
    model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


class RowCounter(nn.Module):
    """Counts the model inputs that go through the model with and without autograd."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)
        self.grad_rows = 0
        self.forward_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.grad_rows += x.shape[0]
        else:
            self.forward_rows += x.shape[0]
        return self.model(x)


#: What a variant's third field sets on top of the method's defaults: the references' integration and line
#: search (``reference``, keeping the variant's line search), or one of the defaults' levers undone.
SETTINGS: dict[str, dict] = {
    "defaults": {},
    "reference": {k: v for k, v in IGOSOptions.reference_fields.items() if k != "line_search"},
    "cold": {"warm_start": False},
    "riemann20": {"n_steps": 20, "quadrature": "riemann"},
}


def method_kwargs(args: argparse.Namespace, name: str, line_search: str, settings: str = "defaults") -> dict:
    kwargs = {
        **SETTINGS[settings],
        "line_search": line_search,
        "mask_size": args.mask_size,
        "seed": args.seed,
    }
    if args.iterations[name] is not None:
        kwargs["n_iterations"] = args.iterations[name]
    if args.steps is not None:
        kwargs["n_steps"] = args.steps
    return kwargs


def parse_variants(text: str) -> list[tuple[str, str, str]]:
    """``method:line_search[:settings]`` items, e.g. ``IGOS:plain`` or ``IGOSPlusPlus:plain:reference``."""
    out = []
    for item in text.split(","):
        name, line_search, settings = [*item.strip().split(":"), "defaults"][:3]
        if name not in METHODS or line_search not in ("plain", "integrated") or settings not in SETTINGS:
            raise SystemExit(
                f"bad variant {item!r}: use IGOS|IGOSPlusPlus:plain|integrated[:{'|'.join(SETTINGS)}]"
            )
        out.append((name, line_search, settings))
    return out


def variant_label(name: str, line_search: str, settings: str) -> str:
    return f"{name} ({line_search}{'' if settings == 'defaults' else ', ' + settings})"


# --------------------------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------------------------


def run_cost(args, model, mean, std) -> list[dict]:
    x, labels, _ = shapes(
        args.cost_batch, args.cost_size, args.seed + 1, model, mean, std, correct_only=False
    )
    with torch.no_grad():
        probabilities = model(x).softmax(1).gather(1, labels[:, None])[:, 0]
    print(f"cost images: {args.cost_size} px, p(label) mean {float(probabilities.mean()):.3f}", flush=True)
    rows = []
    for name, line_search, settings in parse_variants(args.variants):
        before = pass_seconds(model, args.cost_size, args.pass_batch)
        counter = RowCounter(model)
        start = time.perf_counter()
        METHODS[name](counter).attribute(
            x,
            target=labels,
            internal_batch_size=args.internal_batch_size,
            **method_kwargs(args, name, line_search, settings),
        )
        seconds = (time.perf_counter() - start) / len(x)
        after = pass_seconds(model, args.cost_size, args.pass_batch)
        reference = (before + after) / 2
        rows.append(
            {
                "method": name,
                "line_search": line_search,
                "settings": settings,
                "images": len(x),
                "seconds_per_image": seconds,
                "pass_seconds": reference,
                "drift": after / before - 1,
                "pass_equivalents": seconds / reference,
                "grad_rows_per_image": counter.grad_rows / len(x),
                "forward_rows_per_image": counter.forward_rows / len(x),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run_speedup(args, model, mean, std) -> dict:
    name, line_search, settings = parse_variants(args.speedup_variant)[0]
    x, labels, _ = shapes(
        args.speedup_images, args.cost_size, args.seed + 1, model, mean, std, correct_only=False
    )
    kwargs = {
        "internal_batch_size": args.internal_batch_size,
        **method_kwargs(args, name, line_search, settings),
    }
    method = METHODS[name](model)
    start = time.perf_counter()
    batched = method.attribute(x, target=labels, **kwargs)
    batch_seconds = (time.perf_counter() - start) / len(x)
    start = time.perf_counter()
    looped = torch.cat(
        [method.attribute(x[i : i + 1], target=labels[i : i + 1], **kwargs) for i in range(len(x))]
    )
    loop_seconds = (time.perf_counter() - start) / len(x)
    result = {
        "method": name,
        "line_search": line_search,
        "images": len(x),
        "batch_seconds_per_image": batch_seconds,
        "loop_seconds_per_image": loop_seconds,
        "speedup": loop_seconds / batch_seconds,
        "max_abs_difference": float((batched - looped).abs().max()),
    }
    print(json.dumps(result), flush=True)
    return result


def run_quality(args, model, mean, std) -> list[dict]:
    x, labels, masks = shapes(args.quality_images, args.image_size, args.seed + 2, model, mean, std)
    blur = make_baseline(x, "blur")
    tolerance = 15 * args.image_size / 224
    maps: dict[str, Callable[[], torch.Tensor]] = {}
    counters: dict[str, RowCounter] = {}
    for name, line_search, settings in parse_variants(args.variants):
        label = variant_label(name, line_search, settings)
        counters[label] = RowCounter(model)

        def explain(name=name, line_search=line_search, settings=settings, counter=counters[label]):
            return METHODS[name](counter).attribute(
                x, target=labels, internal_batch_size=128, **method_kwargs(args, name, line_search, settings)
            )

        maps[label] = explain
    maps["Captum IntegratedGradients (blur baseline)"] = lambda: IntegratedGradients(model).attribute(
        x, baselines=blur, target=labels, n_steps=50, internal_batch_size=128
    )
    maps["Captum LayerGradCam (layer4)"] = lambda: LayerGradCam(model, model.layer4).attribute(
        x, target=labels, relu_attributions=True
    )
    maps["Captum LayerGradCam (layer3)"] = lambda: LayerGradCam(model, model.layer3).attribute(
        x, target=labels, relu_attributions=True
    )
    maps["random map"] = lambda: torch.rand(
        len(x), args.image_size, args.image_size, generator=torch.Generator().manual_seed(args.seed)
    )
    rows = []
    for label, make in maps.items():
        start = time.perf_counter()
        attributions = make().detach()
        seconds = (time.perf_counter() - start) / len(x)
        upsampled = attributions
        if (
            attributions.shape[-1] != args.image_size
        ):  # Grad-CAM maps: bilinear to the image for the pointing game
            upsampled = nn.functional.interpolate(
                attributions, size=(args.image_size, args.image_size), mode="bilinear", align_corners=False
            )
        rows.append(
            {
                "method": label,
                "deletion_auc": float(deletion_auc(model, x, attributions, labels)),
                "insertion_auc": float(insertion_auc(model, x, attributions, labels)),
                "pointing_game": float(pointing_game(upsampled, masks, tolerance=tolerance)),
                "energy_in_object": float(energy_pointing_game(upsampled, masks)),
                "seconds_per_image": seconds,
                # model inputs per image (fwd+bwd rows + forward rows / 3), for the mask methods
                "rows_per_image": (
                    (counters[label].grad_rows + counters[label].forward_rows / 3) / len(x)
                    if label in counters
                    else None
                ),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


# --------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------


def tables(args, info, cost, speedup, quality) -> str:
    lines = [f"Machine: {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s).", ""]
    if cost:
        lines += [
            f"Cost, {args.cost_size} px, CPU, mask {args.mask_size}, internal_batch_size "
            f"{args.internal_batch_size}, forward+backward reference at batch {args.pass_batch}:",
            "",
            "| method (line search, settings) | images | s / image | pass s / image | drift "
            "| rows / image (fwd+bwd, fwd) | **pass-equivalents / image** |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in cost:
            lines.append(
                f"| {variant_label(r['method'], r['line_search'], r['settings'])} | {r['images']} | "
                f"{r['seconds_per_image']:.1f} | "
                f"{r['pass_seconds']:.3f} | {r['drift']:+.0%} | {r['grad_rows_per_image']:.0f}, "
                f"{r['forward_rows_per_image']:.0f} | **{r['pass_equivalents']:.0f}** |"
            )
        lines.append("")
    if speedup:
        r = speedup
        lines += [
            f"Batching, {r['method']} ({r['line_search']}), {args.cost_size} px, CPU, {r['images']} images:",
            "",
            f"| batch-{r['images']} call, s / image | loop of batch-1 calls, s / image | speed-up "
            "| max abs difference |",
            "|---|---|---|---|",
            f"| {r['batch_seconds_per_image']:.1f} | {r['loop_seconds_per_image']:.1f} | "
            f"{r['speedup']:.2f}× | {r['max_abs_difference']:.1e} |",
            "",
        ]
    if quality:
        lines += [
            f"Quality: small_resnet trained {args.epochs} epochs on {args.train_size} {args.image_size} px shapes "
            f"({info['train_seconds']:.0f} s{', cached' if info['cached'] else ''}), test accuracy "
            f"{info['test_accuracy']:.3f}; {args.quality_images} correctly classified test images, explained for "
            "their label (deletion: lower is better; insertion, pointing game: higher is better):",
            "",
            "| method | deletion AUC ↓ | insertion AUC ↑ | pointing game ↑ | energy in object ↑ | s / image "
            "| rows / image |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in quality:
            rows = "–" if r["rows_per_image"] is None else f"{r['rows_per_image']:.0f}"
            lines.append(
                f"| {r['method']} | {r['deletion_auc']:.4f} | {r['insertion_auc']:.4f} | "
                f"{r['pointing_game']:.3f} | {r['energy_in_object']:.3f} | {r['seconds_per_image']:.2f} | {rows} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"cost", "speedup", "quality"}
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}")
    info = {}
    quality, cost, speedup = [], [], {}
    if "quality" in parts:
        model, mean, std, info = trained_model(args)
        print(json.dumps(info), flush=True)
        quality = run_quality(args, model, mean, std)
    mean, std = ShapesDataset(256, image_size=args.cost_size, seed=args.seed).normalization()
    if "cost" in parts:
        cost = run_cost(args, cost_model(args), mean, std)
    if "speedup" in parts:
        speedup = run_speedup(args, cost_model(args), mean, std)
    text = tables(args, info, cost, speedup, quality)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"info": info, "cost": cost, "speedup": speedup, "quality": quality}, handle, indent=1)


if __name__ == "__main__":
    main()
