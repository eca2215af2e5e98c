"""ADVISE: cost against Captum's LayerGradCam and the KDE's share of it, and quality on synthetic shapes.

Two parts, each printed as a Markdown table:

* ``speed``: ResNet-50 (timm, ImageNet layout, 1000 classes, random weights since nothing is downloaded) at
  224 px on CPU, layer ``layer4`` (7×7×2048), shapes images normalised with the ImageNet mean/std, one image
  per call, targets = the predicted classes. For each image, in this order: Captum ``LayerGradCam`` (logit
  gradients, as Captum does), ADVISE with AVX selection, ADVISE with ``selection="largest_group"``, ADVISE with
  ``activation_scaling="minmax"``, Captum ``LayerGradCam`` again. The ratio divides each ADVISE time by the mean
  of the two Grad-CAM times taken around it, so machine load that drifts during the run cancels. The KDE's
  share is ``details.timings["kde"]`` over the call's wall time.
* ``quality``: ``small_resnet`` (a timm ResNet with a stride-1 stem) trained inside this script on bias-free
  shapes (``ShapesDataModule``, normalised inputs); correctly classified test images, explained for their label
  at ``layer4``. ADVISE (AVX selection and largest group) against Captum ``LayerGradCam`` on the same layer
  (ReLU, bilinear upsampling, min-max to [0, 1]) and a uniform random map. Metrics from
  ``lightning_xai.metrics``: AVX (ADVISE's protocol; the second map is the runner-up class's map: the same
  group for ADVISE, Grad-CAM of the runner-up for Grad-CAM, a second random map for the random baseline),
  deletion and insertion AUC (I-GOS protocol: 28×28 cells, blur baseline) and the pointing game against the
  object masks (tolerance 15 px at 224 px, scaled).

The default is one CPU thread: on a shared two-core machine a second thread made every model call slower.

Examples::

    python benchmarks/bench_advise.py --quick                    # smoke run, about a minute
    python benchmarks/bench_advise.py                            # both parts, about 15 minutes
    python benchmarks/bench_advise.py --parts speed --speed-images 8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import timm
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from lightning_xai.attr import ADVISE
from lightning_xai.attr.advise.groups import rescale_maps, upsample_maps
from lightning_xai.data import ShapesDataModule, ShapesDataset
from lightning_xai.metrics import AVX
from lightning_xai.metrics.functional import deletion_auc, insertion_auc, pointing_game
from lightning_xai.models import small_resnet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes (about a minute)")
    parser.add_argument("--parts", default="speed,quality", help="comma-separated: speed, quality")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--speed-images", type=int, default=4, help="images of the speed part (default 4)")
    parser.add_argument(
        "--speed-size", type=int, default=224, help="image side of the speed part (default 224)"
    )
    parser.add_argument("--quality-images", type=int, default=32, help="test images explained (default 32)")
    parser.add_argument("--image-size", type=int, default=48, help="side of the shapes images (default 48)")
    parser.add_argument("--train-size", type=int, default=6000, help="training images (default 6000)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak one-cycle learning rate (default 3e-3)")
    parser.add_argument("--json", default=None, help="also write the raw results to this file")
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.speed_images, args.speed_size = 1, 64
        args.quality_images, args.image_size, args.train_size, args.epochs = 4, 32, 256, 1
    return args


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.as_tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean) / std


# --------------------------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------------------------


def run_speed(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(args.seed)
    model = timm.create_model("resnet50", pretrained=False, num_classes=1000).eval()
    data = ShapesDataset(args.speed_images, image_size=args.speed_size, split="test", seed=args.seed)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    inputs = normalise(images, IMAGENET_MEAN, IMAGENET_STD)
    gradcam = LayerGradCam(model, model.layer4)
    variants = {
        "ADVISE (AVX selection)": (
            ADVISE(model, "layer4", (IMAGENET_MEAN, IMAGENET_STD)),
            {"selection": "avx"},
        ),
        "ADVISE (largest group)": (
            ADVISE(model, "layer4", (IMAGENET_MEAN, IMAGENET_STD)),
            {"selection": "largest_group"},
        ),
        "ADVISE (AVX, minmax scaling)": (
            ADVISE(model, "layer4", (IMAGENET_MEAN, IMAGENET_STD), activation_scaling="minmax"),
            {"selection": "avx"},
        ),
    }
    with torch.no_grad():
        targets = model(inputs).argmax(1)

    def time_gradcam(x, target) -> float:
        start = time.perf_counter()
        gradcam.attribute(x, target=target, relu_attributions=True)
        return time.perf_counter() - start

    time_gradcam(inputs[:1], targets[:1])  # warm-up
    rows: dict[str, list[dict]] = {name: [] for name in variants}
    for i in range(len(inputs)):
        x, target = inputs[i : i + 1], targets[i : i + 1]
        before = time_gradcam(x, target)
        results = {}
        for name, (explainer, kwargs) in variants.items():
            start = time.perf_counter()
            _, details = explainer.attribute(x, target=target, return_details=True, **kwargs)
            results[name] = (time.perf_counter() - start, details)
        after = time_gradcam(x, target)
        reference = (before + after) / 2
        for name, (seconds, details) in results.items():
            rows[name].append(
                {
                    "seconds": seconds,
                    "gradcam_seconds": reference,
                    "ratio": seconds / reference,
                    "kde_share": details.timings["kde"] / seconds,
                    "kde_seconds": details.timings["kde"],
                    "selection_seconds": details.timings["selection"],
                    "groups": int(details.valid_groups.sum()),
                    "dropped": float(details.dropped_fraction.mean()),
                    "peaks": details.relevance.flatten().bincount().tolist(),
                }
            )
            print(json.dumps({"image": i, "variant": name, **rows[name][-1]}), flush=True)
    summary = []
    for name, items in rows.items():
        summary.append(
            {
                "variant": name,
                "images": len(items),
                "seconds_per_image": statistics.mean(r["seconds"] for r in items),
                "gradcam_seconds_per_image": statistics.mean(r["gradcam_seconds"] for r in items),
                "ratio": statistics.median(r["ratio"] for r in items),
                "kde_share": statistics.mean(r["kde_share"] for r in items),
                "kde_seconds": statistics.mean(r["kde_seconds"] for r in items),
                "selection_seconds": statistics.mean(r["selection_seconds"] for r in items),
                "groups": statistics.mean(r["groups"] for r in items),
                "dropped": statistics.mean(r["dropped"] for r in items),
                "peaks": [sum(c) for c in _pad_counts([r["peaks"] for r in items])],
            }
        )
    return summary


def _pad_counts(counts: list[list[int]]) -> list[tuple[int, ...]]:
    width = max(len(c) for c in counts)
    return list(zip(*[c + [0] * (width - len(c)) for c in counts], strict=True))


# --------------------------------------------------------------------------------------------------------------
# Quality
# --------------------------------------------------------------------------------------------------------------


def trained_model(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, torch.Tensor, dict]:
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
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=args.lr, total_steps=args.epochs * len(data.train_dataloader())
    )
    model.train()
    start = time.perf_counter()
    for _ in range(args.epochs):
        for batch in data.train_dataloader():
            loss = F.cross_entropy(model(normalise(batch["image"], mean, std)), batch["label"])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    info = {"train_seconds": time.perf_counter() - start}
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in data.test_dataloader():
            correct += int((model(normalise(batch["image"], mean, std)).argmax(1) == batch["label"]).sum())
            total += len(batch["label"])
    info["test_accuracy"] = correct / total
    return model, mean, std, info


def correct_test_images(args, model, mean, std):
    data = ShapesDataset(
        4 * args.quality_images + 64, image_size=args.image_size, split="test", seed=args.seed + 2
    )
    picked = []
    for i in range(len(data)):
        item = data[i]
        with torch.no_grad():
            predicted = int(model(normalise(item["image"][None], mean, std)).argmax(1))
        if predicted == int(item["label"]):
            picked.append(item)
        if len(picked) == args.quality_images:
            break
    pixels = torch.stack([p["image"] for p in picked])
    return pixels, torch.stack([p["label"] for p in picked]), torch.stack([p["mask"] for p in picked])


def run_quality(args, model, mean, std) -> list[dict]:
    pixels, labels, masks = correct_test_images(args, model, mean, std)
    x = normalise(pixels, mean, std)
    size = (args.image_size, args.image_size)
    with torch.no_grad():
        probs = model(x).softmax(1)
    runner_up = probs.scatter(1, labels[:, None], -1.0).argmax(1)
    index = torch.arange(len(x))

    def advise(selection: str):
        def explain():
            explainer = ADVISE(model, "layer4", (mean, std))
            maps, details = explainer.attribute(x, target=labels, selection=selection, return_details=True)
            chosen = details.selected_group.clamp_min(0)
            second = details.runner_up_maps[index, chosen].unsqueeze(1)
            extra = {"groups": float(details.valid_groups.sum(1).float().mean())}
            return upsample_maps(maps, size), upsample_maps(second, size), extra

        return explain

    def gradcam():
        layer_gc = LayerGradCam(model, model.layer4)
        maps = []
        for target in (labels, runner_up):
            cam = layer_gc.attribute(x, target=target, relu_attributions=True)
            maps.append(rescale_maps(LayerAttribution.interpolate(cam, size, "bilinear")))
        return maps[0], maps[1], {}

    def random_maps():
        generator = torch.Generator().manual_seed(args.seed)
        return (
            torch.rand(len(x), 1, *size, generator=generator),
            torch.rand(len(x), 1, *size, generator=generator),
            {},
        )

    methods = {
        "ADVISE (AVX selection)": advise("avx"),
        "ADVISE (largest group)": advise("largest_group"),
        "Captum LayerGradCam (layer4)": gradcam,
        "random map": random_maps,
    }
    tolerance = 15 * args.image_size / 224
    rows = []
    for name, make in methods.items():
        start = time.perf_counter()
        top1, top2, extra = make()
        seconds = (time.perf_counter() - start) / len(x)
        avx = AVX(model, normalization=(mean, std))
        avx.update(pixels, top1, top2, target=labels)
        avx_result = avx.compute()
        rows.append(
            {
                "method": name,
                "avx": float(avx_result["avx"]),
                "cs_pass_rate": float(avx_result["cs_pass_rate"]),
                "ad_reference": float(avx_result["ad_reference"]),
                "ssim": float(avx_result["ssim"]),
                "deletion_auc": float(deletion_auc(model, x, top1, labels)),
                "insertion_auc": float(insertion_auc(model, x, top1, labels)),
                "pointing_game": float(pointing_game(top1, masks, tolerance=tolerance)),
                "seconds_per_image": seconds,
                **extra,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


# --------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------


def tables(args, info, speed, quality) -> str:
    lines = [f"Machine: {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s).", ""]
    if speed:
        lines += [
            f"Speed: ResNet-50 (random weights) at {args.speed_size} px, layer4, one image per call, "
            f"{speed[0]['images']} images; ratio = ADVISE time / Captum LayerGradCam time on the same image "
            "(median over images):",
            "",
            "| variant | s / image | LayerGradCam s / image | **ratio** | KDE s | KDE share | selection s | "
            "groups / image | activations dropped | channels per peak count 0, 1, 2, … |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in speed:
            lines.append(
                f"| {r['variant']} | {r['seconds_per_image']:.2f} | {r['gradcam_seconds_per_image']:.3f} | "
                f"**{r['ratio']:.1f}×** | {r['kde_seconds']:.2f} | {r['kde_share']:.0%} | "
                f"{r['selection_seconds']:.2f} | {r['groups']:.1f} | {r['dropped']:.1%} | "
                f"{', '.join(str(c) for c in r['peaks'])} |"
            )
        lines.append("")
    if quality:
        lines += [
            f"Quality: small_resnet trained {args.epochs} epochs on {args.train_size} {args.image_size} px shapes "
            f"({info['train_seconds']:.0f} s), test accuracy {info['test_accuracy']:.3f}; "
            f"{args.quality_images} correctly classified test images, explained for their label at layer4 "
            "(AVX, insertion, pointing game: higher is better; deletion: lower is better):",
            "",
            "| method | AVX ↑ | CS pass rate | AD (reference) ↓ | SSIM ↑ | deletion AUC ↓ | insertion AUC ↑ | "
            "pointing game ↑ | s / image |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in quality:
            lines.append(
                f"| {r['method']} | {r['avx']:.4f} | {r['cs_pass_rate']:.2f} | {r['ad_reference']:.4f} | "
                f"{r['ssim']:.4f} | {r['deletion_auc']:.4f} | {r['insertion_auc']:.4f} | "
                f"{r['pointing_game']:.3f} | {r['seconds_per_image']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"speed", "quality"}
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}")
    started = time.perf_counter()
    info: dict = {}
    speed: list[dict] = []
    quality: list[dict] = []
    if "speed" in parts:
        speed = run_speed(args)
    if "quality" in parts:
        model, mean, std, info = trained_model(args)
        print(json.dumps(info), flush=True)
        quality = run_quality(args, model, mean, std)
    text = tables(args, info, speed, quality)
    print(text)
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"info": info, "speed": speed, "quality": quality}, handle, indent=1)


if __name__ == "__main__":
    main()
