"""Write the explanations of Lightning's predict loop to disk: each sample exactly once, resumable."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from ..viz.overlay import overlay
from .folder_lock import launch_rank, pid_alive


class ExplanationWriter(BasePredictionWriter):
    """Write what :class:`~lightning_xai.modules.Explainer` returns, one set of files per sample:

    - ``heatmaps/<key>.png``: the heatmap over the image;
    - ``maps/<key>.npy``: the raw (H, W) map (float32);
    - ``records/<key>.json``: prediction, confidence, explained class, label, file name, per-sample scores, the
      sample's ``identity`` and the run's ``settings`` fingerprint; written last, so a record marks a finished
      sample;
    - ``run.json``: the settings of the run that wrote the folder;
    - ``manifest-rank<r>.txt``: the indices each process wrote, in order;
    - ``metrics.json`` (global rank zero, at the end): the mean of every score over the samples it scored (a
      constant map's score is ``null``, counted in ``n_skipped``) and the record of every sample
      of the data set (each once), and the files that could not be read (``unreadable``).

    ``<key>`` is the zero-padded index, or, when ``identities`` give a sample's ``name`` (a file's relative
    path), that name made safe plus a short hash of it: the key of a file never changes when other files are
    added or removed.

    Every file is written under a temporary name of its own (host, process id and a random part) and moved into
    place (``os.replace``, see :func:`atomic_write`), so a run killed at any moment leaves only complete files
    behind; ``setup`` removes the temporaries of processes of this host that are gone, never those of a process
    still running.

    Two runs must not write one folder at the same time: hold a :class:`~lightning_xai.callbacks.folder_lock.FolderLock` on ``out_dir`` around
    ``pending``, ``trainer.predict`` and ``summarise`` (``lightning-xai explain`` does).

    Resuming: a sample is done when its record exists and holds the same ``identity`` (``identities[i]``, e.g.
    a file's path, size and content hash; the index when None) and the same ``settings`` fingerprint; only the
    others are explained again (:meth:`pending`), and the duplicates some distributed samplers add are dropped
    by index. Settings that differ from those in ``run.json`` are refused with a message that names them
    (:meth:`prepare`), unless ``overwrite=True``, which first deletes the folder's earlier results.

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
        identities: Sequence[Mapping[str, Any]] | None = None,
        settings: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.method = method
        self.save_maps = save_maps
        #: (file name, reason) of the inputs that could not be read; listed in ``metrics.json``.
        self.unreadable = list(unreadable)
        #: What identifies sample ``i`` (JSON values); None: its index.
        self.identities = None if identities is None else [dict(i) for i in identities]
        #: What the outputs depend on besides the sample (model, method, target, ...), recorded in ``run.json``.
        self.settings = _canonical({"method": method, **dict(settings or {})})
        self.fingerprint = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]
        self.overwrite = overwrite
        self.written: list[int] = []
        self.skipped: list[int] = []

    def identity(self, index: int) -> dict[str, Any]:
        return {"index": index} if self.identities is None else self.identities[index]

    def stem(self, index: int) -> str:
        name = self.identity(index).get("name")
        if name is None:
            return f"{index:06d}"
        digest = hashlib.sha1(str(name).encode()).hexdigest()[:8]
        return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', str(name))[-80:]}-{digest}"

    def record_path(self, index: int) -> Path:
        return self.out_dir / "records" / f"{self.stem(index)}.json"

    def _record(self, index: int) -> dict[str, Any] | None:
        """Sample ``index``'s record when it is finished for this identity and these settings, else None."""
        try:
            record = json.loads(self.record_path(index).read_text())
        except (OSError, ValueError):
            return None
        same = record.get("identity") == self.identity(index) and record.get("settings") == self.fingerprint
        return record if same else None

    def prepare(self) -> None:
        """Check the folder's ``run.json`` against these settings (raise ValueError naming what differs), or,
        with ``overwrite``, delete the folder's earlier results; then record the settings. Called by
        :meth:`pending` and ``setup``; only process zero deletes and writes."""
        run_file = self.out_dir / "run.json"
        stored = json.loads(run_file.read_text()) if run_file.exists() else None
        earlier = stored is not None or any(
            (self.out_dir / d).is_dir() and any((self.out_dir / d).iterdir()) for d in _OUTPUTS
        )
        if earlier and stored != self.settings and not self.overwrite:
            if stored is None:
                what = "results without a run.json (written by an older version), which cannot be matched"
            else:
                there, now = _flat(stored), _flat(self.settings)
                differ = [
                    f"{k}: {_show(there.get(k))} there, {_show(now.get(k))} now"
                    for k in sorted(set(there) | set(now))
                    if there.get(k) != now.get(k)
                ]
                what = "results made with different settings (" + "; ".join(differ) + ")"
            raise ValueError(
                f"the output folder {str(self.out_dir)!r} already holds {what}; use a new output folder, or "
                "--overwrite (overwrite=True) to replace its results"
            )
        if launch_rank() != 0:
            return
        if self.overwrite and earlier and not getattr(self, "_cleared", False):
            for folder in _OUTPUTS:
                shutil.rmtree(self.out_dir / folder, ignore_errors=True)
            for path in [*self.out_dir.glob("manifest-rank*.txt"), self.out_dir / "metrics.json"]:
                path.unlink(missing_ok=True)
        self._cleared = True
        if stored != self.settings or self.overwrite:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.settings, indent=1, sort_keys=True)
            atomic_write(run_file, lambda handle: handle.write(text.encode()))

    def pending(self, num_samples: int) -> list[int]:
        """The indices in ``range(num_samples)`` without a finished record for their identity and settings."""
        self.prepare()
        return [i for i in range(num_samples) if self._record(i) is None]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.prepare()
        for folder in ("", *_OUTPUTS):
            (self.out_dir / folder).mkdir(parents=True, exist_ok=True)
            for path in (self.out_dir / folder).glob("*.tmp*"):
                if _stale_temporary(path.name):
                    path.unlink(missing_ok=True)  # left by a process killed while writing

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
            if index in self.written or self._record(index) is not None:
                self.skipped.append(index)
                continue
            stem = self.stem(index)
            image, heat = prediction["inputs"][row], prediction["maps"][row]
            array = (overlay(image, heat) * 255).round().clip(0, 255).astype(np.uint8)
            atomic_write(
                self.out_dir / "heatmaps" / f"{stem}.png",
                lambda handle, array=array: Image.fromarray(array).save(handle, format="PNG"),
            )
            if self.save_maps:
                values = heat.float().numpy()
                atomic_write(
                    self.out_dir / "maps" / f"{stem}.npy", lambda handle, v=values: np.save(handle, v)
                )
            record = {
                "index": index,
                "name": None if prediction.get("name") is None else str(prediction["name"][row]),
                "identity": self.identity(index),
                "settings": self.fingerprint,
                "method": self.method,
                "prediction": int(prediction["prediction"][row]),
                "confidence": float(prediction["confidence"][row]),
                "target": int(prediction["target"][row]),
                "label": None if prediction.get("label") is None else int(prediction["label"][row]),
                # a constant map is not scored (NaN): null in the JSON, counted in the summary's `n_skipped`
                "scores": {k: _finite_or_none(float(v[row])) for k, v in prediction["scores"].items()},
                "heatmap": f"heatmaps/{stem}.png",
                "map": f"maps/{stem}.npy" if self.save_maps else None,
            }
            text = json.dumps(record)
            atomic_write(self.record_path(index), lambda handle, t=text: handle.write(t.encode()))
            self.written.append(index)
            with manifest.open("a") as handle:
                handle.write(f"{index}\n")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            self.summarise()
        trainer.strategy.barrier()

    def summarise(self, num_samples: int | None = None) -> dict[str, Any]:
        """Collect the finished record of every sample into ``metrics.json`` (each sample once, sorted by name
        or index; records of files no longer in the data set are left out) and return its content.

        ``num_samples``: the data set's size; by default the number of ``identities``, or, without them,
        every record in the folder is collected."""
        if num_samples is None and self.identities is not None:
            num_samples = len(self.identities)
        if num_samples is None:
            paths = sorted((self.out_dir / "records").glob("*.json"))
            records = [
                r for r in (json.loads(p.read_text()) for p in paths) if r.get("settings") == self.fingerprint
            ]
        else:
            records = [r for r in map(self._record, range(num_samples)) if r is not None]
        records.sort(key=lambda r: (r["name"] is None, r["name"] or "", r["index"]))
        names = sorted({k for r in records for k in r["scores"]})
        values = {k: [r["scores"][k] for r in records if k in r["scores"]] for k in names}
        scored = {k: [v for v in vs if v is not None] for k, vs in values.items()}
        means = {k: float(np.mean(vs)) if vs else None for k, vs in scored.items()}
        labelled = [r for r in records if r["label"] is not None]
        summary: dict[str, Any] = {
            "method": self.method,
            "num_samples": len(records),
            "means": means,
            "n_skipped": {k: len(values[k]) - len(scored[k]) for k in names},
            "accuracy": float(np.mean([r["prediction"] == r["label"] for r in labelled]))
            if labelled
            else None,
            "samples": records,
        }
        if self.unreadable:
            summary["unreadable"] = [{"name": name, "reason": reason} for name, reason in self.unreadable]
        text = json.dumps(summary, indent=1)
        atomic_write(self.out_dir / "metrics.json", lambda handle: handle.write(text.encode()))
        return summary


#: The folders of per-sample outputs.
_OUTPUTS = ("heatmaps", "maps", "records")


def atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """``write(handle)`` into a temporary file beside ``path``, then move it into place in one step
    (``os.replace``): ``path`` is never seen half-written. The temporary name,
    ``<name>.tmp-<host>-<pid>-<random>``, is this call's alone, so processes writing the same folder never
    share one. When ``write`` fails the temporary file is removed; one left by a killed process is removed by
    the next ``ExplanationWriter.setup`` on its host, once its process is gone."""
    tmp = path.with_name(f"{path.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _canonical(value: Any) -> Any:
    """``value`` as plain JSON (what ``run.json`` holds), so that settings compare equal after a round trip."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _flat(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"data.image_size": 24, ...}``, so that a refusal names the very setting."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value, sort_keys=True)


#: This host's name as it appears in temporary file names (and so in the stale-temporary test).
_HOST = re.sub(r"[^A-Za-z0-9.-]+", "_", socket.gethostname())[:40] or "host"
_TEMPORARY = re.compile(r"\.tmp-(?P<host>[A-Za-z0-9._-]*)-(?P<pid>\d+)-[0-9a-f]{8}$")
#: Temporary names of versions before unique names (issue 32), ``<name>.tmp<rank>``: those versions took no
#: lock and no run of this version writes such a name, so one found is left by a run of an earlier version.
_LEGACY_TEMPORARY = re.compile(r"\.tmp\d+$")


def _stale_temporary(name: str) -> bool:
    """Whether a temporary file name was left by a process that is gone: one of this host whose process id
    no longer runs (one of another host cannot be checked from here, and is left to that host's runs)."""
    match = _TEMPORARY.search(name)
    if match is None:
        return _LEGACY_TEMPORARY.search(name) is not None
    return match["host"] == _HOST and not pid_alive(int(match["pid"]))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
