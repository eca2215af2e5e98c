"""MHEX (lightning_xai reconstruction): what it costs and what it gives, against the same model without it.

Three sections, each comparing runs made in this one process:

* ``cost``: training-step time (forward, loss, backward, AdamW step) and parameter count of a timm ResNet-18
  (4 classes, random weights) at 224 px on CPU, without MHEX, with the default ``MultiHeadExplainer`` (low-rank
  gate r=32, refinement only on stages of at most 256 channels) and with the spec's full C x C gate and
  refinement on all four stages. The steps of the configurations are interleaved round by round, so that load
  from other processes hits them alike; the median over rounds is reported, and the ratios are of medians.
  The MHEX steps go through the callback's loss tap exactly as in training (``module.criterion`` tapped).
* ``images``: ``ImageClassifier`` (``small_resnet``: a timm ResNet with a stride-1 stem for small images, random
  init; the demo's model) on ``ShapesDataModule`` with a background cue that
  agrees with the label for a fraction ``--bias`` of the training images; baseline vs the same script with
  ``MultiHeadExplainer`` (default and spec-full settings), same seeds (data, initialisation and order), same
  epochs. Accuracy on an unbiased split (cue independent of the label) and on the bias-conflicting test split;
  explanations of the ground-truth class on the unbiased split: pointing game (tolerance ``--tolerance`` px),
  energy pointing game, deletion and insertion AUC (I-GOS protocol on a 16 x 16 grid, blur baseline,
  softmax score). MHEX saliency (``MHEXAttribution``) is compared with Grad-CAM of the baseline's last stage, and
  Grad-CAM of the MHEX-trained model is listed as well, to separate "better model" from "better map".
* ``tokens``: a tiny BERT (``--bert-hidden``, ``--bert-layers``) on ``TokensDataModule`` (same ``--bias``),
  baseline vs ``MultiHeadExplainer``; accuracy on the unbiased and bias-conflicting splits, and the fraction of
  the top-k tokens (k = the sample's number of rationale tokens; padding and special tokens excluded) that are
  rationale tokens, for MHEX saliency and for Grad-CAM on the last encoder layer of each model.

Every quality number is a mean over ``--seeds`` with the sample standard deviation.

    python benchmarks/bench_mhex.py --threads 1          # everything (about 30 min on 2 shared CPU cores)
    python benchmarks/bench_mhex.py --section cost       # the cost table only
    python benchmarks/bench_mhex.py --quick              # smoke run, under a minute
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import timm
import torch
from torch import Tensor, nn

from lightning_xai.attr.mhex import MHEXAttribution
from lightning_xai.callbacks import MultiHeadExplainer
from lightning_xai.data import ShapesDataModule, ShapesDataset, TokensDataModule, TokensDataset
from lightning_xai.explain import grad_cam
from lightning_xai.metrics import DeletionAUC, EnergyPointingGame, InsertionAUC, PointingGame
from lightning_xai.modules import ImageClassifier

CONFIGS: dict[str, dict[str, Any] | None] = {
    "baseline": None,
    "mhex": {},
    "mhex-full": {"gate_rank": None, "refine": True},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one seed, a few steps")
    parser.add_argument("--section", default="all", choices=["all", "cost", "images", "tokens"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")
    cost = parser.add_argument_group("cost")
    cost.add_argument("--cost-size", type=int, default=224)
    cost.add_argument("--cost-batch", type=int, default=8)
    cost.add_argument("--cost-rounds", type=int, default=20, help="timed rounds (after 2 warm-up rounds)")
    quality = parser.add_argument_group("quality")
    quality.add_argument("--seeds", type=int, default=3)
    quality.add_argument(
        "--bias",
        type=lambda v: None if v.lower() == "none" else float(v),
        default=0.8,
        help="bias-aligned fraction of the training data; 'none' for a cue independent of the label",
    )
    quality.add_argument(
        "--image-model",
        default="small_resnet",
        help="ImageClassifier model: small_resnet (default) or a timm name",
    )
    quality.add_argument("--image-size", type=int, default=32)
    quality.add_argument("--train-size", type=int, default=4000)
    quality.add_argument("--eval-size", type=int, default=256)
    quality.add_argument("--curve-size", type=int, default=64, help="images scored by deletion/insertion")
    quality.add_argument("--epochs", type=int, default=12)
    quality.add_argument("--batch", type=int, default=64)
    quality.add_argument("--lr", type=float, default=3e-3)
    quality.add_argument("--tolerance", type=float, default=2.0, help="pointing-game tolerance in pixels")
    quality.add_argument("--configs", default="baseline,mhex,mhex-full", help="image configurations to train")
    tokens = parser.add_argument_group("tokens")
    tokens.add_argument("--token-train-size", type=int, default=4000)
    tokens.add_argument("--token-epochs", type=int, default=10)
    tokens.add_argument("--token-lr", type=float, default=2e-3, help="AdamW lr of the text models")
    tokens.add_argument("--seq-len", type=int, default=32)
    tokens.add_argument("--bert-hidden", type=int, default=32)
    tokens.add_argument("--bert-layers", type=int, default=4)
    args = parser.parse_args()
    if args.quick:
        args.cost_size, args.cost_batch, args.cost_rounds = 64, 4, 2
        args.seeds, args.image_size, args.train_size, args.eval_size, args.curve_size = 1, 32, 16, 8, 2
        args.epochs, args.batch, args.token_train_size, args.token_epochs, args.seq_len = 1, 16, 32, 1, 16
        args.bert_hidden, args.bert_layers, args.configs = 16, 2, "baseline,mhex"
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


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


# -- cost ---------------------------------------------------------------------------------------------------


def cost_section(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    network = timm.create_model("resnet18", pretrained=False, num_classes=4)
    runs: dict[str, tuple[Callable[[], None], int]] = {}
    x = torch.rand(args.cost_batch, 3, args.cost_size, args.cost_size)
    y = torch.arange(args.cost_batch) % 4
    base_params = count(network)
    for name, config in CONFIGS.items():
        module = ImageClassifier(copy.deepcopy(network), num_classes=4)
        callback = None
        if config is not None:
            callback = MultiHeadExplainer(**config)
            callback.setup(None, module, "fit")  # injects the heads and taps `module.criterion`
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
        module.train()

        def step(module=module, callback=callback, optimizer=optimizer) -> None:
            if callback is not None:
                callback.on_train_batch_start(None, module, (x, y), 0)
            loss = module.criterion(module(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if callback is not None:
                callback._tap.close_batch(callback)

        runs[name] = (step, count(module))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(args.cost_rounds + 2):
        order = list(runs) if round_index % 2 == 0 else list(reversed(runs))
        for name in order:
            start = time.perf_counter()
            runs[name][0]()
            if round_index >= 2:
                times[name].append(time.perf_counter() - start)
    base = times["baseline"]
    rows = []
    for name, (_, params) in runs.items():
        # Other processes slow whole rounds down: the per-round ratio and the best-of-N ratio are the
        # estimates least affected by them (the ratio of medians is reported too).
        round_ratios = [t / b for t, b in zip(times[name], base, strict=True)]
        rows.append(
            {
                "config": name,
                "median_s": statistics.median(times[name]),
                "min_s": min(times[name]),
                "ratio_rounds": statistics.median(round_ratios),
                "ratio_min": min(times[name]) / min(base),
                "ratio_medians": statistics.median(times[name]) / statistics.median(base),
                "params": params,
                "extra_params_pct": 100 * (params - base_params) / base_params,
            }
        )
    print(
        f"\n### Cost: ResNet-18, {args.cost_size} px, batch {args.cost_batch}, CPU, {torch.get_num_threads()} "
        f"threads, {args.cost_rounds} interleaved training steps per configuration\n"
    )
    print(
        "| config | median step (s) | best step (s) | step-time ratio (median of rounds) | ratio of best | "
        "ratio of medians | parameters | extra parameters |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['config']} | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['ratio_rounds']:.3f} | "
            f"{row['ratio_min']:.3f} | {row['ratio_medians']:.3f} | {row['params']:,} | "
            f"{row['extra_params_pct']:.2f} % |"
        )
    return {"rows": rows, "times": times}


# -- images -------------------------------------------------------------------------------------------------


def gradcam_maps(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    return grad_cam(model, images, labels, upsample=True, normalize=True)


def mhex_maps(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    return MHEXAttribution(model).attribute(images, target=labels)


def evaluate_images(
    model: nn.Module,
    explain: Callable[[nn.Module, Tensor, Tensor], Tensor],
    args: argparse.Namespace,
    seed: int,
) -> dict[str, float]:
    unbiased = ShapesDataset(
        args.eval_size, image_size=args.image_size, bias=None, split="val", seed=seed + 1000
    )
    batch = [unbiased[i] for i in range(len(unbiased))]
    images = torch.stack([b["image"] for b in batch])
    labels = torch.stack([b["label"] for b in batch])
    masks = torch.stack([b["mask"] for b in batch])
    pointing = PointingGame(tolerance=args.tolerance)
    energy = EnergyPointingGame()
    maps = torch.cat(
        [explain(model, images[i : i + 64], labels[i : i + 64]) for i in range(0, len(images), 64)]
    )
    pointing.update(maps, masks)
    energy.update(maps, masks)
    n = args.curve_size
    deletion = DeletionAUC(model, resolution=16)
    insertion = InsertionAUC(model, resolution=16)
    deletion.update(images[:n], maps[:n], target=labels[:n])
    insertion.update(images[:n], maps[:n], target=labels[:n])
    return {
        "pointing": float(pointing.compute()),
        "energy": float(energy.compute()),
        "deletion": float(deletion.compute()),
        "insertion": float(insertion.compute()),
    }


def accuracy(model: nn.Module, dataset: Any, forward: Callable[[nn.Module, dict], Tensor]) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=128)
    correct = total = 0
    with torch.no_grad():
        for batch in loader:
            pred = forward(model, batch).argmax(1)
            correct += int((pred == batch["label"]).sum())
            total += len(pred)
    return correct / max(total, 1)


def image_section(args: argparse.Namespace) -> dict[str, Any]:
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    results: dict[str, dict[str, list[float]]] = {}
    for seed in range(args.seeds):
        for name in configs:
            L.seed_everything(seed, verbose=False)
            data = ShapesDataModule(
                batch_size=args.batch,
                image_size=args.image_size,
                bias=args.bias,
                train_size=args.train_size,
                val_size=0,
                test_size=args.eval_size,
                seed=seed,
            )
            module = ImageClassifier(args.image_model, num_classes=4, lr=args.lr)
            callbacks = [] if CONFIGS[name] is None else [MultiHeadExplainer(**CONFIGS[name])]
            start = time.perf_counter()
            quiet_trainer(max_epochs=args.epochs, callbacks=callbacks).fit(module, data)
            train_s = time.perf_counter() - start
            model = module.model.eval()
            unbiased = ShapesDataset(
                args.eval_size, image_size=args.image_size, bias=None, split="val", seed=seed + 1000
            )
            rows = {
                "acc_unbiased": accuracy(model, unbiased, lambda m, b: m(b["image"])),
                "acc_conflicting": accuracy(model, data.datasets["test"], lambda m, b: m(b["image"])),
                "train_s": train_s,
            }
            methods = (
                {"grad-cam": gradcam_maps}
                if name == "baseline"
                else {"mhex": mhex_maps, "grad-cam": gradcam_maps}
            )
            for method, fn in methods.items():
                for key, value in evaluate_images(model, fn, args, seed).items():
                    rows[f"{method}:{key}"] = value
            for key, value in rows.items():
                results.setdefault(name, {}).setdefault(key, []).append(value)
            print(f"  seed {seed} {name}: " + ", ".join(f"{k}={v:.3f}" for k, v in rows.items()), flush=True)

    print(
        f"\n### Images: {args.image_model} on ShapesDataModule {args.image_size} px, train {args.train_size} "
        f"(bias {args.bias}), {args.epochs} epochs, batch {args.batch}, AdamW lr {args.lr}, {args.seeds} seeds "
        "(mean ± std)\n"
    )
    print("| model | acc. unbiased | acc. bias-conflicting | train time (s) |")
    print("|---|---|---|---|")
    for name in configs:
        r = results[name]
        print(
            f"| {name} | {mean_std(r['acc_unbiased'])} | {mean_std(r['acc_conflicting'])} | {mean_std(r['train_s'])} |"
        )
    print("\n| model | saliency | pointing game ↑ | energy pointing ↑ | deletion AUC ↓ | insertion AUC ↑ |")
    print("|---|---|---|---|---|---|")
    for name in configs:
        for method in ("mhex", "grad-cam"):
            r = results[name]
            if f"{method}:pointing" not in r:
                continue
            label = "MHEX saliency" if method == "mhex" else "Grad-CAM (last stage)"
            print(
                f"| {name} | {label} | {mean_std(r[f'{method}:pointing'])} | {mean_std(r[f'{method}:energy'])} | "
                f"{mean_std(r[f'{method}:deletion'])} | {mean_std(r[f'{method}:insertion'])} |"
            )
    return results


# -- tokens -------------------------------------------------------------------------------------------------


class TextClassifier(L.LightningModule):
    """A plain text classifier as a user would write it: HF model in ``self.model``, loss in ``self.criterion``."""

    def __init__(self, vocab_size: int, hidden: int, layers: int, seq_len: int, lr: float) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            num_labels=4,
            max_position_embeddings=seq_len,
            attn_implementation="eager",
        )
        self.model = BertForSequenceClassification(config)
        self.criterion = nn.CrossEntropyLoss()
        self.lr = lr

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self.criterion(self(batch["input_ids"], batch["attention_mask"]), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


SPECIAL = [
    TokensDataset.pad_token_id,
    TokensDataset.cls_token_id,
    TokensDataset.sep_token_id,
    TokensDataset.mask_token_id,
]


def rationale_precision(scores: Tensor, batch: dict) -> Tensor:
    """Per sample: the fraction of the top-k valid tokens that are rationale tokens, k = #rationale tokens."""
    ids, rationale = batch["input_ids"], batch["rationale_mask"]
    valid = (batch["attention_mask"] != 0) & ~torch.isin(ids, torch.tensor(SPECIAL))
    scores = scores.masked_fill(~valid, float("-inf"))
    k = rationale.sum(1)
    order = scores.argsort(1, descending=True)
    ranks = torch.arange(ids.shape[1])[None].expand_as(ids)
    top = torch.zeros_like(rationale).scatter(1, order, ranks < k[:, None])
    return (top & rationale).sum(1) / k.clamp_min(1)


def rationale_chance(batch: dict) -> Tensor:
    """The expected top-k precision of random scores: the rationale tokens' share of the valid tokens."""
    valid = (batch["attention_mask"] != 0) & ~torch.isin(batch["input_ids"], torch.tensor(SPECIAL))
    return batch["rationale_mask"].sum(1) / valid.sum(1).clamp_min(1)


def token_gradcam(model: nn.Module, batch: dict) -> Tensor:
    return grad_cam(
        model, batch["input_ids"], batch["label"], additional_forward_args=(batch["attention_mask"],)
    )


def token_mhex(model: nn.Module, batch: dict) -> Tensor:
    return MHEXAttribution(model).attribute(
        batch["input_ids"], target=batch["label"], additional_forward_args=(batch["attention_mask"],)
    )


def token_section(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {}
    for seed in range(args.seeds):
        for name in ("baseline", "mhex"):
            L.seed_everything(seed, verbose=False)
            data = TokensDataModule(
                batch_size=32,
                seq_len=args.seq_len,
                bias=args.bias,
                train_size=args.token_train_size,
                val_size=0,
                test_size=args.eval_size,
                seed=seed,
            )
            module = TextClassifier(
                data.vocab_size, args.bert_hidden, args.bert_layers, args.seq_len, args.token_lr
            )
            callbacks = [] if name == "baseline" else [MultiHeadExplainer(special_token_ids=SPECIAL)]
            start = time.perf_counter()
            quiet_trainer(max_epochs=args.token_epochs, callbacks=callbacks).fit(module, data)
            train_s = time.perf_counter() - start
            model = module.model.eval()
            unbiased = TokensDataset(
                args.eval_size, seq_len=args.seq_len, bias=None, split="val", seed=seed + 1000
            )

            def forward(m: nn.Module, b: dict) -> Tensor:
                return m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits

            rows = {
                "acc_unbiased": accuracy(model, unbiased, forward),
                "acc_conflicting": accuracy(model, data.datasets["test"], forward),
                "train_s": train_s,
            }
            batch = next(iter(torch.utils.data.DataLoader(unbiased, batch_size=len(unbiased))))
            methods = (
                {"grad-cam": token_gradcam}
                if name == "baseline"
                else {"mhex": token_mhex, "grad-cam": token_gradcam}
            )
            for method, fn in methods.items():
                rows[f"{method}:rationale"] = float(rationale_precision(fn(model, batch), batch).mean())
            rows["chance:rationale"] = float(rationale_chance(batch).mean())
            for key, value in rows.items():
                results.setdefault(name, {}).setdefault(key, []).append(value)
            print(f"  seed {seed} {name}: " + ", ".join(f"{k}={v:.3f}" for k, v in rows.items()), flush=True)
    print(
        f"\n### Tokens: TokensDataModule seq_len {args.seq_len}, train {args.token_train_size} (bias {args.bias}), "
        f"BERT hidden {args.bert_hidden} x {args.bert_layers} layers, {args.token_epochs} epochs at lr {args.token_lr}, "
        f"{args.seeds} seeds (mean ± std)\n"
    )
    print(
        "| model | acc. unbiased | acc. bias-conflicting | top-k rationale, MHEX ↑ | top-k rationale, Grad-CAM ↑ "
        "| top-k rationale, random scores |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {mean_std(r['acc_unbiased'])} | {mean_std(r['acc_conflicting'])} | "
            f"{mean_std(r.get('mhex:rationale', []))} | {mean_std(r['grad-cam:rationale'])} | "
            f"{mean_std(r['chance:rationale'])} |"
        )
    return results


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    print(
        f"torch {torch.__version__}, timm {timm.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    out: dict[str, Any] = {"args": vars(args)}
    start = time.perf_counter()
    if args.section in ("all", "cost"):
        out["cost"] = cost_section(args)
    if args.section in ("all", "images"):
        out["images"] = image_section(args)
    if args.section in ("all", "tokens"):
        out["tokens"] = token_section(args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=1, default=str)


if __name__ == "__main__":
    main()
