"""Every YAML config under examples/configs runs with `lightning-xai fit` (a few steps on tiny images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_xai.cli import main

CONFIGS = sorted((Path(__file__).parents[2] / "examples" / "configs").glob("*.yaml"))
SMOKE = [
    "--data.init_args.image_size=24",
    "--data.init_args.train_size=16",
    "--data.init_args.val_size=8",
    "--data.init_args.test_size=8",
    "--data.init_args.batch_size=8",
    "--trainer.max_epochs=1",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def test_there_are_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_fits(config, tmp_path):
    args = ["fit", "--config", str(config), *SMOKE, f"--trainer.default_root_dir={tmp_path}"]
    args.append("--trainer.logger=lightning.pytorch.loggers.CSVLogger")
    args.append(f"--trainer.logger.save_dir={tmp_path}")
    assert main(args) == 0
    log_dir = tmp_path / "lightning_logs" / "version_0"
    header = (log_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert any(name.startswith("xai/") for name in header)  # every config logs explanation metrics
    assert list(log_dir.glob("checkpoints/*.ckpt"))
