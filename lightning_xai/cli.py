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
        help="train on synthetic shapes, explain with Grad-CAM, write overlays and metrics",
        description=(
            "Train a small timm ResNet on the synthetic shapes data (CPU), explain its test predictions with "
            "Grad-CAM, and write overlays.png and metrics.json (accuracy and the fraction of Grad-CAM maxima "
            "on the object) to --out."
        ),
    )
    defaults = DemoConfig()
    for field in fields(DemoConfig):
        if field.name == "progress":
            continue
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(getattr(defaults, field.name)),
            default=None,
            help=f"(default: {getattr(defaults, field.name)})",
        )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (for CI)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-xai",
        description="Explainable AI for PyTorch Lightning: explanation methods, metrics and reports.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _demo_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    # Lightning's start-up banners and a deprecation notice raised inside Lightning itself are noise here.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    if args.command == "demo":
        overrides = {
            f.name: getattr(args, f.name)
            for f in fields(DemoConfig)
            if getattr(args, f.name, None) is not None
        }
        overrides["progress"] = not args.no_progress
        config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
        try:
            metrics = run_demo(config)
        except ValueError as error:
            parser.error(str(error))
        print(json.dumps({k: v for k, v in metrics.items() if k != "config"}, indent=2))
        print(f"wrote {config.out}/overlays.png and {config.out}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
