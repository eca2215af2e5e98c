"""XNN: what the explanation network costs, how faithful it is, and where its concepts look.

For each seed, in this one process:

1. ``TwoPartDataset`` (32 px): the positive class needs both part A (a red circle) and part B (a blue square);
   negatives show one part, alone or beside a distractor. 768 training and 256 held-out images.
2. A tiny CNN (3 conv layers, 16/32/32 channels, global max pooling, linear head) is trained for 20 epochs
   (AdamW, lr 3e-3) and then frozen. Its held-out accuracy is reported, and a warning names every seed whose
   backbone is below 0.9 (its figures are then not evidence).
3. An ``XNN`` (k = 5, hidden 800/100, ``pretrain_epochs`` per stage) explains the logit of the positive class
   from the penultimate (pooled) features; every setting below starts from the same seed.
4. **Cost**: each XNN training epoch is timed, and right after it one epoch of the frozen backbone's forward pass
   over the same data loader (interleaved epoch by epoch, so load from other processes hits both alike). The
   ratio is median XNN epoch / median forward epoch; pretraining (done once) is reported in forward epochs too.
5. **Faithfulness**: R² of ŷ against the backbone's logit on the held-out images.
6. **Localisation**: on held-out images with both parts, concept heatmaps (Grad-CAM of each concept at the last
   conv layer) and ``part_split_rate`` (pointing game, tolerance 1 px): the fraction of images where one active
   concept points at part A and another at part B, against the chance level of concepts that pick their part
   at random (``1 − 2^{1−m}`` for m pointing concepts), and the fractions of active concepts whose maximum lies
   on part A and on part B, and the number of concepts inactive on every held-out image. With
   ``--igos-images N`` the split rate is also measured with I-GOS heatmaps of the first N such images.

Five XNN settings are compared: the spec's default (PT along images, α_rec = α_pt = 10), no pull-away term
(α_pt = 0), the fork's "features" setting (PT along features, α_rec = 15, α_pt = 5), and the first two with
``centre_biases=True``.

    python benchmarks/bench_xnn.py --threads 1          # 10 seeds, about 8 minutes on one core
    python benchmarks/bench_xnn.py --threads 1 --pool avg --negatives part,part+distractor --seeds 5  # control
    python benchmarks/bench_xnn.py --threads 1 --seeds 3 --igos-images 32   # adds I-GOS heatmaps (slow)
    python benchmarks/bench_xnn.py --quick              # smoke run, one seed, tiny sizes
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai.data import TwoPartDataset, part_split_rate
from lightning_xai.data.parts import DEFAULT_NEGATIVES, NEGATIVE_KINDS, points_at_parts
from lightning_xai.models import small_cnn
from lightning_xai.modules import XNN, ImageClassifier

# (name, column title, pt_mode, α_rec, α_pt, centre_biases): the spec's default, no pull-away term, the fork's
# "features" setting, and the first two with the encoder biases centred before pretraining
VARIANTS = (
    ("pt", "default (images, α_pt 10)", "images", 10.0, 10.0, False),
    ("no_pt", "α_pt = 0", "images", 10.0, 0.0, False),
    ("pt_features", "features, α_rec 15, α_pt 5", "features", 15.0, 5.0, False),
    ("centred", "default + `centre_biases`", "images", 10.0, 10.0, True),
    ("centred_no_pt", "α_pt = 0 + `centre_biases`", "images", 10.0, 0.0, True),
)

TRAINER = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: one seed, tiny sizes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--pool", choices=("max", "avg"), default="max", help="the tiny CNN's global pooling before its head"
    )
    parser.add_argument(
        "--negatives",
        default=",".join(DEFAULT_NEGATIVES),
        help=f"comma-separated kinds of negative image (of {', '.join(NEGATIVE_KINDS)})",
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=768)
    parser.add_argument("--test-size", type=int, default=256)
    parser.add_argument("--backbone-epochs", type=int, default=20)
    parser.add_argument("--backbone-lr", type=float, default=3e-3)
    parser.add_argument("--xnn-epochs", type=int, default=15)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument(
        "--igos-images", type=int, default=0, help="also measure the split with I-GOS heatmaps on N images"
    )
    parser.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.train_size, args.test_size = 1, 96, 64
        args.backbone_epochs, args.xnn_epochs, args.pretrain_epochs = 2, 2, 1
    return args


def stack(dataset: TwoPartDataset) -> dict[str, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return {k: torch.stack([item[k] for item in items]) for k in ("image", "label", "part_masks")}


class EpochTimer(L.Callback):
    """Times each training epoch and, right after it, one forward epoch of the frozen backbone over the same
    loader; also the pretraining in ``on_train_start``."""

    def __init__(self) -> None:
        self.xnn: list[float] = []
        self.forward: list[float] = []
        self.pretrain = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not self.xnn and not self.pretrain:
            self.pretrain = time.perf_counter() - self._fit_start
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.xnn.append(time.perf_counter() - self._start)
        start = time.perf_counter()
        with torch.no_grad():
            for (images,) in trainer.train_dataloader:
                pl_module.backbone(images)
        self.forward.append(time.perf_counter() - start)


def pointing(maps: torch.Tensor, part_masks: torch.Tensor, tolerance: int) -> tuple[float, float]:
    """Fractions of the (image, active concept) pairs whose heatmap maximum lies on part A, and on part B."""
    points = points_at_parts(maps, part_masks, tolerance).sum((0, 1)).float()
    active = (maps.flatten(2).amax(-1) > 0).sum().clamp_min(1)
    return float(points[0] / active), float(points[1] / active)


def r2(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return float(1 - (prediction - target).pow(2).sum() / (target - target.mean()).pow(2).sum())


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    L.seed_everything(seed, verbose=False)
    data = {"image_size": args.image_size, "negatives": args.negatives.split(","), "seed": seed}
    train = stack(TwoPartDataset(args.train_size, **data))
    test = stack(TwoPartDataset(args.test_size, split="test", **data))
    classifier = ImageClassifier(small_cnn(pool=args.pool), num_classes=2, lr=args.backbone_lr)
    L.Trainer(max_epochs=args.backbone_epochs, **TRAINER).fit(
        classifier, DataLoader(TensorDataset(train["image"], train["label"]), batch_size=32, shuffle=True)
    )
    classifier.eval()
    with torch.no_grad():
        logits = classifier(test["image"])
    result = {"seed": seed, "backbone_accuracy": float((logits.argmax(1) == test["label"]).float().mean())}
    both = test["label"] == 1
    for name, _title, mode, alpha_rec, alpha_pt, centre in VARIANTS:
        L.seed_everything(seed, verbose=False)
        module = XNN(
            classifier.model,
            num_concepts=5,
            target_class=1,
            pt_mode=mode,
            alpha_rec=alpha_rec,
            alpha_pt=alpha_pt,
            pretrain_epochs=args.pretrain_epochs,
            centre_biases=centre,
            heatmap_layer="7",
        )
        timer = EpochTimer()
        loader = DataLoader(TensorDataset(train["image"]), batch_size=args.batch_size, shuffle=True)
        L.Trainer(max_epochs=args.xnn_epochs, callbacks=[timer], **TRAINER).fit(module, loader)
        module.eval()
        prediction = module(test["image"])
        concepts = module.concepts(test["image"])
        maps = module.concept_heatmaps(test["image"][both])
        split, chance = part_split_rate(maps, test["part_masks"][both], tolerance=1)
        on_a, on_b = pointing(maps, test["part_masks"][both], tolerance=1)
        xnn_epoch, forward_epoch = statistics.median(timer.xnn), statistics.median(timer.forward)
        result[name] = {
            "r2": r2(prediction, logits[:, 1:2]),
            "split_rate": float(split.mean()),
            "chance": float(chance.mean()),
            "points_at_a": on_a,
            "points_at_b": on_b,
            "above_chance": float(split.mean() > chance.mean() + 0.1),
            "active_concepts": float((concepts > 0).float().sum(1).mean()),
            "dead_concepts": float((concepts <= 0).all(0).float().sum()),
            "mean_contribution": [round(v, 3) for v in module.mean_contribution[0].tolist()],
            "xnn_epoch_s": xnn_epoch,
            "forward_epoch_s": forward_epoch,
            "epoch_ratio": xnn_epoch / forward_epoch,
            "pretrain_in_forward_epochs": timer.pretrain / forward_epoch,
        }
        if args.igos_images:
            images = test["image"][both][: args.igos_images]
            maps = module.concept_heatmaps(images, method="igos")
            split, chance = part_split_rate(maps, test["part_masks"][both][: len(images)], tolerance=1)
            result[name]["igos_split_rate"] = float(split.mean())
            result[name]["igos_chance"] = float(chance.mean())
    return result


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    results = []
    for seed in range(args.seeds):
        start = time.perf_counter()
        results.append(run_seed(seed, args))
        print(f"seed {seed}: {json.dumps(results[-1])} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}"
    )
    print(
        f"settings: {args.image_size} px, negatives {args.negatives}, {args.train_size} train / "
        f"{args.test_size} held-out images, tiny CNN ({args.pool} pooling) "
        f"{args.backbone_epochs} epochs at lr {args.backbone_lr}, XNN k=5 hidden 800/100, {args.pretrain_epochs} pretraining epochs per "
        f"stage, {args.xnn_epochs} epochs, batch {args.batch_size}, seeds {args.seeds}\n"
    )
    accuracies = [r["backbone_accuracy"] for r in results]
    print(f"backbone held-out accuracy: {mean_std(accuracies)} (min {min(accuracies):.3f})")
    weak = [r["seed"] for r in results if r["backbone_accuracy"] < 0.9]
    if weak:
        print(f"WARNING: backbones below 0.9 held-out accuracy in seeds {weak}: their rows are not evidence")
    print()
    print(f"| | {' | '.join(title for _, title, *_ in VARIANTS)} |")
    print(f"|---|{'---|' * len(VARIANTS)}")
    rows = [
        ("XNN epoch / backbone forward epoch", "epoch_ratio"),
        ("pretraining, in backbone forward epochs", "pretrain_in_forward_epochs"),
        ("faithfulness R² (held-out)", "r2"),
        ("part-split rate (both parts, pointing, tol 1 px)", "split_rate"),
        ("chance level of the split rate", "chance"),
        ("active concepts pointing at part A", "points_at_a"),
        ("active concepts pointing at part B", "points_at_b"),
        ("active concepts per image (of 5)", "active_concepts"),
        ("concepts inactive on every held-out image", "dead_concepts"),
        ("seeds with split rate > chance + 0.1", "above_chance"),
    ]
    if args.igos_images:
        rows += [
            (f"part-split rate, I-GOS heatmaps ({args.igos_images} images)", "igos_split_rate"),
            ("chance level, I-GOS heatmaps", "igos_chance"),
        ]
    for label, key in rows:
        if key == "above_chance":
            cells = [f"{sum(r[name][key] for r in results):.0f} / {len(results)}" for name, *_ in VARIANTS]
        else:
            cells = [mean_std([r[name][key] for r in results]) for name, *_ in VARIANTS]
        print(f"| {label} | {' | '.join(cells)} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
