"""Write the explanations of Lightning's predict loop to disk: each sample exactly once, resumable."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from ..viz.overlay import overlay


class ExplanationWriter(BasePredictionWriter):
    """Write what :class:`~lightning_xai.modules.Explainer` returns, one set of files per sample index:

    - ``heatmaps/<index>.png``: the heatmap over the image;
    - ``maps/<index>.npy``: the raw (H, W) map (float32);
    - ``records/<index>.json``: prediction, confidence, explained class, label, file name, per-sample scores;
      written last, so a record marks a finished sample;
    - ``manifest-rank<r>.txt``: the indices each process wrote, in order;
    - ``metrics.json`` (global rank zero, at the end): the mean of every score and every record, and the files
      that could not be read (``unreadable``).

    Every file is written under a temporary name and moved into place (``os.replace``), so a run killed at any
    moment leaves only complete files behind.

    A sample whose record exists is not written again: the duplicates some distributed samplers add are
    dropped by index, and :meth:`pending` lets a restarted run explain only the samples still missing.

    Example:
        >>> import tempfile
        >>> writer = ExplanationWriter(tempfile.mkdtemp())
        >>> writer.pending(4)
        [0, 1, 2, 3]
    """

    def __init__(
        self,
        out_dir: str | Path,
        method: str = "",
        save_maps: bool = True,
        unreadable: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.method = method
        self.save_maps = save_maps
        #: (file name, reason) of the inputs that could not be read; listed in ``metrics.json``.
        self.unreadable = list(unreadable)
        self.written: list[int] = []
        self.skipped: list[int] = []

    @staticmethod
    def stem(index: int) -> str:
        return f"{index:06d}"

    def record_path(self, index: int) -> Path:
        return self.out_dir / "records" / f"{self.stem(index)}.json"

    def pending(self, num_samples: int) -> list[int]:
        """The indices in ``range(num_samples)`` that have no record yet."""
        return [i for i in range(num_samples) if not self.record_path(i).exists()]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for folder in ("heatmaps", "maps", "records"):
            (self.out_dir / folder).mkdir(parents=True, exist_ok=True)
            for stale in (self.out_dir / folder).glob(f"*.tmp{trainer.global_rank}"):
                stale.unlink()  # left by a run killed while writing

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        rank = trainer.global_rank
        manifest = self.out_dir / f"manifest-rank{rank}.txt"
        for row, index in enumerate(prediction["index"].tolist()):
            if index in self.written or self.record_path(index).exists():
                self.skipped.append(index)
                continue
            stem = self.stem(index)
            image, heat = prediction["inputs"][row], prediction["maps"][row]
            array = (overlay(image, heat) * 255).round().clip(0, 255).astype(np.uint8)
            _atomic_write(
                self.out_dir / "heatmaps" / f"{stem}.png",
                rank,
                lambda handle, array=array: Image.fromarray(array).save(handle, format="PNG"),
            )
            if self.save_maps:
                values = heat.float().numpy()
                _atomic_write(
                    self.out_dir / "maps" / f"{stem}.npy", rank, lambda handle, v=values: np.save(handle, v)
                )
            record = {
                "index": index,
                "name": None if prediction.get("name") is None else str(prediction["name"][row]),
                "method": self.method,
                "prediction": int(prediction["prediction"][row]),
                "confidence": float(prediction["confidence"][row]),
                "target": int(prediction["target"][row]),
                "label": None if prediction.get("label") is None else int(prediction["label"][row]),
                "scores": {k: float(v[row]) for k, v in prediction["scores"].items()},
                "heatmap": f"heatmaps/{stem}.png",
            }
            text = json.dumps(record)
            _atomic_write(self.record_path(index), rank, lambda handle, t=text: handle.write(t.encode()))
            self.written.append(index)
            with manifest.open("a") as handle:
                handle.write(f"{index}\n")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            self.summarise()
        trainer.strategy.barrier()

    def summarise(self) -> dict[str, Any]:
        """Collect every record into ``metrics.json`` and return its content."""
        records = [json.loads(p.read_text()) for p in sorted((self.out_dir / "records").glob("*.json"))]
        names = sorted({k for r in records for k in r["scores"]})
        means = {k: float(np.mean([r["scores"][k] for r in records if k in r["scores"]])) for k in names}
        labelled = [r for r in records if r["label"] is not None]
        summary: dict[str, Any] = {
            "method": self.method,
            "num_samples": len(records),
            "means": means,
            "accuracy": float(np.mean([r["prediction"] == r["label"] for r in labelled]))
            if labelled
            else None,
            "samples": records,
        }
        if self.unreadable:
            summary["unreadable"] = [{"name": name, "reason": reason} for name, reason in self.unreadable]
        text = json.dumps(summary, indent=1)
        _atomic_write(self.out_dir / "metrics.json", 0, lambda handle: handle.write(text.encode()))
        return summary


def _atomic_write(path: Path, rank: int, write: Callable[[Any], Any]) -> None:
    """``write(handle)`` into a temporary file beside ``path``, then move it into place in one step."""
    tmp = path.with_name(f"{path.name}.tmp{rank}")
    with tmp.open("wb") as handle:
        write(handle)
    os.replace(tmp, path)
