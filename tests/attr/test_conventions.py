"""Every attribution class follows the same constructor and ``attribute`` conventions (docs/conventions.md)."""

from __future__ import annotations

import inspect

import pytest

from lightning_xai import attr

CAPTUM_ORDER = ["inputs", "baselines", "target", "additional_forward_args"]
LAYER_ORDER = ["inputs", "target", "additional_forward_args"]

CLASSES = {
    "IGOS": CAPTUM_ORDER,
    "IGOSPlusPlus": CAPTUM_ORDER,
    "StructuredAttentionGraph": CAPTUM_ORDER,
    "ADVISE": LAYER_ORDER,
    "MHEXAttribution": LAYER_ORDER,
    "SelectorAttribution": LAYER_ORDER,
    "XNNConceptAttribution": LAYER_ORDER,
}


def test_every_public_attribution_class_is_listed():
    public = {
        name
        for name in attr.__all__
        if isinstance(getattr(attr, name), type) and hasattr(getattr(attr, name), "attribute")
    }
    assert public == set(CLASSES)


@pytest.mark.parametrize(("name", "order"), sorted(CLASSES.items()))
def test_attribute_takes_captums_positional_order_and_keyword_only_options(name, order):
    parameters = list(inspect.signature(getattr(attr, name).attribute).parameters.values())[1:]
    positional = [p.name for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional == order
    rest = [p for p in parameters if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert all(p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD) for p in rest)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_constructor_takes_the_forward_function_first_and_checks_it(name):
    cls = getattr(attr, name)
    first = list(inspect.signature(cls.__init__).parameters)[1]
    assert first == "forward_func"
    with pytest.raises(TypeError, match="forward_func"):
        cls(3)


@pytest.mark.parametrize("name", ["IGOS", "IGOSPlusPlus", "StructuredAttentionGraph", "ADVISE"])
def test_methods_that_need_pixels_take_normalization(name):
    assert "normalization" in inspect.signature(getattr(attr, name).__init__).parameters
