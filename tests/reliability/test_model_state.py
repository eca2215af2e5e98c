"""Model state is sacred: every method, ``grad_cam`` and every model-calling metric leaves the model as it found
it (training flags, ``requires_grad``, ``.grad``, hooks and **every buffer**, BatchNorm statistics included),
after a normal call and after an exception raised inside the model, and repeated calls leak neither hooks nor
objects.

A new method joins the suite by adding one entry to ``CASES``.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from lightning_xai.attr import (
    ADVISE,
    IGOS,
    IGOSPlusPlus,
    MHEXAttribution,
    SelectorAttribution,
    StructuredAttentionGraph,
    XNNConceptAttribution,
)
from lightning_xai.explain import grad_cam
from lightning_xai.heads import inject_mhex
from lightning_xai.metrics import (
    AVX,
    AverageDrop,
    Complexity,
    DeletionAUC,
    EnergyPointingGame,
    ExplanationConsistency,
    IncreaseInConfidence,
    InsertionAUC,
    IoUAUC,
    PixelAveragePrecision,
    PointingGame,
    Sparseness,
)
from lightning_xai.models import small_resnet
from lightning_xai.modules import XNN

SIZE = 16
FAST_IGOS = {"mask_size": 4, "n_iterations": 2, "n_steps": 2, "seed": 0}


class Model(nn.Module):
    """A small ResNet with BatchNorm and Dropout, in training mode, that can be told to fail on its n-th call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = small_resnet(num_classes=3, width=4)
        self.drop = nn.Dropout(0.5)
        self.fail_at: int | None = None
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("injected failure")
        return self.drop(self.net(x))


def _maps(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.rand(x.shape[0], SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _metric(
    cls: type, *, second_map: bool = False, **kwargs: object
) -> Callable[[nn.Module, torch.Tensor], object]:
    def run(model: nn.Module, x: torch.Tensor) -> object:
        metric = cls(model, **kwargs)
        maps = (_maps(model, x), 1 - _maps(model, x)) if second_map else (_maps(model, x),)
        metric.update(x, *maps)
        return metric.compute()

    return run


def _mhex(model: nn.Module, x: torch.Tensor) -> object:
    handle = getattr(model, "_test_mhex", None)
    if handle is None:
        handle = model._test_mhex = inject_mhex(model.net, stages=[2, 3])
    return MHEXAttribution(model, handle).attribute(x, target=0)


def _xnn(model: nn.Module, x: torch.Tensor) -> object:
    xnn = getattr(model, "_test_xnn", None)
    if xnn is None:
        xnn = XNN(model, num_concepts=2, hidden=(4,))
        object.__setattr__(model, "_test_xnn", xnn)  # not a submodule: the XNN holds the model
    return XNNConceptAttribution(xnn).attribute(x)


class _SelectorOf(nn.Module):
    """A selector made of the model's own layers (so the model's state is what the selector touches)."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule: the model holds the head
        self.backbone = model.net
        if not hasattr(model, "selector_head"):
            model.selector_head = nn.Conv2d(32, 1, 1).to(next(model.parameters()).dtype)
        self.head = model.selector_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.model.calls += 1
        if self.model.fail_at is not None and self.model.calls >= self.model.fail_at:
            raise RuntimeError("injected failure")
        return self.head(self.backbone.forward_features(x))


def _selector(model: nn.Module, x: torch.Tensor) -> object:
    return SelectorAttribution(model, _SelectorOf(model)).attribute(x)


#: name -> a call on (model, inputs); each must make at least one model call.
CASES: dict[str, Callable[[nn.Module, torch.Tensor], object]] = {
    "IGOS": lambda m, x: IGOS(m).attribute(x, target=0, **FAST_IGOS),
    "IGOSPlusPlus": lambda m, x: IGOSPlusPlus(m).attribute(x, target=0, **FAST_IGOS),
    "StructuredAttentionGraph": lambda m, x: StructuredAttentionGraph(m).explain(
        x, target=0, grid_size=3, max_root_size=2, heuristic_kwargs={"n_iterations": 1, "n_steps": 2}
    ),
    "ADVISE": lambda m, x: ADVISE(m, m.net.layer3).attribute(x, target=0),
    "MHEXAttribution": _mhex,
    "SelectorAttribution": _selector,
    "XNNConceptAttribution": _xnn,
    "grad_cam": lambda m, x: grad_cam(m, x, 0, m.net.layer3),
    "DeletionAUC": _metric(DeletionAUC, resolution=4),
    "InsertionAUC": _metric(InsertionAUC, resolution=4),
    "AverageDrop": _metric(AverageDrop),
    "IncreaseInConfidence": _metric(IncreaseInConfidence),
    "AVX": _metric(AVX, second_map=True),
}


#: Cases that call the model once: the injected failure comes at the first call (else at the second).
ONE_CALL = {"AVX", "grad_cam", "MHEXAttribution", "SelectorAttribution", "XNNConceptAttribution"}


def _snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [
            len(getattr(m, name))
            for m in model.modules()
            for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
        ],
        "buffers": {name: b.clone() for name, b in model.named_buffers()},
    }


def _assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for a, b in zip(before["grad"], after["grad"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert after["hooks"] == before["hooks"]
    assert before["buffers"].keys() == after["buffers"].keys()
    changed = [
        name for name, value in before["buffers"].items() if not torch.equal(value, after["buffers"][name])
    ]
    assert not changed, f"buffers changed: {changed}"


def _prepare(name: str) -> tuple[Model, torch.Tensor]:
    model = Model().train()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    if name in ("MHEXAttribution", "SelectorAttribution", "XNNConceptAttribution"):
        with (
            warnings.catch_warnings()
        ):  # build the heads, the selector head or the XNN outside the measured call
            warnings.simplefilter("ignore")
            CASES[name](model, x)
    model.zero_grad(set_to_none=False)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    return model, x


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_and_buffers_restored_after_a_call(name):
    model, x = _prepare(name)
    before = _snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the train-mode warning
        CASES[name](model, x)
    _assert_same(before, _snapshot(model))


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_and_buffers_restored_after_an_exception(name):
    model, x = _prepare(name)
    before = _snapshot(model)
    model.calls, model.fail_at = 0, 1 if name in ONE_CALL else 2
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="injected failure"):
        warnings.simplefilter("ignore")
        CASES[name](model, x)
    model.fail_at = None
    _assert_same(before, _snapshot(model))


@pytest.mark.parametrize("name", ["IGOS", "grad_cam", "ADVISE", "DeletionAUC"])
def test_repeated_calls_leak_neither_hooks_nor_objects(name):
    model, x = _prepare(name)
    model.eval()
    for _ in range(3):  # warm-up: lazily created caches
        CASES[name](model, x)
    gc.collect()
    objects = len(gc.get_objects())
    hooks = _snapshot(model)["hooks"]
    for _ in range(100):
        CASES[name](model, x)
    gc.collect()
    assert _snapshot(model)["hooks"] == hooks
    assert len(gc.get_objects()) - objects < 200


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_empty_batch_is_refused_with_one_message(name):
    model, _ = _prepare(name)
    model.eval()
    with pytest.raises(ValueError, match="empty batch"):
        CASES[name](model, torch.rand(0, 3, SIZE, SIZE))


@pytest.mark.parametrize("name", sorted(CASES))
def test_inputs_of_another_dtype_than_the_model_name_both(name):
    model, x = _prepare(name)
    model.eval()
    with pytest.raises(ValueError, match=r"torch\.float16 but the model's parameters are torch\.float32"):
        CASES[name](model, x.half())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_half_precision_model_is_explained(name, dtype):
    model = Model().eval().to(dtype)  # heads, XNN and selector are built on the half-precision model
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CASES[name](model, x.to(dtype))
    values = result.values() if isinstance(result, dict) else result if isinstance(result, list) else [result]
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    assert all(bool(torch.isfinite(t.float()).all()) for t in tensors)


BAD_INPUTS = {
    "3-D inputs": (lambda x: x[0], (ValueError, TypeError), r"inputs|images|4-D|\(B"),
    "NaN": (lambda x: x.clone().fill_(float("nan")), ValueError, "NaN|finite"),
    "uint8": (lambda x: (x * 255).to(torch.uint8), (ValueError, TypeError), "float|dtype|uint8"),
}


@pytest.mark.parametrize(
    ("name", "bad"),
    # AVX takes pixels, uint8 included
    [(name, bad) for name in sorted(CASES) for bad in sorted(BAD_INPUTS) if (name, bad) != ("AVX", "uint8")],
)
def test_bad_inputs_fail_with_a_named_error_before_the_model_runs(name, bad):
    model, x = _prepare(name)
    model.eval()
    change, error, match = BAD_INPUTS[bad]
    model.calls = 0
    with pytest.raises(error, match=match):
        CASES[name](model, change(x))
    assert model.calls == 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_float32_model_under_autocast_is_explained(name):
    model, x = _prepare(name)
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CASES[name](model, x)
    values = result.values() if isinstance(result, dict) else result if isinstance(result, list) else [result]
    assert all(bool(torch.isfinite(v.float()).all()) for v in values if isinstance(v, torch.Tensor))


class _Outputs(nn.Module):
    """The model behind a forward that returns a tuple, a dict or a Hugging Face output."""

    def __init__(self, model: Model, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind
        self.net = model.net  # what the cases reach for (layers, heads)
        self.calls, self.fail_at = 0, None

    def forward(self, x: torch.Tensor) -> object:
        logits = self.model(x)
        if self.kind == "tuple":
            return logits, None
        if self.kind == "dict":
            return {"logits": logits}
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(logits=logits)


@pytest.mark.parametrize("kind", ["tuple", "dict", "hf"])
@pytest.mark.parametrize("name", sorted(set(CASES) - {"MHEXAttribution", "XNNConceptAttribution"}))
def test_models_returning_a_tuple_a_dict_or_a_hugging_face_output(name, kind):
    model, x = _prepare(name)
    wrapped = _Outputs(model.eval(), kind).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CASES[name](wrapped, x)


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: ADVISE(m, "no_such_layer"),
        lambda m, x: grad_cam(m, x, 0, "no_such_layer"),
        lambda m, x: XNNConceptAttribution(XNN(m, num_concepts=2, hidden=(4,))).attribute(
            x, layer="no_such_layer"
        ),
    ],
    ids=["ADVISE", "grad_cam", "XNNConceptAttribution"],
)
def test_an_unknown_layer_name_lists_the_layers(call):
    model = Model().eval()
    with pytest.raises(ValueError, match="no_such_layer"):
        call(model, torch.rand(1, 3, SIZE, SIZE))


@pytest.mark.parametrize("name", sorted(CASES))
def test_inputs_with_the_wrong_number_of_channels_name_the_channels_and_leave_the_model_alone(name):
    model, x = _prepare(name)
    before = _snapshot(model)
    with (
        warnings.catch_warnings(),
        pytest.raises((RuntimeError, ValueError), match=r"channels|\(B, 3, H, W\) colour"),
    ):
        warnings.simplefilter("ignore")
        CASES[name](model, torch.cat([x, x[:, :1]], 1))
    _assert_same(before, _snapshot(model))


MAP_METRICS = {
    "PointingGame": lambda m, masks: _score(PointingGame(), m, masks),
    "EnergyPointingGame": lambda m, masks: _score(EnergyPointingGame(), m, masks),
    "IoUAUC": lambda m, masks: _score(IoUAUC(), m, masks),
    "PixelAveragePrecision": lambda m, masks: _score(PixelAveragePrecision(), m, masks),
    "Sparseness": lambda m, masks: _score(Sparseness(), m),
    "Complexity": lambda m, masks: _score(Complexity(), m),
    "ExplanationConsistency": lambda m, masks: _score(ExplanationConsistency(), m, m.flip(-1)),
}


def _score(metric: object, *args: torch.Tensor) -> torch.Tensor:
    metric.update(*args)
    return metric.compute()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", sorted(MAP_METRICS))
def test_map_metrics_accumulate_half_precision_maps_in_float32(name, dtype):
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(4, SIZE, SIZE, generator=generator)
    masks = torch.rand(4, SIZE, SIZE, generator=generator) > 0.5
    full = MAP_METRICS[name](maps, masks)
    half = MAP_METRICS[name](maps.to(dtype), masks)
    assert half.dtype in (torch.float32, torch.float64)
    assert float(half) == pytest.approx(float(full), rel=0.02, abs=0.01)
