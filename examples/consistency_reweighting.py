"""Add explanation-consistency reweighting to a Trainer script you already have.

The module is the library's plain ``ImageClassifier`` (``small_resnet``, with ``self.criterion =
nn.CrossEntropyLoss()``), left exactly as it is; the data are synthetic shapes whose background tint agrees with
the label for 95 % of the training images (a shortcut). The only change to the training script is the
``ExplanationConsistencyReweighting`` callback: from the warm-up on, samples whose Grad-CAM changes when only
their background is attacked weigh more in the loss. The script prints the accuracy on the bias-conflicting test
split and the mean explanation consistency, and writes the final weight table (index, label, v = 1 - E, weight)
as a CSV file.

    python examples/consistency_reweighting.py --out ece_example          # 32 px, a few minutes on 2 CPU cores
    python examples/consistency_reweighting.py --out /tmp/ece --smoke     # a few steps at 16 px, for CI
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_xai.callbacks import ExplanationConsistencyReweighting
from lightning_xai.data import ShapesDataModule
from lightning_xai.metrics.functional import score_consistency
from lightning_xai.modules import ImageClassifier


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path("ece_example"), help="folder for the weight table CSV"
    )
    parser.add_argument("--smoke", action="store_true", help="a few training steps on tiny images (CI)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    if args.smoke:
        data = ShapesDataModule(
            batch_size=8, image_size=16, train_size=16, val_size=8, test_size=8, bias=0.95, seed=args.seed
        )
        limits, schedule = {"max_epochs": 2, "limit_val_batches": 1}, {"warmup_epochs": 1, "refresh_every": 1}
    else:
        data = ShapesDataModule(
            batch_size=64,
            image_size=32,
            train_size=768,
            val_size=256,
            test_size=256,
            bias=0.95,
            seed=args.seed,
        )
        limits, schedule = {"max_epochs": args.epochs}, {"warmup_epochs": 2, "refresh_every": 2}
    # The training images are not augmented, so the scoring pass can read the training set as it is.
    score_loader = DataLoader(data.datasets["train"], batch_size=data.batch_size)

    # --- the user's existing script: an unmodified LightningModule and Trainer --------------------------
    module = ImageClassifier("small_resnet", num_classes=data.num_classes, lr=3e-3)
    reweighting = ExplanationConsistencyReweighting(score_dataloader=score_loader, **schedule)
    trainer = L.Trainer(
        **limits,
        callbacks=[reweighting],  # the one added line
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=not args.smoke,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, data)

    # --- what came out ----------------------------------------------------------------------------------
    model = module.model.eval()
    correct, scores = 0, []
    for batch in data.test_dataloader():  # bias-conflicting: the background tint never matches the label
        with torch.no_grad():
            correct += int((model(batch["image"]).argmax(1) == batch["label"]).sum())
        scores.append(score_consistency(model, batch["image"], batch["label"]).consistency)
    n_test = len(data.datasets["test"])
    print(f"bias-conflicting accuracy: {correct / n_test:.3f} on {n_test} test images")
    print(f"mean explanation consistency on the test split: {float(torch.cat(scores).mean()):.3f}")
    print(
        f"{reweighting.n_refreshes} refresh(es); weights min {float(reweighting.weights.min()):.2f}, median "
        f"{float(reweighting.weights.median()):.2f}, max {float(reweighting.weights.max()):.2f}"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "ece_weights.csv"
    labels = [int(data.datasets["train"][i]["label"]) for i in range(len(data.datasets["train"]))]
    lines = ["index,label,inconsistency,weight"]
    for i, (v, w) in enumerate(zip(reweighting.v.tolist(), reweighting.weights.tolist(), strict=True)):
        lines.append(f"{i},{labels[i]},{v:.6f},{w:.6f}")
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
