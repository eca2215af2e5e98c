"""Deletion + insertion AUC speed: lightning_xai vs torch-cam and Quantus, and vs the model's own forward.

Every implementation scores the same ResNet-18 (torchvision, random weights, eval mode) on the same batch, set
up for the same number of model evaluations per image:

* ``ours-igos``: ``DeletionAUC`` + ``InsertionAUC`` with the I-GOS defaults (28×28 grid, 53 steps each, blur
  baseline), targets given: 2 × 53 = 106 evaluations per image.
* ``torchcam``: ``torchcam.metrics.DeletionInsertionMetric(steps=53)`` fed the same maps through a stand-in
  CAM extractor: 1 clean + 1 all-baseline + 2 × 52 interior points = 106.
* ``quantus-region``: ``quantus.RegionPerturbation`` with 8 px patches (the same 28×28 grid at 224 px), run once
  most-relevant-first and once least-relevant-first (Quantus has no insertion curve), 52 regions each:
  2 × (1 clean + 52) = 106.
* ``quantus-pixel``: ``quantus.PixelFlipping`` (deletion only) run twice with ``features_in_step`` giving 48
  steps; it needs a divisor of H·W, so 53 is not reachable. It is compared with ``ours-pixel``: pixel ranking,
  zeros baseline, ``cells_per_step`` giving the same 48 steps per curve (2 × 48 = 96 evaluations).

``forward`` rows time ``model(x)`` under ``no_grad`` on the same number of images in chunks of
``--internal-batch-size``: the floor for any implementation. Forward hooks on the model count the evaluations
and the time spent inside the model in every run, so each row also reports its time outside the model, which
is what an implementation adds and is the figure least affected by other load on the machine. Quantus 0.6 calls
``np.trapz``, which NumPy 2.4 removed, so it runs with ``return_auc_per_sample=False`` and its curves are
integrated with ``np.trapezoid`` (inside the timed region; negligible).

    python benchmarks/bench_deletion_insertion.py --repeats 2  # full run: 16 images at 224 px, 2 threads
    python benchmarks/bench_deletion_insertion.py --quick      # smoke run: 2 images at 32 px
"""

from __future__ import annotations

import argparse
import math
import platform
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F

from lightning_xai.metrics.faithfulness import DeletionAUC, InsertionAUC


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (2 images, 32 px, no repeats)")
    parser.add_argument("--batch", type=int, default=16, help="images (default 16)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--internal-batch-size", type=int, default=128, help="perturbed images per model call"
    )
    parser.add_argument(
        "--resolution", type=int, default=28, help="ranking grid of the I-GOS preset (default 28)"
    )
    parser.add_argument(
        "--peers",
        default="torchcam,quantus",
        help="comma-separated peers to run: torchcam, quantus (default both); empty for ours only",
    )
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the fastest run is kept")
    parser.add_argument("--markdown", default=None, help="also write the result table to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.size = 2, 32
    return args


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def forward_time(model: torch.nn.Module, images: int, size: int, chunk: int) -> float:
    """Seconds for ``images`` forward evaluations in chunks of ``chunk`` under no_grad."""
    x = torch.rand(min(chunk, images), 3, size, size)

    def run() -> None:
        with torch.no_grad():
            for start in range(0, images, chunk):
                model(x[: min(chunk, images - start)])

    return timed(run)[0]


def run_ours(model, x, maps, target, ibs: int, **kwargs) -> tuple[float, dict[str, float]]:
    def run() -> dict[str, float]:
        out = {}
        for name, cls in (("deletion", DeletionAUC), ("insertion", InsertionAUC)):
            metric = cls(model, internal_batch_size=ibs, **kwargs)
            metric.update(x, maps, target)
            out[name] = metric.compute().item()
        return out

    return timed(run)


class FixedCAM:
    """A torch-cam extractor stand-in returning precomputed maps, so that only the metric itself is timed."""

    def __init__(self, model: torch.nn.Module, cams: torch.Tensor) -> None:
        self.model = model
        self.cams = cams

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
        return [self.cams]

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        return nullcontext()


def run_torchcam(model, x, maps, target, steps: int, ibs: int) -> tuple[float, dict[str, float]]:
    from torchcam.metrics import DeletionInsertionMetric

    def run() -> dict[str, float]:
        metric = DeletionInsertionMetric(
            FixedCAM(model, maps[:, 0]), partial(torch.softmax, dim=-1), steps=steps, batch_size=ibs
        )
        metric.update(x, target.tolist())
        summary = metric.summary()
        return {"deletion": summary["deletion_auc"], "insertion": summary["insertion_auc"]}

    return timed(run)


def run_quantus_region(model, x, maps, target, patch: int, regions: int) -> tuple[float, dict[str, float]]:
    import numpy as np
    import quantus

    x_np, a_np, y_np = x.numpy(), maps.numpy(), target.numpy()

    def run() -> dict[str, float]:
        out = {}
        for name, order in (("morf", "morf"), ("lerf", "lerf")):
            metric = quantus.RegionPerturbation(
                patch_size=patch,
                regions_evaluation=regions,
                order=order,
                perturb_baseline="black",
                normalise=False,
                disable_warnings=True,
            )
            curves = metric(
                model=model,
                x_batch=x_np,
                y_batch=y_np,
                a_batch=a_np,
                device="cpu",
                softmax=True,
                batch_size=len(x),
            )
            out[name] = float(np.mean(curves))
        return out

    return timed(run)


def run_quantus_pixel(model, x, maps, target, features_in_step: int) -> tuple[float, dict[str, float]]:
    import numpy as np
    import quantus

    x_np, a_np, y_np = x.numpy(), maps.numpy(), target.numpy()

    def run() -> dict[str, float]:
        out = {}
        for name in ("run1", "run2"):
            metric = quantus.PixelFlipping(
                features_in_step=features_in_step,
                perturb_baseline="black",
                normalise=False,
                disable_warnings=True,
            )
            curves = np.asarray(
                metric(
                    model=model,
                    x_batch=x_np,
                    y_batch=y_np,
                    a_batch=a_np,
                    device="cpu",
                    softmax=True,
                    batch_size=len(x),
                )
            )
            out[name] = float(np.trapezoid(curves, dx=1 / (curves.shape[1] - 1), axis=1).mean())
        return out

    return timed(run)


def pixel_flipping_steps(size: int, channels: int, want_steps: int) -> tuple[int, int, int]:
    """``(features_in_step, steps, cells_per_step)``: the PixelFlipping step count closest to ``want_steps``
    that ours can match exactly. Quantus needs a divisor of H·W and flips C·H·W elements; ours needs
    ``ceil(H·W / k)`` steps."""
    pixels = size * size
    best = None
    for fis in (d for d in range(1, pixels + 1) if pixels % d == 0):
        steps = math.ceil(channels * pixels / fis)
        cells = math.ceil(pixels / steps)
        if math.ceil(pixels / cells) == steps and (
            best is None or abs(steps - want_steps) < abs(best[1] - want_steps)
        ):
            best = (fis, steps, cells)
    assert best is not None
    return best


class ForwardClock:
    """Forward hooks on the model: images scored and seconds spent inside the model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.images, self.seconds, self._start = 0, 0.0, 0.0
        model.register_forward_pre_hook(self._before)
        model.register_forward_hook(self._after)

    def _before(self, module, args) -> None:
        self._start = time.perf_counter()

    def _after(self, module, args, output) -> None:
        self.seconds += time.perf_counter() - self._start
        self.images += args[0].shape[0]

    def reset(self) -> None:
        self.images, self.seconds = 0, 0.0


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import torchvision

    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(weights=None).eval()
    batch, size, ibs = args.batch, args.size, args.internal_batch_size
    x = torch.rand(batch, 3, size, size)
    # Smooth CAM-like maps: 7×7 noise upsampled to the input, the same maps for everyone.
    maps = F.interpolate(torch.rand(batch, 1, 7, 7), size=(size, size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        target = model(x).argmax(1)
    forward_time(model, ibs, size, ibs)  # warm-up: one full chunk
    clock = ForwardClock(model)

    n_cells = args.resolution**2
    igos_steps = math.ceil(n_cells / max(1, n_cells // 50))
    fis, pixel_steps, pixel_k = pixel_flipping_steps(size, 3, igos_steps)
    peers = {p.strip() for p in args.peers.split(",") if p.strip()}
    available = set()
    for peer, module in (("torchcam", "torchcam.metrics"), ("quantus", "quantus")):
        if peer in peers:
            try:
                __import__(module)
                available.add(peer)
            except ImportError as err:
                print(f"{peer} skipped: {err}")

    igos_evals, pixel_evals = 2 * igos_steps, 2 * pixel_steps
    jobs: list[tuple[str, int, Callable[[], tuple[float, dict[str, float]]]]] = [
        ("forward", igos_evals, lambda: (forward_time(model, batch * igos_evals, size, ibs), {})),
        ("ours-igos", igos_evals, lambda: run_ours(model, x, maps, target, ibs, resolution=args.resolution)),
    ]
    if "torchcam" in available:
        jobs.append(("torchcam", igos_evals, lambda: run_torchcam(model, x, maps, target, igos_steps, ibs)))
    if "quantus" in available:
        patch = size // args.resolution
        jobs.append(
            (
                "quantus-region",
                igos_evals,
                lambda: run_quantus_region(model, x, maps, target, patch, igos_steps - 1),
            )
        )
    jobs += [
        ("forward", pixel_evals, lambda: (forward_time(model, batch * pixel_evals, size, ibs), {})),
        (
            "ours-pixel",
            pixel_evals,
            lambda: run_ours(
                model, x, maps, target, ibs, resolution=None, cells_per_step=pixel_k, baseline="zeros"
            ),
        ),
    ]
    if "quantus" in available:
        jobs.append(("quantus-pixel", pixel_evals, lambda: run_quantus_pixel(model, x, maps, target, fis)))

    # Round-robin repeats, keeping each job's fastest run: load from other processes only ever adds time.
    best: dict[tuple[str, int], dict] = {}
    for repeat in range(args.repeats):
        for name, evals, job in jobs:
            clock.reset()
            seconds, values = job()
            row = {
                "name": name,
                "evals": evals,
                "measured_evals": clock.images / batch,
                "seconds": seconds,
                "model_seconds": clock.seconds,
                "values": values,
            }
            shown = ", ".join(f"{k}={v:.4f}" for k, v in values.items())
            print(
                f"[{repeat + 1}/{args.repeats}] {name:15s} {row['measured_evals']:6.1f} evals/img "
                f"{seconds / batch:8.3f} s/img ({clock.seconds / batch:.3f} in the model)  {shown}",
                flush=True,
            )
            if (name, evals) not in best or seconds < best[name, evals]["seconds"]:
                best[name, evals] = row

    table = format_table(list(best.values()), batch)
    header = (
        f"ResNet-18 (torchvision, random weights, eval), {batch} images of {size}×{size}, CPU, "
        f"{args.threads} torch threads, internal batch {ibs}, best of {args.repeats} interleaved run(s); "
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}."
    )
    print()
    print(header)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(header + "\n\n" + table + "\n")


def format_table(rows: list[dict], batch: int) -> str:
    """Per row: seconds per image (wall, inside the model, outside it), our wall time over its wall time at the
    same number of evaluations, its wall time over the pure forward run, and over its own time in the model."""
    lines = [
        "| implementation | model evals / image | s / image | in model | outside model | ours ÷ this "
        "| this ÷ forward run | this ÷ own model time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ours = {r["evals"]: r["seconds"] for r in rows if r["name"].startswith("ours")}
    forward = {r["evals"]: r["seconds"] for r in rows if r["name"] == "forward"}
    for row in rows:
        wall, inside = row["seconds"], row["model_seconds"]
        lines.append(
            f"| {row['name']} | {row['measured_evals']:g} | {wall / batch:.3f} | {inside / batch:.3f} "
            f"| {(wall - inside) / batch:.3f} | {ours[row['evals']] / wall:.2f} | {wall / forward[row['evals']]:.2f} "
            f"| {wall / inside:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
