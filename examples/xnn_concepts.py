"""Explain a frozen classifier's score with a few concepts (XNN), and draw where each concept looks.

A tiny CNN learns a class defined by two parts (``TwoPartDataset``: a red circle *and* a blue square must both be
present; a part shown twice is a negative). Its global max pooling lets its features mark each part's presence
(a mean-pooling CNN cannot learn this class). It is then frozen, and an ``XNN`` embeds its penultimate features
into k = 5 non-negative concepts that still reproduce the class logit; ``centre_biases`` starts every concept
active on half the data, so fewer of them die. ``fit_xnn`` retrains (with a larger reconstruction and a smaller
pull-away weight) when one concept carries the whole prediction. The script prints how often one concept points
at the circle and another at the square (``part_split_rate``) and draws, for a few held-out images, each
concept's Grad-CAM heatmap titled with its contribution h·w, and the prediction they add up to.

    python examples/xnn_concepts.py --out xnn_example          # about a minute on 2 CPU cores
    python examples/xnn_concepts.py --out /tmp/xnn --smoke     # a few steps, for CI
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai.data import TwoPartDataset, part_split_rate
from lightning_xai.models import small_cnn
from lightning_xai.modules import XNN, ImageClassifier, fit_xnn
from lightning_xai.viz import plot_concepts

TRAINER = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("xnn_example"), help="folder for the figure")
    parser.add_argument("--smoke", action="store_true", help="a few training steps on tiny data (CI)")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def stack(dataset: TwoPartDataset) -> dict[str, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return {k: torch.stack([item[k] for item in items]) for k in ("image", "label", "part_masks")}


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    n_train, n_test = (64, 16) if args.smoke else (768, 256)
    backbone_epochs, xnn_epochs, pretrain, attempts = (1, 1, 1, 1) if args.smoke else (10, 15, 10, 3)
    train = stack(TwoPartDataset(n_train, image_size=32, seed=args.seed))
    test = stack(TwoPartDataset(n_test, image_size=32, split="test", seed=args.seed))

    # --- a classifier, trained as usual, then frozen by the XNN ------------------------------------------------
    classifier = ImageClassifier(small_cnn(pool="max"), num_classes=2, lr=1e-2)
    L.Trainer(max_epochs=backbone_epochs, enable_progress_bar=False, **TRAINER).fit(
        classifier, DataLoader(TensorDataset(train["image"], train["label"]), batch_size=32, shuffle=True)
    )
    classifier.eval()

    # --- the explanation network: k = 5 concepts of the "both parts" logit ------------------------------------
    def make_xnn(alpha_rec: float, alpha_pt: float) -> XNN:
        return XNN(
            classifier.model,
            num_concepts=5,
            target_class=1,
            alpha_rec=alpha_rec,
            alpha_pt=alpha_pt,
            pretrain_epochs=pretrain,
            centre_biases=True,
            heatmap_layer="7",  # the last conv layer's ReLU
        )

    def make_trainer() -> L.Trainer:
        return L.Trainer(max_epochs=xnn_epochs, enable_progress_bar=False, **TRAINER)

    loader = DataLoader(TensorDataset(train["image"]), batch_size=50, shuffle=True)
    xnn, attempts_log = fit_xnn(make_xnn, make_trainer, train_dataloaders=loader, max_attempts=attempts)
    xnn.eval()
    for entry in attempts_log:
        print(
            f"attempt {entry['attempt']}: α_rec={entry['alpha_rec']:.1f} α_pt={entry['alpha_pt']:.1f} "
            f"mean contributions {[round(v, 2) for v in entry['mean_contribution'][0].tolist()]} "
            f"{'balanced' if entry['passed'] else 'one concept dominates'}"
        )

    # --- explanations: contributions, concept heatmaps and the figure -----------------------------------------
    with torch.no_grad():
        score = classifier(test["image"])[:, 1]
        prediction = xnn(test["image"])
    r2 = 1 - (prediction[:, 0] - score).pow(2).sum() / (score - score.mean()).pow(2).sum()
    print(f"faithfulness R² on {n_test} held-out images: {float(r2):.3f}")
    both = test["label"] == 1
    if bool(both.any()):
        split, chance = part_split_rate(xnn.concept_heatmaps(test["image"][both]), test["part_masks"][both])
        print(
            f"one concept on the circle and another on the square in {float(split.mean()):.0%} of "
            f"{int(both.sum())} held-out images with both parts (chance {float(chance.mean()):.0%})"
        )
    shown = torch.nonzero(both)[:4, 0]
    if shown.numel() == 0:
        shown = torch.arange(min(4, n_test))
    images = test["image"][shown]
    contributions, y_hat = xnn.contributions(images)
    heatmaps = xnn.concept_heatmaps(images)
    path = args.out / "xnn_concepts.png"
    plot_concepts(
        images,
        heatmaps,
        contributions,
        y_hat,
        bias=xnn.network.head.bias.detach(),
        order=xnn.concept_order(),
        target_score=score[shown],
        titles=["both parts" if int(test["label"][i]) else "not both" for i in shown],
        path=path,
    )
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
