"""Explanation-consistency reweighting (ECE): what it costs and what it gives, against plain training (ERM).

Two sections, each comparing runs made in this one process:

* ``overhead``: ``trainer.fit`` time of ``ImageClassifier`` (``small_resnet``) on ``ShapesDataModule`` with the
  ``ExplanationConsistencyReweighting`` callback over the same run without it: ``refresh="epoch"`` at its defaults
  (warm-up 5, refresh every 5 epochs, half the table after the first refresh) over ``--overhead-epochs`` epochs,
  and ``refresh="batch"`` (every step) over ``--batch-epochs`` epochs. The runs alternate (plain, ECE, ECE, plain,
  ...) over ``--rounds`` rounds. The ratio is of the median **CPU time of this process** (``time.process_time``,
  one thread), which other processes on a shared machine barely disturb; the wall-clock ratio is printed too.
* ``quality``: ERM vs reweighting on ``ShapesDataModule`` with a background cue that agrees with the label for a
  fraction ``--bias`` of the training images, same seeds (data, initialisation, order) and epochs. On the
  bias-conflicting test split (the cue never agrees): accuracy, the pointing game of Grad-CAM of the label
  (last stage) against the object masks (``--tolerance`` px) and the mean explanation consistency (the callback's
  own score at its default attack: background PGD, ε = 8/255, cosine of the two Grad-CAMs); accuracy on a
  bias-aligned split (the cue always agrees), for the gap, and on an unbiased split (the cue independent of the
  label), which says whether a model learned the shapes at all; for reweighting, the mean final weight of the
  bias-conflicting and of the bias-aligned training samples. Configurations: ``erm``; ``ece`` (epoch mode,
  ``--warmup``, ``--refresh-every``, other settings at their defaults); ``ece-agree`` (with
  ``prediction_agreement``); ``ece-strong`` (attack ε = 48/255, step 12/255); ``ece-batch`` (batch mode). Means
  over ``--seeds`` with the sample standard deviation.
* ``attack``: does batch mode's one attack step of ε score like epoch mode's 5 steps of 2/255? An ERM model
  trained as in ``quality`` (seed 0), ``--attack-images`` training images scored with both attacks, at ε = 8/255
  and 48/255: the Spearman correlation of E, the share of the 20 % highest weights that both give, the mean
  absolute weight difference, and the scoring CPU time.

    python benchmarks/bench_ece.py                        # everything, single-threaded (about an hour of CPU time)
    python benchmarks/bench_ece.py --section overhead     # the overhead table only
    python benchmarks/bench_ece.py --section attack       # one attack step against five
    python benchmarks/bench_ece.py --quick                # smoke run, about a minute
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
import warnings
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_xai.callbacks import ExplanationConsistencyReweighting
from lightning_xai.data import ShapesDataModule, ShapesDataset
from lightning_xai.explain import grad_cam
from lightning_xai.losses import consistency_weights
from lightning_xai.metrics import PointingGame
from lightning_xai.metrics.functional import score_consistency
from lightning_xai.modules import ImageClassifier


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one seed")
    parser.add_argument("--section", default="all", choices=["all", "overhead", "quality", "attack"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    overhead = parser.add_argument_group("overhead")
    overhead.add_argument("--overhead-train-size", type=int, default=256)
    overhead.add_argument("--overhead-epochs", type=int, default=30, help="epochs of the epoch-mode runs")
    overhead.add_argument("--batch-epochs", type=int, default=6, help="epochs of the batch-mode runs")
    overhead.add_argument("--rounds", type=int, default=3)
    overhead.add_argument(
        "--overhead-modes", default="epoch,batch", help="refresh modes to time: epoch, batch, batch-5step"
    )
    quality = parser.add_argument_group("quality")
    quality.add_argument("--seeds", type=int, default=3)
    quality.add_argument(
        "--attack-images", type=int, default=512, help="training images of the attack section"
    )
    quality.add_argument("--bias", type=float, default=0.8)
    quality.add_argument("--train-size", type=int, default=4000)
    quality.add_argument("--eval-size", type=int, default=256)
    quality.add_argument("--epochs", type=int, default=12)
    quality.add_argument("--warmup", type=int, default=4, help="warm-up epochs of the reweighting runs")
    quality.add_argument("--refresh-every", type=int, default=4)
    quality.add_argument("--tolerance", type=float, default=2.0, help="pointing-game tolerance in pixels")
    quality.add_argument(
        "--configs",
        default="erm,ece,ece-agree,ece-strong",
        help="among erm, ece, ece-agree, ece-strong, ece-batch",
    )
    args = parser.parse_args()
    if args.quick:
        args.overhead_train_size, args.overhead_epochs, args.batch_epochs, args.rounds = 32, 6, 1, 1
        args.attack_images = 16
        args.seeds, args.train_size, args.eval_size, args.epochs, args.warmup, args.refresh_every = (
            1,
            64,
            32,
            2,
            1,
            1,
        )
        args.image_size, args.batch = 16, 32
    return args


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kwargs,
    )


def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def fit(args: argparse.Namespace, data: ShapesDataModule, epochs: int, seed: int, callback: Any) -> tuple:
    L.seed_everything(seed, verbose=False)
    module = ImageClassifier("small_resnet", num_classes=data.num_classes, lr=args.lr)
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[] if callback is None else [callback])
    start, cpu_start = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
    return module, time.perf_counter() - start, time.process_time() - cpu_start


# -- overhead -------------------------------------------------------------------------------------------------


def shapes_data(args: argparse.Namespace, train_size: int, bias: float, seed: int = 0) -> ShapesDataModule:
    """The training data of every section: ``train_size`` shapes whose background tint agrees with the label
    for a fraction ``bias`` of them (no validation or test split)."""
    return ShapesDataModule(
        batch_size=args.batch,
        image_size=args.image_size,
        train_size=train_size,
        val_size=0,
        test_size=0,
        bias=bias,
        seed=seed,
    )


def overhead_section(args: argparse.Namespace) -> dict[str, Any]:
    data = shapes_data(args, args.overhead_train_size, 0.9)
    score_loader = DataLoader(data.datasets["train"], batch_size=args.batch)
    runs = {
        "epoch": (
            args.overhead_epochs,
            lambda: ExplanationConsistencyReweighting(score_dataloader=score_loader),
        ),
        "batch": (
            args.batch_epochs,
            lambda: ExplanationConsistencyReweighting(refresh="batch", warmup_epochs=0),
        ),
        # the epoch mode's 5-step attack in batch mode (batch mode's default is one step of eps)
        "batch-5step": (
            args.batch_epochs,
            lambda: ExplanationConsistencyReweighting(
                refresh="batch", warmup_epochs=0, steps=5, step=2 / 255
            ),
        ),
    }
    out: dict[str, Any] = {}
    modes = [m.strip() for m in args.overhead_modes.split(",") if m.strip()]
    for mode, (epochs, make) in ((m, runs[m]) for m in modes):
        wall: dict[str, list[float]] = {"plain": [], "ece": []}
        cpu: dict[str, list[float]] = {"plain": [], "ece": []}
        for r in range(args.rounds):
            order = ("plain", "ece") if r % 2 == 0 else ("ece", "plain")
            for name in order:
                _, seconds, cpu_seconds = fit(args, data, epochs, 0, None if name == "plain" else make())
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
                print(
                    f"  overhead {mode}: {name} round {r}: wall {seconds:.1f} s, cpu {cpu_seconds:.1f} s",
                    flush=True,
                )
        plain, ece = statistics.median(cpu["plain"]), statistics.median(cpu["ece"])
        out[mode] = {
            "epochs": epochs,
            "plain_cpu_s": plain,
            "ece_cpu_s": ece,
            "ratio_cpu": ece / plain,
            "ratio_wall": statistics.median(wall["ece"]) / statistics.median(wall["plain"]),
            "wall": wall,
            "cpu": cpu,
        }
    return out


# -- quality --------------------------------------------------------------------------------------------------


def make_callback(name: str, args: argparse.Namespace, score_loader: DataLoader) -> Any:
    if name == "erm":
        return None
    if name == "ece-batch":
        return ExplanationConsistencyReweighting(refresh="batch", warmup_epochs=args.warmup)
    # "ece-strong": a budget large enough to change the background tint that carries the cue (the default
    # 8/255 cannot: the tints of two classes differ by 0.4 in two channels).
    attack = {"eps": 48 / 255, "step": 12 / 255} if name == "ece-strong" else {}
    return ExplanationConsistencyReweighting(
        warmup_epochs=args.warmup,
        refresh_every=args.refresh_every,
        prediction_agreement=name == "ece-agree",
        score_dataloader=score_loader,
        **attack,
    )


def evaluate(module: ImageClassifier, args: argparse.Namespace, seed: int) -> dict[str, float]:
    model = module.model.eval()
    kwargs = {"image_size": args.image_size, "num_classes": 4, "seed": seed + 1000}
    conflicting = ShapesDataset(args.eval_size, split="test", bias=args.bias, **kwargs)
    aligned = ShapesDataset(args.eval_size, split="val", bias=1.0, **kwargs)
    unbiased = ShapesDataset(args.eval_size, split="val", bias=None, **kwargs)
    results: dict[str, float] = {}
    pointing = PointingGame(tolerance=args.tolerance)
    correct = {"unbiased": 0, "conflicting": 0, "aligned": 0}
    consistency: list[torch.Tensor] = []
    for split, ds in (("unbiased", unbiased), ("conflicting", conflicting), ("aligned", aligned)):
        for batch in DataLoader(ds, batch_size=64):
            x, y = batch["image"], batch["label"]
            with torch.no_grad():
                correct[split] += int((model(x).argmax(1) == y).sum())
            if split == "conflicting":
                maps = grad_cam(model, x, y, upsample=True)
                pointing.update(maps, batch["mask"])
                consistency.append(score_consistency(model, x, y).consistency)
    results["acc_unbiased"] = correct["unbiased"] / len(unbiased)
    results["acc_conflicting"] = correct["conflicting"] / len(conflicting)
    results["acc_aligned"] = correct["aligned"] / len(aligned)
    results["gap"] = results["acc_aligned"] - results["acc_conflicting"]
    results["pointing"] = float(pointing.compute())
    results["consistency"] = float(torch.cat(consistency).mean())
    return results


def quality_section(args: argparse.Namespace) -> dict[str, Any]:
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    out: dict[str, dict[str, list[float]]] = {c: {} for c in configs}
    for seed in range(args.seeds):
        data = shapes_data(args, args.train_size, args.bias, seed)
        score_loader = DataLoader(data.datasets["train"], batch_size=args.batch)
        for name in configs:
            callback = make_callback(name, args, score_loader)
            module, _, cpu_seconds = fit(args, data, args.epochs, seed, callback)
            metrics = {**evaluate(module, args, seed), "train_cpu_s": cpu_seconds}
            if getattr(callback, "weights", None) is not None:
                # Does the final table favour the training samples whose cue disagrees with the label?
                train = data.datasets["train"]
                conflicting = torch.tensor(
                    [int(train[i]["cue"]) != int(train[i]["label"]) for i in range(len(train))]
                )
                metrics["w_conflicting"] = float(callback.weights[conflicting].mean())
                metrics["w_aligned"] = float(callback.weights[~conflicting].mean())
            for key, value in metrics.items():
                out[name].setdefault(key, []).append(value)
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            print(f"  quality seed {seed} {name}: {shown}", flush=True)
    return out


def _ranks(values: torch.Tensor) -> torch.Tensor:
    return values.argsort().argsort().double()


def attack_section(args: argparse.Namespace) -> dict[str, Any]:
    data = shapes_data(args, args.train_size, args.bias)
    module, _, _ = fit(args, data, args.epochs, 0, None)
    model = module.model.eval()
    accuracy = evaluate(module, args, 0)["acc_unbiased"]
    train = data.datasets["train"]
    count = min(args.attack_images, len(train))
    x = torch.stack([train[i]["image"] for i in range(count)])
    y = torch.stack([train[i]["label"] for i in range(count)])
    out: dict[str, Any] = {"acc_unbiased": accuracy, "images": count}
    for eps in (8 / 255, 48 / 255):
        scores, seconds = {}, {}
        for name, attack in (
            ("5 steps", {"steps": 5, "step": eps / 4}),
            ("1 step", {"steps": 1, "step": eps}),
        ):
            start = time.process_time()
            scores[name] = torch.cat(
                [
                    score_consistency(
                        model, x[i : i + args.batch], y[i : i + args.batch], eps=eps, **attack
                    ).consistency
                    for i in range(0, count, args.batch)
                ]
            )
            seconds[name] = time.process_time() - start
        five, one = scores["5 steps"], scores["1 step"]
        w5, w1 = consistency_weights(1 - five)[0], consistency_weights(1 - one)[0]
        top = max(1, count // 5)
        shared = len(set(w5.topk(top).indices.tolist()) & set(w1.topk(top).indices.tolist())) / top
        out[f"eps {round(eps * 255)}/255"] = {
            "spearman": float(torch.corrcoef(torch.stack([_ranks(five), _ranks(one)]))[0, 1]),
            "top20_shared": shared,
            "weight_abs_difference": float((w5 - w1).abs().mean()),
            "mean_e": [float(five.mean()), float(one.mean())],
            "cpu_s": [seconds["5 steps"], seconds["1 step"]],
        }
        print(json.dumps({"eps": eps, **out[f"eps {round(eps * 255)}/255"]}), flush=True)
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s); "
        f"settings: {vars(args)}",
        flush=True,
    )
    report: dict[str, Any] = {"settings": vars(args)}
    start = time.perf_counter()
    if args.section in ("all", "overhead"):
        report["overhead"] = overhead_section(args)
        print(
            "\n| mode | epochs | plain fit, CPU s | with callback, CPU s | ratio (CPU time) | ratio (wall) |"
            "\n|---|---|---|---|---|---|"
        )
        for mode, row in report["overhead"].items():
            print(
                f"| {mode} | {row['epochs']} | {row['plain_cpu_s']:.1f} | {row['ece_cpu_s']:.1f} | "
                f"{row['ratio_cpu']:.2f}x | {row['ratio_wall']:.2f}x |"
            )
    if args.section in ("all", "attack"):
        report["attack"] = attack_section(args)
        print(f"\naccuracy on unbiased images {report['attack']['acc_unbiased']:.3f}")
        print(
            "| budget | Spearman of E | top-20 % shared | mean abs weight difference | mean E (5 / 1) | CPU s (5 / 1) |"
        )
        print("|---|---|---|---|---|---|")
        for key, row in report["attack"].items():
            if isinstance(row, dict):
                print(
                    f"| {key} | {row['spearman']:.3f} | {row['top20_shared']:.0%} | {row['weight_abs_difference']:.2f} | "
                    f"{row['mean_e'][0]:.3f} / {row['mean_e'][1]:.3f} | {row['cpu_s'][0]:.2f} / {row['cpu_s'][1]:.2f} |"
                )
    if args.section in ("all", "quality"):
        report["quality"] = quality_section(args)
        keys = (
            "acc_unbiased",
            "acc_conflicting",
            "acc_aligned",
            "gap",
            "pointing",
            "consistency",
            "w_conflicting",
            "w_aligned",
            "train_cpu_s",
        )
        print(f"\n| config | {' | '.join(keys)} |\n|---|{'---|' * len(keys)}")
        for name, metrics in report["quality"].items():
            print(f"| {name} | {' | '.join(mean_std(metrics.get(k, [])) for k in keys)} |")
        low = {
            name: [round(a, 3) for a in metrics["acc_unbiased"] if a < 0.9]
            for name, metrics in report["quality"].items()
            if any(a < 0.9 for a in metrics["acc_unbiased"])
        }
        if low:
            print(f"WARNING: unbiased accuracy below 0.9, the table says little about these models: {low}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
