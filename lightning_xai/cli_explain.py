"""``lightning-xai explain``: explain a data set with a trained model, through Lightning's predict loop."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ArgumentParser
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .attr.registry import METHOD_NAMES
from .callbacks.folder_lock import FolderLock, OutputFolderBusyError
from .callbacks.writer import ExplanationWriter
from .data import ShapesDataset
from .data.folder import ImageFolderDataset
from .heads import load_mhex_checkpoint
from .models import build_model
from .modules.explainer import SAMPLE_METRICS, Explainer


def build_explain_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="lightning-xai explain",
        description=(
            "Explain every image of a folder (or of the synthetic shapes data) with a trained checkpoint or a "
            "timm model, and write heatmaps/, maps/, records/ and metrics.json to --out. It runs in Lightning's "
            "predict loop: --trainer.devices N --trainer.num_nodes M spreads the work, each sample is written "
            "exactly once, and running the same command again resumes an interrupted run: a file whose path, "
            "size and content and whose settings (model, method and its arguments, target, image size, ...) "
            "match a finished record is skipped, new or changed files are explained. A folder written with "
            "other settings is refused unless --overwrite replaces its results. One run at a time writes a "
            "folder: a second run on the same --out is refused with the details of the first (or waits for it "
            "with --wait true); a lock left by a killed run is taken over."
        ),
        default_env=False,
    )
    source = parser.add_argument_group("model")
    source.add_argument(
        "--checkpoint", type=str | None, default=None, help="a Lightning checkpoint to explain"
    )
    source.add_argument(
        "--module_class",
        type=str,
        default="lightning_xai.modules.ImageClassifier",
        help="the LightningModule class of --checkpoint (dotted path)",
    )
    source.add_argument(
        "--model",
        type=str | None,
        default=None,
        help="without --checkpoint: 'small_resnet' or a timm model name (random weights)",
    )
    source.add_argument("--num_classes", type=int, default=4, help="classes of --model")
    data = parser.add_argument_group("data")
    data.add_argument("--images", type=str | None, default=None, help="a folder of images (default: shapes)")
    data.add_argument(
        "--follow_links",
        type=bool,
        default=False,
        help="read the files and folders that symbolic links in --images lead to outside it (default: such "
        "links are skipped and listed as unreadable; links inside --images are read once, under the real name)",
    )
    data.add_argument("--image_size", type=int, default=48, help="images are resized to this side")
    data.add_argument("--mean", type=list[float] | None, default=None, help="per-channel mean to normalise")
    data.add_argument("--std", type=list[float] | None, default=None, help="per-channel std to normalise")
    data.add_argument("--num_samples", type=int, default=64, help="synthetic images when no --images")
    data.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic images and of --model's weights"
    )
    data.add_argument("--batch_size", type=int, default=16)
    method = parser.add_argument_group("method")
    method.add_argument(
        "--method", type=str, default="gradcam", help=f"{sorted(METHOD_NAMES)} or a dotted class path"
    )
    method.add_argument("--method_args", type=dict[str, Any], default={}, help="constructor arguments")
    method.add_argument("--attribute_args", type=dict[str, Any], default={}, help="`attribute` arguments")
    method.add_argument("--layer", type=str, default="auto", help="layer of layer methods")
    method.add_argument("--target", type=str, default="prediction", help="'prediction' or 'label'")
    method.add_argument(
        "--metrics", type=list[str], default=["deletion", "insertion"], help=f"of {sorted(SAMPLE_METRICS)}"
    )
    parser.add_argument("--out", type=str, default="explain-out", help="output folder")
    parser.add_argument(
        "--overwrite",
        type=bool,
        default=False,
        help="replace the results of --out when they were made with other settings",
    )
    parser.add_argument(
        "--wait",
        type=bool,
        default=False,
        help="when another run is writing --out (it holds --out/explain.lock), wait for it to end instead of "
        "refusing; then resume: what it finished is not explained again",
    )
    parser.add_argument(
        "--wait_timeout",
        type=float | None,
        default=None,
        help="with --wait true: give up (and refuse) after this many seconds (default: no limit)",
    )
    parser.add_class_arguments(L.Trainer, "trainer", skip={"callbacks", "logger", "inference_mode"})
    parser.set_defaults({"trainer.enable_model_summary": False, "trainer.accelerator": "auto"})
    return parser


def _module_class(path: str) -> type[L.LightningModule]:
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import --module_class {path!r}: {error}") from error
    if not (isinstance(cls, type) and issubclass(cls, L.LightningModule)):
        raise ValueError(f"--module_class {path!r} is not a LightningModule")
    return cls


def load_model(checkpoint: str | None, module_class: str, model: str | None, num_classes: int) -> nn.Module:
    """The classifier to explain: a checkpoint's module (its ``.model`` when it wraps one) or a built model."""
    if (checkpoint is None) == (model is None):
        raise ValueError("give exactly one of --checkpoint and --model")
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
        # heads a MultiHeadExplainer trained (recorded in the checkpoint) are attached before the weights load
        module = load_mhex_checkpoint(_module_class(module_class), checkpoint, map_location="cpu")
        return module.eval()
    return build_model(model, num_classes).eval()


def build_dataset(
    images: str | None, image_size: int, mean, std, num_samples: int, seed: int, follow_links: bool = False
) -> Dataset:
    if images is not None:
        return ImageFolderDataset(
            images, image_size=image_size, mean=mean, std=std, follow_links=follow_links
        )
    return ShapesDataset(num_samples=num_samples, image_size=image_size, seed=seed, split="test")


def _file_identity(path: Path, root: Path) -> dict[str, Any]:
    """A file's relative path, size and content hash: what makes its explanation still valid."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {
        "name": path.relative_to(root).as_posix(),
        "size": path.stat().st_size,
        "sha256": digest.hexdigest(),
    }


def sample_identities(dataset: Dataset) -> list[dict[str, Any]]:
    """What identifies each sample of ``dataset`` across runs: a file's identity, or a synthetic index."""
    if isinstance(dataset, ImageFolderDataset):
        return [_file_identity(path, dataset.root) for path in dataset.files]
    return [{"index": i} for i in range(len(dataset))]


def run_settings(args: Any) -> dict[str, Any]:
    """Everything besides the sample that the outputs depend on, as recorded in ``--out``'s ``run.json``."""
    if args.checkpoint is not None:
        checkpoint = Path(args.checkpoint).resolve()
        stat = checkpoint.stat()
        model = {"checkpoint": str(checkpoint), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        model["module_class"] = args.module_class
    else:
        model = {"model": args.model, "num_classes": args.num_classes, "seed": args.seed}
    data = {"image_size": args.image_size, "mean": args.mean, "std": args.std}
    if args.images is None:
        data.update(images="shapes", seed=args.seed)
    return {
        "model": model,
        "data": data,
        "method_args": args.method_args,
        "attribute_args": args.attribute_args,
        "layer": args.layer,
        "target": args.target,
        "metrics": list(args.metrics),
        "precision": str(args.trainer.precision),
    }


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch = torch.utils.data.default_collate([{k: v for k, v in i.items() if k != "name"} for i in items])
    if "name" in items[0]:
        batch["name"] = [i["name"] for i in items]
    return batch


def run_explain(argv: Sequence[str]) -> int:
    parser = build_explain_parser()
    args = parser.parse_args(list(argv))
    if args.wait_timeout is not None and not (args.wait and 0 < args.wait_timeout < math.inf):
        parser.error(
            f"--wait_timeout takes a positive number of seconds, with --wait true; got {args.wait_timeout} "
            f"with --wait {str(args.wait).lower()}"
        )
    torch.manual_seed(
        args.seed
    )  # a --model built with random weights is the same network on every rank and run
    try:
        model = load_model(args.checkpoint, args.module_class, args.model, args.num_classes)
        dataset = build_dataset(
            args.images, args.image_size, args.mean, args.std, args.num_samples, args.seed, args.follow_links
        )
        explainer = Explainer(
            model,
            method=args.method,
            method_args=args.method_args,
            attribute_args=args.attribute_args,
            layer=args.layer,
            target=args.target,
            metrics=args.metrics,
        )
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as error:
        parser.error(str(error))
    unreadable = list(getattr(dataset, "unreadable", ()))
    for name, reason in unreadable:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    writer = ExplanationWriter(
        args.out,
        method=args.method,
        unreadable=unreadable,
        identities=sample_identities(dataset),
        settings=run_settings(args),
        overwrite=args.overwrite,
    )
    # held by the launching process (global rank zero) from the settings check to metrics.json; the processes a
    # distributed launch starts belong to its run and do not lock
    lock = FolderLock(args.out, command=shlex.join(["lightning-xai", "explain", *argv]))
    try:
        lock.acquire(wait=args.wait, timeout=args.wait_timeout)
    except OutputFolderBusyError as error:
        parser.error(str(error))
    try:
        try:
            pending = writer.pending(len(dataset))
        except ValueError as error:
            parser.error(str(error))
        trainer_args = {k: v for k, v in vars(args.trainer).items()}
        trainer = L.Trainer(**trainer_args, callbacks=[writer], logger=False, inference_mode=False)
        if pending:
            loader = DataLoader(Subset(dataset, pending), batch_size=args.batch_size, collate_fn=_collate)
            trainer.predict(explainer, loader, return_predictions=False)
        if trainer.is_global_zero:
            summary = writer.summarise()
            done = len(dataset) - len(pending)
            print(
                json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2)
                + f"\n{len(pending)} explained now, {done} already done, {len(unreadable)} unreadable skipped; "
                f"wrote {args.out}/metrics.json"
            )
            blank = [r["name"] or str(r["index"]) for r in summary["samples"] if None in r["scores"].values()]
            if blank:
                shown = ", ".join(blank[:10]) + (f" and {len(blank) - 10} more" if len(blank) > 10 else "")
                print(
                    f"{len(blank)} explanation(s) are constant maps that carry no information and were not "
                    f"scored (null in their records): {shown}",
                    file=sys.stderr,
                )
    finally:
        lock.release()
    return 0
