"""The demo's training-time models, epoch by epoch: does each method help where the baseline takes the shortcut?

Trains the four models of ``lightning-xai demo`` (baseline ``ImageClassifier``, ``+ MultiHeadExplainer``,
``+ ExplanationConsistencyReweighting``, Comprehensive Attribution with the baseline as its frozen detector) with
the demo's settings on ``ShapesDataModule`` at each ``--bias``, for each ``--seeds``, and records after every epoch
the accuracy on held-out images of the training distribution (the ``val`` split, which follows ``bias``) and on
bias-conflicting images (the ``test`` split: the background cue never agrees with the label). Prints, per bias,
the final accuracies (mean ± sample standard deviation over seeds) and the per-epoch curves of the means, and
writes everything to ``--out`` as JSON.

    python benchmarks/bench_demo.py --bias 0.8 0.95 0.99 --seeds 0 1 2     # about 10 minutes per bias and seed
    python benchmarks/bench_demo.py --quick                                 # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings
from dataclasses import replace
from typing import Any

import lightning as L
import torch

from lightning_xai.data import ShapesDataModule
from lightning_xai.demo import DemoConfig
from lightning_xai.demo.synthetic import accuracy, demo_data, train_models


class EpochAccuracy(L.Callback):
    """In-distribution (val) and bias-conflicting (test) accuracy after every training epoch."""

    def __init__(self, data: ShapesDataModule, into: list[dict[str, float]]) -> None:
        self.data, self.into = data, into

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        was_training = pl_module.training
        pl_module.eval()
        self.into.append(
            {
                "in_distribution": accuracy(pl_module, self.data.val_dataloader()),
                "bias_conflicting": accuracy(pl_module, self.data.test_dataloader()),
            }
        )
        pl_module.train(was_training)


def run(config: DemoConfig) -> dict[str, list[dict[str, float]]]:
    L.seed_everything(config.seed, verbose=False)
    data = demo_data(config)
    data.setup("fit")
    curves: dict[str, list[dict[str, float]]] = {}
    train_models(config, data, lambda name: [EpochAccuracy(data, curves.setdefault(name, []))])
    return curves


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bias", type=float, nargs="+", default=[0.95])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo's")
    parser.add_argument("--val-size", type=int, default=512, help="in-distribution held-out images")
    parser.add_argument("--test-size", type=int, default=512, help="bias-conflicting images")
    parser.add_argument("--out", default="bench_demo.json")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, one epoch, one seed")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    base = DemoConfig.quick() if args.quick else DemoConfig()
    base = replace(base, progress=False, val_size=args.val_size, test_size=args.test_size)
    if args.quick:
        base = replace(base, val_size=32, test_size=32)
        args.seeds = args.seeds[:1]
    if args.epochs is not None:
        base = replace(base, epochs=args.epochs)
    results: list[dict[str, Any]] = []
    for bias in args.bias:
        for seed in args.seeds:
            started = time.perf_counter()
            curves = run(replace(base, bias=bias, seed=seed))
            results.append(
                {"bias": bias, "seed": seed, "curves": curves, "seconds": time.perf_counter() - started}
            )
            print(
                f"bias {bias} seed {seed} ({results[-1]['seconds']:.0f} s): "
                + "; ".join(
                    f"{m} {c[-1]['in_distribution']:.3f} / {c[-1]['bias_conflicting']:.3f}"
                    for m, c in curves.items()
                ),
                flush=True,
            )
            with open(args.out, "w") as handle:
                json.dump({"config": {**vars(args)}, "results": results}, handle, indent=1)

    for bias in args.bias:
        runs = [r for r in results if r["bias"] == bias]
        print(f"\nbias {bias}, {len(runs)} seed(s), {base.epochs} epochs, {base.train_size} training images")
        print("| model | in-distribution accuracy | bias-conflicting accuracy |")
        print("|---|---|---|")
        for model in runs[0]["curves"]:
            final = [r["curves"][model][-1] for r in runs]
            print(
                f"| {model} | {_mean_sd([f['in_distribution'] for f in final])} | "
                f"{_mean_sd([f['bias_conflicting'] for f in final])} |"
            )
        print("bias-conflicting accuracy by epoch (mean over seeds):")
        for model in runs[0]["curves"]:
            epochs = len(runs[0]["curves"][model])
            means = [
                statistics.mean(r["curves"][model][e]["bias_conflicting"] for r in runs)
                for e in range(epochs)
            ]
            print(f"  {model:>28}: " + " ".join(f"{m:.2f}" for m in means))


if __name__ == "__main__":
    main()
