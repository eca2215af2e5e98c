"""Log saliency overlays of a fixed set of validation samples while a model trains."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from .._checks import check_positive
from ..data.batch import Batch
from ..viz.overlay import overlay_grid, save_overlay_grid
from ._attribution import AttributionCallback, TargetChoice


class SaliencyMapLogger(AttributionCallback):
    """Every ``every_n_epochs`` validation epochs, explain the same ``num_samples`` validation samples and log
    the overlays to the Trainer's loggers.

    TensorBoard gets an image (``add_image``), Weights & Biases an image (``log_image``), MLflow a PNG
    artifact; CSV loggers and runs without a logger get PNG files under ``<log dir>/<dirname>/``
    (``epoch=<n>.png``). The samples are the first ``num_samples`` of the first validation dataloader, collected
    once and kept, so successive images compare like with like. Only global rank zero explains and logs.
    Explaining needs gradients: create the Trainer with ``inference_mode=False``.

    It explains images, (B, C, H, W) tensors. A run it cannot explain (a text model, token batches, an unknown
    layer, validation batches without labels for ``target="label"``) is refused with a ``ValueError`` before the
    first training step; what only shows in a validation batch after training started is one warning, and the
    callback then does nothing for the rest of the run (it never ends the training).

    Args:
        method, method_args, attribute_args, layer, target, batch_adapter: see
            :class:`~lightning_xai.callbacks._attribution.AttributionCallback` (default: Grad-CAM of the label
            at the layer ``"auto"`` finds).
        num_samples: how many validation samples to show.
        every_n_epochs: explain on epochs 0, n, 2n, ...
        dirname: folder name of the PNG files (under the logger's directory, else ``default_root_dir``).
        columns: samples per row of the grid.

    Example:
        >>> from lightning_xai.callbacks import SaliencyMapLogger
        >>> callback = SaliencyMapLogger("integrated_gradients", attribute_args={"n_steps": 8}, num_samples=4)
    """

    def __init__(
        self,
        method: str | type = "gradcam",
        method_args: Mapping[str, Any] | None = None,
        attribute_args: Mapping[str, Any] | None = None,
        layer: str | int = "auto",
        target: TargetChoice = "label",
        num_samples: int = 8,
        every_n_epochs: int = 1,
        dirname: str = "saliency",
        columns: int = 4,
        batch_adapter: Callable[[Any], Batch] | None = None,
    ) -> None:
        super().__init__(method, method_args, attribute_args, layer, target, batch_adapter)
        for name, value in (
            ("num_samples", num_samples),
            ("every_n_epochs", every_n_epochs),
            ("columns", columns),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"`{name}` must be an int, got {value!r}")
            check_positive(name, value)
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.dirname = dirname
        self.columns = columns
        self._samples: dict[str, Tensor | None] | None = None
        self._collecting: list[Batch] = []
        #: Paths of the PNG files written so far (CSV loggers and runs without a logger).
        self.written: list[Path] = []

    # ------------------------------------------------------------------------------------------------ collect

    def wants_batch(self) -> bool:
        return self._samples is None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._samples is not None or dataloader_idx != 0 or trainer.sanity_checking or self.skip_reason:
            return
        parts = self.read_batch(batch)
        have = sum(b.inputs.shape[0] for b in self._collecting)
        take = min(self.num_samples - have, parts.inputs.shape[0])
        with torch.inference_mode(False):  # plain tensors, usable with autograd later

            def keep(t: Tensor | None) -> Tensor | None:
                return None if t is None else t[:take].detach().cpu().clone()

            self._collecting.append(Batch(keep(parts.inputs), keep(parts.target), keep(parts.mask)))
        if have + take >= self.num_samples:
            self._finish_collecting()

    def _finish_collecting(self) -> None:
        parts = self._collecting
        self._samples = {
            "inputs": torch.cat([p.inputs for p in parts]),
            "target": None if parts[0].target is None else torch.cat([p.target for p in parts]),
            "mask": None if parts[0].mask is None else torch.cat([p.mask for p in parts]),
        }
        self._collecting = []

    # ------------------------------------------------------------------------------------------------ explain

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self._due(trainer):
            self.check_grad_mode("validation")

    def _due(self, trainer: L.Trainer) -> bool:
        return trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._due(trainer) or self.skip_reason:
            return
        if self._samples is None and self._collecting:
            self._finish_collecting()  # fewer validation samples than num_samples
        if self._samples is None or not trainer.is_global_zero:
            return
        inputs = self._samples["inputs"].to(pl_module.device)
        labels = self._samples["target"]
        target = self.targets(pl_module, inputs, None if labels is None else labels.to(pl_module.device))
        maps = self.maps(pl_module, inputs, target).cpu()
        titles = [f"class {int(t)}" for t in target.cpu()]
        self._log(trainer, inputs.cpu(), maps, self._samples["mask"], titles)

    # ---------------------------------------------------------------------------------------------------- log

    def _png_path(self, root: str | Path, epoch: int) -> Path:
        return Path(root) / self.dirname / f"epoch={epoch}.png"

    def _log(
        self, trainer: L.Trainer, images: Tensor, maps: Tensor, masks: Tensor | None, titles: list[str]
    ) -> None:
        epoch = trainer.current_epoch
        tag = f"{self.dirname}/{_method_name(self.method)}"
        grid = None
        loggers = list(trainer.loggers)
        for logger in loggers:
            kind = type(logger).__name__
            if kind == "TensorBoardLogger":
                grid = overlay_grid(images, maps, masks, titles, self.columns) if grid is None else grid
                logger.experiment.add_image(tag, grid, global_step=epoch, dataformats="HWC")
            elif kind == "WandbLogger":
                grid = overlay_grid(images, maps, masks, titles, self.columns) if grid is None else grid
                logger.log_image(key=tag, images=[grid], step=trainer.global_step)
            elif kind == "MLFlowLogger":
                with tempfile.TemporaryDirectory() as tmp:
                    path = save_overlay_grid(
                        Path(tmp) / f"epoch={epoch}.png", images, maps, masks, titles, self.columns
                    )
                    logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=self.dirname)
            else:
                root = getattr(logger, "log_dir", None) or trainer.default_root_dir
                self._write(self._png_path(root, epoch), images, maps, masks, titles)
        if not loggers:
            self._write(self._png_path(trainer.default_root_dir, epoch), images, maps, masks, titles)

    def _write(
        self, path: Path, images: Tensor, maps: Tensor, masks: Tensor | None, titles: list[str]
    ) -> None:
        self.written.append(save_overlay_grid(path, images, maps, masks, titles, self.columns))


def _method_name(method: str | type) -> str:
    return method if isinstance(method, str) else method.__name__
