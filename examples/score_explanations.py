"""Score explanations with lightning_xai's metrics: Grad-CAM against a random map on synthetic shapes.

Trains a small ResNet on the synthetic shapes data, explains the test images with Grad-CAM and with a random
map, scores both with a MetricCollection (pointing game, energy pointing game, deletion and insertion AUC,
sparseness), and writes ``scores.json`` and ``deletion_curves.png`` to ``--out``.

    python examples/score_explanations.py --out score-out
    python examples/score_explanations.py --smoke --out /tmp/score-out   # a few seconds, for CI
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torchmetrics import MetricCollection

from lightning_xai.data import ShapesDataModule
from lightning_xai.explain import grad_cam
from lightning_xai.metrics import (
    DeletionAUC,
    EnergyPointingGame,
    InsertionAUC,
    PointingGame,
    Sparseness,
)
from lightning_xai.modules import ImageClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="score-out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny data and one epoch")
    args = parser.parse_args()
    size, train_size, test_size, epochs = (24, 64, 16, 1) if args.smoke else (32, 1536, 128, args.epochs)

    L.seed_everything(0, verbose=False)
    data = ShapesDataModule(
        batch_size=64, image_size=size, train_size=train_size, val_size=32, test_size=test_size
    )
    module = ImageClassifier("small_resnet", num_classes=data.num_classes)
    L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
    ).fit(module, datamodule=data)
    model = module.model.eval()

    # One collection per call signature: (maps, masks), (maps,) and (images, maps, target).
    def collections() -> dict[str, MetricCollection]:
        blur = {"resolution": 8, "blur_kernel": 11, "blur_sigma": 5.0}
        return {
            "localisation": MetricCollection(
                {"pointing_game": PointingGame(tolerance=2), "energy_pointing_game": EnergyPointingGame()}
            ),
            "complexity": MetricCollection({"sparseness": Sparseness()}),
            "faithfulness": MetricCollection(
                {
                    "deletion": DeletionAUC(model, return_curves=True, **blur),
                    "insertion": InsertionAUC(model, **blur),
                }
            ),
        }

    scores = {"grad_cam": collections(), "random": collections()}
    generator = torch.Generator().manual_seed(0)
    for batch in data.test_dataloader():
        images, labels, masks = batch["image"], batch["label"], batch["mask"]
        maps = {
            "grad_cam": grad_cam(model, images, labels, upsample=True),
            "random": torch.rand(images.shape[0], 1, size, size, generator=generator),
        }
        for name, groups in scores.items():
            groups["localisation"].update(maps[name], masks)
            groups["complexity"].update(maps[name])
            groups["faithfulness"].update(images, maps[name], target=labels)

    results, curves = {}, {}
    for name, groups in scores.items():
        values = {key: value for group in groups.values() for key, value in group.compute().items()}
        # a metric that returns a dict (deletion with return_curves) is flattened into the collection's dict
        curves[name] = values.pop("curves").mean(0)
        values["deletion"] = values.pop("auc")
        results[name] = {key: round(float(value), 4) for key, value in values.items()}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps(results, indent=2))
    fig, ax = plt.subplots(figsize=(4, 3))
    for name, curve in curves.items():
        ax.plot(
            torch.linspace(0, 1, len(curve)), curve, label=f"{name} (AUC {results[name]['deletion']:.3f})"
        )
    ax.set(xlabel="fraction of cells deleted", ylabel="target probability", title="Deletion curves")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "deletion_curves.png", dpi=100)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
