"""One registry of short names: every method and metric name resolves, and unknown names say what exists."""

from __future__ import annotations

import pytest
import torch
from torchmetrics import Metric

from lightning_xai.attr.registry import (
    METHOD_NAMES,
    METHODS,
    build_attribution,
    register_method,
    resolve_method,
)
from lightning_xai.metrics.registry import METRIC_NAMES, METRICS, register_metric
from lightning_xai.models import small_resnet
from lightning_xai.modules import XNN


@pytest.mark.parametrize("name", sorted(METHOD_NAMES))
def test_every_method_name_resolves_to_an_attribution_class(name):
    assert callable(resolve_method(name).attribute)


@pytest.mark.parametrize("name", sorted(METRIC_NAMES))
def test_every_metric_name_resolves_to_a_metric(name):
    assert issubclass(METRICS.resolve(name), Metric)


@pytest.mark.parametrize(("registry", "kind"), [(METHODS, "attribution method"), (METRICS, "metric")])
def test_unknown_names_list_the_known_ones(registry, kind):
    with pytest.raises(ValueError, match=f"unknown {kind} 'nope'.*'"):
        registry.resolve("nope")
    with pytest.raises(ValueError, match="cannot import"):
        registry.resolve("lightning_xai.NoSuchThing")
    with pytest.raises(TypeError, match=kind):
        registry.resolve(3)


def test_register_adds_a_name_and_checks_the_path():
    register_method("my_saliency", "captum.attr.Saliency")
    register_metric("my_deletion", "lightning_xai.metrics.DeletionAUC")
    try:
        assert resolve_method("my_saliency").__name__ == "Saliency"
        assert METRICS.resolve("my_deletion").__name__ == "DeletionAUC"
        with pytest.raises(ValueError, match="dotted path"):
            register_method("broken", "Saliency")
    finally:
        del METHOD_NAMES["my_saliency"], METRIC_NAMES["my_deletion"]


def test_xnn_is_a_method_name_built_from_the_xnn_module():
    torch.manual_seed(0)
    xnn = XNN(small_resnet(num_classes=2, width=4), num_concepts=3, hidden=(8,)).eval()
    maps = build_attribution("xnn", xnn).attribute(torch.rand(2, 3, 16, 16))
    assert maps.shape == (2, 3, 16, 16) and bool((maps >= 0).all())
