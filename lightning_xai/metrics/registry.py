"""Short names of the explanation metrics, for callbacks, configs and the command line."""

from __future__ import annotations

from .._registry import NameRegistry

__all__ = ["METRICS", "METRIC_NAMES", "register_metric"]

#: Short metric names; values are dotted class paths.
METRIC_NAMES: dict[str, str] = {
    "deletion": "lightning_xai.metrics.DeletionAUC",
    "insertion": "lightning_xai.metrics.InsertionAUC",
    "average_drop": "lightning_xai.metrics.AverageDrop",
    "increase_in_confidence": "lightning_xai.metrics.IncreaseInConfidence",
    "pointing_game": "lightning_xai.metrics.PointingGame",
    "energy_pointing_game": "lightning_xai.metrics.EnergyPointingGame",
    "iou_auc": "lightning_xai.metrics.IoUAUC",
    "pxap": "lightning_xai.metrics.PixelAveragePrecision",
    "sparseness": "lightning_xai.metrics.Sparseness",
    "complexity": "lightning_xai.metrics.Complexity",
}

METRICS = NameRegistry("metric", METRIC_NAMES, "lightning_xai.metrics.DeletionAUC")

#: Make a name a short name for the metric class at a dotted path.
register_metric = METRICS.register
