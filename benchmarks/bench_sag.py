"""Structured Attention Graphs: what a search costs, against the model's own forward throughput, and a gallery.

Three sections, each measured in this one process:

* ``cost``: a timm ResNet-18 (random weights, ``pretrained=False``, 1000 classes, eval mode) on two-object
  synthetic images at 224 px (ImageNet normalisation, so the black baseline is ``-mean/std``) with the reference
  defaults: 7×7 grid, bilinear patches, I-GOS ordering (2 iterations, 20 path steps), τ = 0.9, beam width 3,
  15 successors, stop after more than 10 roots. A random network's softmax is almost flat, so every single patch
  is already "sufficient" and the search ends at depth 1; the logits are therefore also multiplied by a scale
  (``--logit-scales``, default 1 and 30) to give a peaked random model whose search goes several depths deep.
  For each configuration: seconds per image for the whole ``explain`` call and for the search alone (the same
  search given the I-GOS ordering as a precomputed heuristic, so only beam search, trimming and graph are
  timed), model evaluations (rows through the network) per image, and the search's efficiency: its rows per
  second divided by the model's pure no-grad forward rows per second at the search's mean batch size, the two
  measured in alternating rounds (medians). ``--per-image`` also times one-image-at-a-time calls (the results
  must be identical to the batched ones).
* ``gallery``: SAGs of a hand-made two-route model (confident when either object is visible) on two-object
  images; the first ``--gallery-save`` are written as PNGs to ``--gallery-dir``, and the number of images with a
  selected root inside each object is reported.
* ``trained``: a small ResNet (``small_resnet``) trained on two-object shapes at 48 px (``--trained-epochs``, so
  that it learns them: its held-out accuracy on the explained images is reported, and a warning says when it is
  below 0.9) explains two-object test images; where its selected roots lie is reported.

    python benchmarks/bench_sag.py                      # everything (about 30 min on 2 shared CPU cores)
    python benchmarks/bench_sag.py --section cost       # the cost table only
    python benchmarks/bench_sag.py --quick              # smoke run, under a minute
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from torch import nn

from lightning_xai.attr import StructuredAttentionGraph
from lightning_xai.data import ShapesDataModule, ShapesDataset
from lightning_xai.explain import IMAGENET
from lightning_xai.modules import ImageClassifier
from lightning_xai.viz import save_sag_png


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    parser.add_argument("--section", default="all", choices=["all", "cost", "gallery", "trained"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")
    cost = parser.add_argument_group("cost")
    cost.add_argument("--model", default="resnet18")
    cost.add_argument("--size", type=int, default=224)
    cost.add_argument("--images", type=int, default=2, help="images explained in one batched call")
    cost.add_argument("--per-image", action="store_true", help="also time one-image-at-a-time calls")
    cost.add_argument("--forward-reps", type=int, default=3)
    cost.add_argument("--rounds", type=int, default=2, help="interleaved (search, pure forward) rounds")
    cost.add_argument(
        "--logit-scales",
        type=float,
        nargs="+",
        default=[1.0, 30.0],
        help="logits are multiplied by each scale in turn (1 = the random network as it is)",
    )
    gallery = parser.add_argument_group("gallery")
    gallery.add_argument("--gallery-images", type=int, default=12)
    gallery.add_argument("--gallery-size", type=int, default=48)
    gallery.add_argument("--gallery-grid", type=int, default=6)
    gallery.add_argument(
        "--trained-epochs", type=int, default=8, help="epochs of the `trained` section's model"
    )
    gallery.add_argument("--trained-size", type=int, default=4096, help="its training images")
    gallery.add_argument("--gallery-dir", default="docs/images")
    gallery.add_argument("--gallery-save", type=int, default=3, help="PNG files written")
    return parser.parse_args()


class RowCounter(nn.Module):
    """Counts rows through the model, separately with and without autograd."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad_rows = 0
        self.nograd_rows = 0
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.grad_rows += x.shape[0]
        else:
            self.nograd_rows += x.shape[0]
            self.calls += 1
        return self.model(x)

    def reset(self) -> None:
        self.grad_rows = self.nograd_rows = self.calls = 0


def two_object_images(count: int, size: int, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    data = ShapesDataset(count, image_size=size, num_objects=2, seed=seed, split="test")
    items = [data[i] for i in range(count)]
    return torch.stack([it["image"] for it in items]), [it["instance_masks"] for it in items]


def forward_rows_per_second(model: nn.Module, x: torch.Tensor, batch: int, reps: int) -> float:
    rows = x[torch.arange(batch) % x.shape[0]]
    with torch.no_grad():
        model(rows)  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            model(rows)
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def signature(results: list[Any]) -> list[Any]:
    return [(r.candidate_roots, r.roots, sorted(map(sorted, r.nodes))) for r in results]


class ScaledLogits(nn.Module):
    """``scale · model(x)``: a random network whose softmax is peaked, so the search must go deeper."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


def cost_config(args: argparse.Namespace, model: nn.Module, x: torch.Tensor, scale: float) -> dict[str, Any]:
    counter = RowCounter(ScaledLogits(model, scale)).eval()
    sag = StructuredAttentionGraph(counter, normalization=IMAGENET)
    settings: dict[str, Any] = {"seed": 0}
    if args.quick:
        settings.update(max_root_size=3, heuristic_kwargs={"n_steps": 4})
    n = x.shape[0]

    counter.reset()
    start = time.perf_counter()
    full = sag.explain(x, **settings)
    t_full = time.perf_counter() - start
    rows_full = {"grad": counter.grad_rows, "nograd": counter.nograd_rows}

    # the search alone, given the same ordering; interleaved with pure forwards at the search's mean batch
    heuristic = torch.stack([r.heuristic for r in full])
    search_times, throughputs = [], []
    search_rows = search_calls = mean_batch = 0
    for _ in range(args.rounds):
        counter.reset()
        start = time.perf_counter()
        search = sag.explain(x, heuristic=heuristic, **settings)
        search_times.append(time.perf_counter() - start)
        search_rows, search_calls = counter.nograd_rows - n, counter.calls - 1  # minus the clean pass
        assert signature(search) == signature(full)
        mean_batch = max(1, round(search_rows / max(search_calls, 1)))
        throughputs.append(forward_rows_per_second(counter, x, mean_batch, args.forward_reps))
    t_search = statistics.median(search_times)
    pure = statistics.median(throughputs)
    out: dict[str, Any] = {
        "logit_scale": scale,
        "images": n,
        "seconds_per_image_total": t_full / n,
        "seconds_per_image_search": t_search / n,
        "rows_per_image_heuristic_grad": rows_full["grad"] / n,
        "rows_per_image_total_nograd": rows_full["nograd"] / n,
        "rows_per_image_search": search_rows / n,
        "search_forward_calls": search_calls,
        "mean_search_batch": mean_batch,
        "pure_forward_rows_per_s": pure,
        "search_rows_per_s": search_rows / t_search,
        "search_efficiency": (search_rows / t_search) / pure,
        "search_times": search_times,
        "pure_forward_rows_per_s_rounds": throughputs,
        "roots_found": [len(r.candidate_roots) for r in full],
        "roots_selected": [len(r.roots) for r in full],
        "mean_root_size": statistics.mean(len(root) for r in full for root in r.roots)
        if any(r.roots for r in full)
        else 0,
        "depth": [r.stats["depth"] for r in full],
        "graph_nodes": [len(r.nodes) for r in full],
        "p_full": [round(r.p_full, 5) for r in full],
        "dnf": [r.dnf for r in full],
    }
    if args.per_image:
        start = time.perf_counter()
        singles = [sag.explain(x[i : i + 1], heuristic=heuristic[i : i + 1], **settings)[0] for i in range(n)]
        t_single = time.perf_counter() - start
        assert signature(singles) == signature(search)
        out["seconds_per_image_search_one_at_a_time"] = t_single / n
        out["batched_speedup"] = t_single / t_search
    return out


def cost_section(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    images, _ = two_object_images(args.images, args.size)
    x = IMAGENET.normalize(images)
    out: dict[str, Any] = {"model": args.model, "size": args.size, "configs": []}
    for scale in args.logit_scales:
        result = cost_config(args, model, x, scale)
        out["configs"].append(result)
        print(json.dumps(result), flush=True)
    return out


def trained_section(args: argparse.Namespace) -> dict[str, Any]:
    L.seed_everything(0, verbose=False)
    size, grid = args.gallery_size, args.gallery_grid
    quick = args.quick
    data = ShapesDataModule(
        batch_size=64,
        image_size=size,
        num_objects=2,
        train_size=256 if quick else args.trained_size,
        val_size=64,
        test_size=64,
        seed=0,
    )
    module = ImageClassifier("small_resnet", num_classes=data.num_classes, lr=3e-3)
    trainer = L.Trainer(
        max_epochs=1 if quick else args.trained_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(module, data)
    train_time = time.perf_counter() - start
    model = module.model.eval()
    count = 4 if quick else args.gallery_images
    pool = ShapesDataset(count * 4, image_size=size, num_objects=2, seed=1, split="test")
    chosen = []
    for i in range(len(pool)):
        item = pool[i]
        cover = F.adaptive_max_pool2d(item["instance_masks"].float()[:, None], grid)[:, 0].flatten(1) > 0
        if not bool((cover[0] & cover[1]).any()):
            chosen.append((item, [set(c.nonzero()[:, 0].tolist()) for c in cover]))
        if len(chosen) == count:
            break
    x = torch.stack([item["image"] for item, _ in chosen])
    labels = torch.stack([item["label"] for item, _ in chosen])
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == labels).float().mean())
    if accuracy < 0.9:
        print(f"WARNING: the trained model's accuracy on the explained images is {accuracy:.3f}, below 0.9")
    sag = StructuredAttentionGraph(model)
    start = time.perf_counter()
    results = sag.explain(
        x, target=labels, grid_size=grid, patch_interpolation="nearest", seed=0, max_root_size=12
    )
    explain_time = time.perf_counter() - start
    both = one = none = 0
    for result, (_, (a, b)) in zip(results, chosen, strict=True):
        on_a = any(r <= a for r in result.roots)
        on_b = any(r <= b for r in result.roots)
        both += on_a and on_b
        one += on_a != on_b
        none += not (on_a or on_b)
    return {
        "train_seconds": train_time,
        "accuracy_two_objects": accuracy,
        "images": len(results),
        "seconds_per_image": explain_time / len(results),
        "roots_on_both_objects": both,
        "roots_on_one_object": one,
        "roots_on_neither_only": none,
        "mean_selected_roots": statistics.mean(len(r.roots) for r in results),
        "mean_root_size": statistics.mean(len(root) for r in results for root in r.roots)
        if any(r.roots for r in results)
        else 0.0,
    }


class TwoRoutes(nn.Module):
    """A hand-made two-object model: confident when either object is visible. Its logit is 4 × the largest
    visible fraction of an object's pixels; the clean image and the instance masks come in as additional
    forward arguments, so every candidate row knows its image's objects."""

    def forward(self, x: torch.Tensor, reference: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
        visible = torch.exp(-((x - reference) ** 2).sum(1) / 0.01)
        fraction = (visible[:, None] * instances).flatten(2).sum(2) / instances.flatten(2).sum(2)
        evidence = fraction.amax(1)
        return torch.stack([4 * evidence, torch.zeros_like(evidence)], 1)


def two_routes_gallery(args: argparse.Namespace) -> dict[str, Any]:
    """SAGs of the hand-made two-route model on two-object images, written as PNGs."""
    size, grid = args.gallery_size, args.gallery_grid
    data = ShapesDataset(64, image_size=size, num_objects=2, seed=0)
    chosen = []
    for i in range(len(data)):
        item = data[i]
        cover = F.adaptive_max_pool2d(item["instance_masks"].float()[:, None], grid)[:, 0].flatten(1) > 0
        colour = item["image"][:, item["mask"]].mean(1)
        if not bool((cover[0] & cover[1]).any()) and float(colour.norm()) > 0.6:
            chosen.append((item, [set(c.nonzero()[:, 0].tolist()) for c in cover]))
        if len(chosen) == (2 if args.quick else args.gallery_images):
            break
    x = torch.stack([item["image"] for item, _ in chosen]).double()
    inst = torch.stack([item["instance_masks"] for item, _ in chosen]).double()
    # the object coverage of each patch orders the search (the model's gradients vanish at the clean image)
    heuristic = F.adaptive_avg_pool2d(inst.sum(1, keepdim=True), grid)[:, 0]
    start = time.perf_counter()
    results = StructuredAttentionGraph(TwoRoutes().eval()).explain(
        x,
        additional_forward_args=(x, inst),
        heuristic=heuristic,
        grid_size=grid,
        patch_interpolation="nearest",
        max_root_size=8,
    )
    seconds = (time.perf_counter() - start) / len(results)
    both = sum(
        any(r <= a for r in result.roots) and any(r <= b for r in result.roots)
        for result, (_, (a, b)) in zip(results, chosen, strict=True)
    )
    out_dir = Path(args.gallery_dir)
    saved = []
    for rank in range(min(args.gallery_save, len(results))):
        path = out_dir / f"sag_{rank}.png"
        save_sag_png(results[rank], path, dpi=80, title="hand-made two-route model")
        saved.append({"path": str(path), "bytes": path.stat().st_size, "dnf": results[rank].dnf})
    return {
        "images": len(results),
        "seconds_per_image": seconds,
        "roots_on_both_objects": both,
        "mean_root_size": statistics.mean(len(root) for r in results for root in r.roots),
        "mean_graph_nodes": statistics.mean(len(r.nodes) for r in results),
        "saved": saved,
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.size, args.images, args.forward_reps, args.rounds = 64, 2, 1, 1
        args.gallery_dir = "/tmp/sag_bench_quick"
    report: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s)",
    }
    if args.section in ("all", "cost"):
        report["cost"] = cost_section(args)
    if args.section in ("all", "gallery"):
        report["two_routes"] = two_routes_gallery(args)
        print(json.dumps(report["two_routes"], indent=1), flush=True)
    if args.section in ("all", "trained"):
        report["trained"] = trained_section(args)
        print(json.dumps(report["trained"], indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
