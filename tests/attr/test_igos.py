"""I-GOS, iGOS+ and iGOS++: the acceptance checks of the method's specification and the Captum contract.

Models are tiny and images 16–32 px, so the whole file runs in well under a minute on two cores.
"""

from __future__ import annotations

import gc
import warnings

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, LayerGradCam
from captum.attr import visualization as viz
from captum.metrics import infidelity, sensitivity_max
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_xai.attr import IGOS, IGOSPlusPlus
from lightning_xai.attr.igos.objective import _DELETION, _INSERTION, _Objective
from lightning_xai.attr.igos.optimise import path_points
from lightning_xai.attr.igos.regularisers import _area, _bilateral_tv, _edge_weights, _total_variation
from lightning_xai.data import ShapesDataset
from lightning_xai.explain import make_baseline
from lightning_xai.metrics.functional import deletion_auc, insertion_auc
from lightning_xai.models import LogitsForward

matplotlib.use("Agg")

# (class, extra attribute() kwargs): I-GOS, iGOS++ and iGOS+
VARIANTS = {
    "igos": (IGOS, {}),
    "igos++": (IGOSPlusPlus, {}),
    "igos+": (IGOSPlusPlus, {"single_mask": True}),
}
FAST = {"mask_size": 4, "n_iterations": 3, "n_steps": 3}


def tiny_model(dtype: torch.dtype = torch.float32, classes: int = 3) -> nn.Module:
    """Smooth activations, so finite differences are accurate."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(4),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, classes),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.to(dtype).eval()


def images(batch: int = 4, size: int = 16, dtype: torch.dtype = torch.float32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


class CountingForward(nn.Module):
    """Counts forward calls; raises on call ``fail_at`` (1-based) when given."""

    def __init__(self, model: nn.Module, fail_at: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)
        self.calls = 0
        self.fail_at = fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("boom inside forward")
        return self.model(x)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # the models here are tiny: a second thread only adds synchronisation, which is slow on a busy machine
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


# ------------------------------------------------------------------------------------------------------------
# §8.1, §8.2: output structure, range, reproducibility
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_shape_dtype_range_and_mask(variant, dtype):
    cls, extra = VARIANTS[variant]
    x = images(2, dtype=dtype)
    attr, mask = cls(tiny_model(dtype)).attribute(x, target=1, seed=0, return_mask=True, **FAST, **extra)
    assert attr.shape == x.shape and attr.dtype == dtype and attr.device == x.device
    assert float(attr.min()) >= 0 and float(attr.max()) <= 1
    assert mask.shape == (2, 1, 4, 4) and float(mask.min()) >= 0 and float(mask.max()) <= 1
    # attributions are 1 - U(M), the same for every channel
    up = F.interpolate(mask, size=(16, 16), mode="bilinear", align_corners=True)
    assert torch.allclose(attr, (1 - up).expand_as(x), atol=1e-6)
    assert float(mask.min()) < 1  # the optimisation moved


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_same_seed_bit_identical_different_seed_differs(variant):
    cls, extra = VARIANTS[variant]
    x, model = images(2), tiny_model()
    run = lambda seed: cls(model).attribute(x, target=0, seed=seed, **FAST, **extra)  # noqa: E731
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    torch.manual_seed(7)
    first = cls(model).attribute(x, target=0, **FAST, **extra)
    torch.manual_seed(7)
    assert torch.equal(first, cls(model).attribute(x, target=0, **FAST, **extra))


# ------------------------------------------------------------------------------------------------------------
# §8.3: batch invariance
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("line_search", ["plain", "integrated"])
def test_batched_equals_per_image(variant, line_search, deterministic):
    cls, extra = VARIANTS[variant]
    model, x = tiny_model(torch.float64), images(4, dtype=torch.float64)
    target = [0, 1, 2, 1]
    kwargs = dict(FAST, seed=5, line_search=line_search, return_mask=True, **extra)
    method = cls(model)
    single = torch.cat([method.attribute(x[i : i + 1], target=target[i], **kwargs)[1] for i in range(4)])
    for chunk in (None, 7, 1):
        _, batched = method.attribute(x, target=target, internal_batch_size=chunk, **kwargs)
        assert torch.allclose(batched, single, atol=1e-6, rtol=0), chunk


def test_batch_invariance_with_nag_tol_and_extra_args(deterministic):
    class Shifted(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = tiny_model(torch.float64)

        def forward(self, x, shift, scale):
            return self.body(x) * scale + shift

    model, x = Shifted().eval(), images(3, dtype=torch.float64)
    shift = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for options in ({"optimizer": "nag", "max_step": 10.0}, {"tol": 0.05, "n_iterations": 5}):
        kwargs = {**FAST, "seed": 1, "return_mask": True, **options}
        method = IGOS(model)
        _, batched = method.attribute(x, target=2, additional_forward_args=(shift, 2.0), **kwargs)
        single = torch.cat(
            [
                method.attribute(
                    x[i : i + 1], target=2, additional_forward_args=(shift[i : i + 1], 2.0), **kwargs
                )[1]
                for i in range(3)
            ]
        )
        assert torch.allclose(batched, single, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# §8.4: the gradient is the gradient of the objective the spec writes down
# ------------------------------------------------------------------------------------------------------------


# The 3-point Gauss–Legendre rule on [0, 1], by hand: nodes 1/2 ∓ √(3/5)/2 and 1/2, weights 5/18, 8/18, 5/18.
GAUSS_3 = (
    [0.5 - 0.5 * (3 / 5) ** 0.5, 0.5, 0.5 + 0.5 * (3 / 5) ** 0.5],
    [5 / 18, 8 / 18, 5 / 18],
)


def reference_objective(
    model, x, b, target, masks, noise, variant, *, l1, tv, beta, sigma, quadrature="riemann"
):
    """The spec's §1 formulas written out with loops, for one image (x, b of shape (1, C, H, W)); the path
    integral as the references' right Riemann sum, or with ``quadrature="gauss_legendre"`` (3 points only)."""
    size = x.shape[-2:]
    n_points = noise.shape[1]
    if quadrature == "riemann":
        nodes, weights = [k / n_points for k in range(1, n_points + 1)], [1 / n_points] * n_points
    else:
        assert n_points == 3
        nodes, weights = GAUSS_3

    def up(m):
        return F.interpolate(m, size=size, mode="bilinear", align_corners=True)

    def f(img):
        return model(img).softmax(1)[0, target]

    def deletion(u, eps):
        return sum(
            w * f(x * t * u + b * (1 - t * u) + e) for t, w, e in zip(nodes, weights, eps, strict=True)
        )

    def insertion(u, eps):
        return -sum(
            w * f(b * t * u + x * (1 - t * u) + e) for t, w, e in zip(nodes, weights, eps, strict=True)
        )

    def tv_of(m):
        return ((m[..., 1:, :] - m[..., :-1, :]).abs() ** beta).mean() + (
            (m[..., :, 1:] - m[..., :, :-1]).abs() ** beta
        ).mean()

    def btv_of(m):
        u = up(m)
        wv = torch.exp(-((x[..., 1:, :] - x[..., :-1, :]) ** 2) / sigma).mean(1, keepdim=True)
        wh = torch.exp(-((x[..., :, 1:] - x[..., :, :-1]) ** 2) / sigma).mean(1, keepdim=True)
        smooth_v = (wv * (u[..., 1:, :] - u[..., :-1, :]).abs() ** beta).mean()
        smooth_h = (wh * (u[..., :, 1:] - u[..., :, :-1]).abs() ** beta).mean()
        return 0.5 * (tv_of(m) + smooth_v + smooth_h)

    if variant == "igos":
        (m,) = masks
        return deletion(up(m), noise[0]) + l1 * (1 - m).abs().mean() + tv * tv_of(m)
    if variant == "igos+":
        (m,) = masks
        data = deletion(up(m), noise[0]) + insertion(up(m), noise[1])
        return data + l1 * (1 - m).abs().mean() + tv * btv_of(m)
    md, mi = masks
    ud, ui = up(md), up(mi)
    joint = (
        deletion(ud * ui, noise[0])
        + insertion(ud * ui, noise[1])
        + deletion(ud, noise[2])
        + insertion(ui, noise[3])
    )
    mp = md * mi
    return 0.5 * joint + l1 * (1 - mp).abs().mean() + tv * btv_of(mp)


def make_objective(model, x, b, target, variant, *, l1, tv, beta, sigma, chunk=None):
    if variant == "igos":
        sources, signs, weight, n_masks = (0,), (_DELETION,), 1.0, 1
    elif variant == "igos+":
        sources, signs, weight, n_masks = (0, 0), (_DELETION, _INSERTION), 1.0, 1
    else:
        sources, signs, weight, n_masks = (0, 0, 1, 2), (_DELETION, _INSERTION, _DELETION, _INSERTION), 0.5, 2
    return _Objective(
        LogitsForward(model),
        x,
        b,
        target,
        (),
        score="softmax",
        n_masks=n_masks,
        term_sources=sources,
        term_signs=signs,
        data_weight=weight,
        l1_coeff=torch.full((x.shape[0],), l1, dtype=x.dtype),
        tv_coeff=tv,
        tv_beta=beta,
        btv_sigma=None if variant == "igos" else sigma,
        chunk=chunk,
    ), n_masks


def test_gauss_legendre_points_are_the_rule_on_zero_one():
    nodes, weights = path_points(3, "gauss_legendre", torch.zeros(1, dtype=torch.float64))
    torch.testing.assert_close(nodes, torch.tensor(GAUSS_3[0], dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(weights, torch.tensor(GAUSS_3[1], dtype=torch.float64), rtol=0, atol=1e-15)
    nodes, weights = path_points(4, "riemann", torch.zeros(1))
    assert nodes.tolist() == [0.25, 0.5, 0.75, 1.0] and weights.tolist() == [0.25] * 4
    # exact for polynomials of degree 2S - 1 = 9 with S = 5 (the default)
    nodes, weights = path_points(5, "gauss_legendre", torch.zeros(1, dtype=torch.float64))
    assert float((weights * nodes**9).sum()) == pytest.approx(1 / 10, rel=1e-13)


@pytest.mark.parametrize("quadrature", ["riemann", "gauss_legendre"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradient_matches_finite_differences(variant, quadrature):
    torch.manual_seed(0)
    model = tiny_model(torch.float64)
    x = images(2, dtype=torch.float64)
    b = make_baseline(x, "blur")
    target = torch.tensor([0, 2])
    coeffs = {"l1": 0.7, "tv": 3.0, "beta": 2.0, "sigma": 0.5}
    objective, n_masks = make_objective(model, x, b, target, variant, chunk=5, **coeffs)
    n_points = 3
    points = path_points(n_points, quadrature, x)
    noise = 0.2 * torch.randn(objective.n_terms, n_points, 3, 16, 16, dtype=torch.float64)
    masks = [0.2 + 0.6 * torch.rand(2, 1, 4, 4, dtype=torch.float64) for _ in range(n_masks)]
    idx = torch.arange(2)
    data, data_grads = objective.data(masks, idx, points, noise, need_grad=True)
    reg, reg_grads = objective.regulariser(masks, idx, need_grad=True)
    for i in range(2):

        def loss(ms, i=i):
            return reference_objective(
                model,
                x[i : i + 1],
                b[i : i + 1],
                int(target[i]),
                ms,
                noise,
                variant,
                quadrature=quadrature,
                **coeffs,
            )

        own = [m[i : i + 1].clone() for m in masks]
        assert torch.allclose(data[i] + reg[i], loss(own), rtol=1e-10, atol=1e-12)
        for j in range(n_masks):
            grad = data_grads[j][i] + reg_grads[j][i]
            numeric = torch.zeros_like(grad)
            step = 1e-6
            for cell in range(grad.numel()):
                plus = [m.clone() for m in own]
                minus = [m.clone() for m in own]
                plus[j].view(-1)[cell] += step
                minus[j].view(-1)[cell] -= step
                numeric.view(-1)[cell] = (loss(plus) - loss(minus)) / (2 * step)
            error = (grad - numeric).norm() / numeric.norm()
            assert error < 1e-4, (variant, i, j, float(error))


# ------------------------------------------------------------------------------------------------------------
# §8.5: Armijo step sizes
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("warm_start", [False, True])
@pytest.mark.parametrize("variant", ["igos", "igos++"])
@pytest.mark.parametrize("line_search", ["plain", "integrated"])
def test_accepted_steps_satisfy_armijo(variant, line_search, warm_start):
    """Every accepted step passes the Armijo test and the trial before it (larger by 1/decay) failed; the search
    starts at ``max_step``, or with ``warm_start`` at the image's previous step / decay (at most ``max_step``)."""
    cls, extra = VARIANTS[variant]
    model, x = tiny_model(torch.float64), images(3, dtype=torch.float64)
    coeffs = {"l1": 1.0, "tv": 20.0, "beta": 2.0, "sigma": 0.01}
    method = cls(model)
    method._trace = []
    n_steps, max_step, decay, c = 3, 1000.0, 0.2, 1e-4
    method.attribute(
        x,
        target=1,
        mask_size=4,
        n_iterations=4,
        n_steps=n_steps,
        noise_std=0.0,
        line_search=line_search,
        warm_start=warm_start,
        seed=0,
        l1_schedule=False,
        **extra,
    )
    b = make_baseline(x, "blur")
    quadrature = "riemann" if line_search == "plain" else "gauss_legendre"
    previous = {image: max_step for image in range(3)}
    points = 1 if line_search == "plain" else n_steps
    n_terms = 1 if variant == "igos" else 4
    zero_noise = torch.zeros(n_terms, points, 3, 16, 16, dtype=torch.float64)
    tested = 0
    for record in method._trace:
        for row, image in enumerate(record["images"].tolist()):
            alpha = float(record["step"][row])
            first = min(max_step, previous[image] / decay) if warm_start else max_step
            previous[image] = alpha
            power = round(
                torch.log(torch.tensor(alpha / first)).item() / torch.log(torch.tensor(decay)).item()
            )
            assert power >= 0 and alpha == pytest.approx(first * decay**power, rel=1e-12)
            masks = list(record["masks"][row : row + 1].unbind(1))
            grads = list(record["grads"][row : row + 1].unbind(1))
            gnorm2 = sum(float(g.pow(2).sum()) for g in grads)

            @torch.no_grad()
            def loss(step, masks=masks, grads=grads, image=image):
                moved = [(m - step * g).clamp(0, 1) for m, g in zip(masks, grads, strict=True)]
                return float(
                    reference_objective(
                        model,
                        x[image : image + 1],
                        b[image : image + 1],
                        1,
                        moved,
                        zero_noise,
                        variant,
                        quadrature=quadrature,
                        **coeffs,
                    )
                )

            start = loss(0.0)
            assert float(record["loss"][row]) == pytest.approx(start, rel=1e-9, abs=1e-12)
            if bool(record["accepted"][row]):
                assert loss(alpha) <= start - c * alpha * gnorm2 + 1e-12
                if power > 0:  # the previous, larger trial failed
                    assert loss(alpha / decay) > start - c * (alpha / decay) * gnorm2 - 1e-12
                tested += 1
            else:
                assert alpha < 1e-5 <= alpha / decay
    assert tested > 0


@pytest.mark.parametrize("warm_start", [False, True])
def test_step_floor_takes_the_first_value_below_min_step_without_a_forward(warm_start):
    counter = CountingForward(tiny_model())
    method = IGOS(counter)
    method._trace = []
    method.attribute(
        images(2),
        target=0,
        mask_size=4,
        n_iterations=2,
        n_steps=3,
        armijo_c=1e9,
        l1_schedule=False,
        seed=0,
        line_search="plain",
        warm_start=warm_start,
    )
    floor = 1000.0 * 0.2**12  # the first of 1000·0.2^j below 1e-5
    for record in method._trace:
        assert not bool(record["accepted"].any())
        assert torch.allclose(record["step"], torch.full_like(record["step"], floor))
    # clean pass + per iteration: gradient pass, plain L(M), 12 evaluated trials (j = 0..11), none for j = 12;
    # with warm_start the second iteration starts at the floor / 0.2 (j = 11): one trial
    assert counter.calls == 1 + (1 + 1 + 12) + (1 + 1 + (1 if warm_start else 12))


# ------------------------------------------------------------------------------------------------------------
# §8.6: regularisers
# ------------------------------------------------------------------------------------------------------------


def test_regulariser_zeros_and_area_subgradient():
    ones = torch.ones(2, 1, 5, 5, requires_grad=True)
    assert torch.equal(_area(ones), torch.zeros(2))
    (grad,) = torch.autograd.grad(_area(ones).sum(), ones)
    assert torch.equal(grad, torch.zeros_like(grad))
    const = torch.full((2, 1, 5, 5), 0.3)
    x = torch.randn(2, 3, 20, 20)
    up = F.interpolate(const, size=(20, 20), mode="bilinear", align_corners=True)
    assert torch.equal(_total_variation(const), torch.zeros(2))
    assert torch.allclose(_bilateral_tv(const, up, _edge_weights(x, 0.01)), torch.zeros(2))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), sigma=st.floats(1e-3, 10.0), beta=st.floats(1.0, 3.0))
def test_bilateral_tv_is_non_negative(seed, sigma, beta):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(2, 1, 4, 4, generator=gen)
    x = torch.randn(2, 3, 12, 12, generator=gen)
    up = F.interpolate(mask, size=(12, 12), mode="bilinear", align_corners=True)
    assert bool((_bilateral_tv(mask, up, _edge_weights(x, sigma), beta) >= 0).all())
    assert bool((_total_variation(mask, beta) >= 0).all())


# ------------------------------------------------------------------------------------------------------------
# §8.7: model state
# ------------------------------------------------------------------------------------------------------------


def _state(model):
    return (
        [p.detach().clone() for p in model.parameters()],
        [p.requires_grad for p in model.parameters()],
        [m.training for m in model.modules()],
        sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            for m in model.modules()
        ),
    )


def _assert_same_state(model, before):
    params, flags, training, hooks = _state(model)
    assert all(torch.equal(a, b) for a, b in zip(params, before[0], strict=True))
    assert flags == before[1] and training == before[2] and hooks == before[3]
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_model_state_restored_also_after_an_exception(variant):
    cls, extra = VARIANTS[variant]
    model = tiny_model()
    model[0].bias.requires_grad_(False)
    model.register_forward_hook(lambda *args: None)
    before = _state(model)
    cls(model).attribute(images(2), target=1, seed=0, **FAST, **extra)
    _assert_same_state(model, before)
    failing = CountingForward(model, fail_at=3)
    with pytest.raises(RuntimeError, match="boom"):
        cls(failing).attribute(images(2), target=1, seed=0, **FAST, **extra)
    _assert_same_state(model, before)


def test_training_mode_warns_and_is_left_alone():
    model = tiny_model().train()
    with pytest.warns(UserWarning, match="training mode"):
        IGOS(model).attribute(images(1), target=0, seed=0, **FAST)
    assert model.training
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        IGOS(model.eval()).attribute(images(1), target=0, seed=0, **FAST)


def test_inference_mode_raises_with_the_trainer_hint():
    model = tiny_model()
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"Trainer\(inference_mode=False\)"):
        IGOS(model).attribute(images(1), target=0, **FAST)
    # torch.no_grad is not a problem: the method turns gradients on itself
    with torch.no_grad():
        assert IGOS(model).attribute(images(1), target=0, seed=0, **FAST).shape == (1, 3, 16, 16)


def test_memory_does_not_grow_over_repeated_calls():
    model, x = tiny_model(), images(2)
    method = IGOSPlusPlus(model)

    def live_tensors():
        gc.collect()
        return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))

    for _ in range(3):
        method.attribute(x, target=0, seed=0, mask_size=4, n_iterations=2, n_steps=2)
    before = live_tensors()
    for _ in range(50):
        method.attribute(x, target=0, seed=0, mask_size=4, n_iterations=2, n_steps=2)
    assert live_tensors() <= before + 2


# ------------------------------------------------------------------------------------------------------------
# §8.10: forward-call accounting
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_nag_makes_no_line_search_forwards(variant):
    cls, extra = VARIANTS[variant]
    counter = CountingForward(tiny_model())
    cls(counter).attribute(
        images(3), target=0, optimizer="nag", max_step=10.0, l1_schedule=False, seed=0, **FAST, **extra
    )
    # one clean pass for the target scores, then exactly one forward per gradient pass
    assert counter.calls == 1 + FAST["n_iterations"]
    counter.calls = 0
    cls(counter).attribute(images(3), target=0, l1_schedule=False, seed=0, **FAST, **extra)
    assert counter.calls > 1 + FAST["n_iterations"]


def test_chunking_splits_rows_and_l1_schedule_adds_one_forward_each():
    counter = CountingForward(tiny_model())
    IGOS(counter).attribute(
        images(2), target=0, optimizer="nag", l1_schedule=False, internal_batch_size=4, seed=0, **FAST
    )
    # rows per gradient pass: 2 images × 3 points = 6 -> 2 chunks of at most 4; the clean pass is 1 chunk
    assert counter.calls == 1 + FAST["n_iterations"] * 2
    counter.calls = 0
    IGOS(counter).attribute(
        images(2), target=0, optimizer="nag", l1_schedule=True, seed=0, mask_size=4, n_iterations=5, n_steps=2
    )
    assert counter.calls == 1 + 5 + 2


def test_tol_freezes_images_and_stops_their_cost():
    counter = CountingForward(tiny_model())
    kwargs = dict(target=0, seed=0, mask_size=4, n_steps=3, optimizer="nag", max_step=1.0, l1_schedule=False)
    frozen = IGOS(counter).attribute(images(2), n_iterations=6, tol=10.0, **kwargs)
    assert counter.calls == 1 + 1  # every image froze after its first iteration
    assert torch.equal(frozen, IGOS(counter).attribute(images(2), n_iterations=1, **kwargs))


# ------------------------------------------------------------------------------------------------------------
# §8.8 and the issue: a model whose decision provably depends only on the objects
# ------------------------------------------------------------------------------------------------------------


class DilatedObjectDetector(nn.Module):
    """Class 1's logit grows with the objects' pixels and ignores everything else.

    Inputs are normalised, ``z = (image - 0.5) / 0.25``. On :class:`ShapesDataset` images every object channel
    lies in [0, 0.08] ∪ [0.92, 1] (|z| ≥ 1.68, z² ≥ 2.82) and every background channel in [0.18, 0.82]
    (z² ≤ 1.64), so the objectness ``relu(mean_c z² - 2.25)`` is exactly 0 off the objects: the clean
    decision depends on the object pixels alone. A fixed texture gain and a 5×5 max pooling (a dilation)
    make it a little CNN-like: gradients reach only each window's maximum, while deleting a pixel lowers
    the score only once its whole neighbourhood is gone. ``cells`` is the 4×4 layer Grad-CAM explains.
    """

    def __init__(self, size: int = 32, scale: float = 15.0, bias: float = 1.0) -> None:
        super().__init__()
        gain = 1 + 0.2 * torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(1))
        self.register_buffer("gain", gain)
        self.dilate = nn.MaxPool2d(5, stride=1, padding=2)
        self.cells = nn.AvgPool2d(size // 4)
        self.scale, self.bias = scale, bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        objectness = F.relu((z**2).mean(1, keepdim=True) - 2.25) * self.gain
        logit = self.scale * self.cells(self.dilate(objectness)).mean((1, 2, 3)) - self.bias
        return torch.stack([torch.zeros_like(logit), logit], 1)


@pytest.fixture(scope="module")
def known_answer():
    data = ShapesDataset(8, image_size=32, num_objects=2, seed=3)
    x = (torch.stack([data[i]["image"] for i in range(8)]) - 0.5) / 0.25
    masks = torch.stack([data[i]["mask"] for i in range(8)])
    model = DilatedObjectDetector().eval()
    settings = {"target": 1, "seed": 0, "mask_size": 14, "n_steps": 10}
    igos, igos_mask = IGOS(model).attribute(x, return_mask=True, **settings)
    igos_pp, pp_mask = IGOSPlusPlus(model).attribute(x, return_mask=True, **settings)
    return model, x, masks, igos, igos_mask, igos_pp, pp_mask


def test_known_answer_salient_cells_lie_on_the_objects(known_answer):
    model, x, masks, _, igos_mask, _, pp_mask = known_answer
    # the model ignores the background: replacing it changes nothing
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 0.3
    background = (~masks[:, None]).expand_as(x)
    assert torch.equal(model(x), model(torch.where(background, (x + noise).clamp(-1.28, 1.28), x)))
    for mask in (igos_mask, pp_mask):
        # argmin M, taken at pixel resolution, falls on an object in ≥ 90% of the images
        up = F.interpolate(mask, size=(32, 32), mode="bilinear", align_corners=True)[:, 0]
        hits = masks.flatten(1).gather(1, up.flatten(1).argmin(1, keepdim=True))[:, 0]
        assert float(hits.float().mean()) >= 0.9


def test_known_answer_deletion_beats_gradient_baselines_and_insertion(known_answer):
    model, x, _, igos, _, igos_pp, _ = known_answer
    blur = make_baseline(x, "blur")
    integrated = IntegratedGradients(model).attribute(x, baselines=blur, target=1)
    cam = LayerGradCam(model, model.cells).attribute(x, target=1, relu_attributions=True)
    random_map = torch.rand(8, 32, 32, generator=torch.Generator().manual_seed(0))

    def deletion(a):
        return float(deletion_auc(model, x, a, 1))

    def insertion(a):
        return float(insertion_auc(model, x, a, 1))

    assert deletion(igos) < min(deletion(cam), deletion(integrated), deletion(random_map))
    assert insertion(igos_pp) > insertion(random_map)
    assert insertion(igos_pp) >= insertion(igos)


def test_deletion_auc_of_a_constant_model_is_its_probability():
    # §8.9: the last-step fix of the metric; 28×28 grid -> 15 cells a step, 53 steps
    model = lambda z: torch.tensor([[0.0, 1.0]]).expand(z.shape[0], 2)  # noqa: E731
    q = torch.tensor([0.0, 1.0]).softmax(0)[1]
    x, maps = torch.rand(2, 3, 32, 32), torch.rand(2, 32, 32)
    for metric in (deletion_auc, insertion_auc):
        out = metric(model, x, maps, 1, return_curves=True)
        assert torch.allclose(out["auc"], q) and out["curves"].shape == (2, 54)


# ------------------------------------------------------------------------------------------------------------
# Captum interoperability and inputs
# ------------------------------------------------------------------------------------------------------------


def test_tuple_inputs_and_every_target_form():
    model, x = tiny_model(), images(3)
    method = IGOS(model)
    kwargs = dict(FAST, seed=0)
    (from_tuple,) = method.attribute((x,), target=[1, 1, 1], **kwargs)
    assert torch.equal(from_tuple, method.attribute(x, target=1, **kwargs))
    assert torch.equal(from_tuple, method.attribute(x, target=torch.tensor([1, 1, 1]), **kwargs))
    assert torch.equal(from_tuple, method.attribute(x, target=torch.tensor(1), **kwargs))
    predicted = model(x).argmax(1)
    assert torch.equal(method.attribute(x, **kwargs), method.attribute(x, target=predicted, **kwargs))
    attr, mask = method.attribute((x,), target=1, return_mask=True, **kwargs)
    assert isinstance(attr, tuple) and mask.shape == (3, 1, 4, 4)


def test_visualization_and_captum_metrics_run():
    model, x = tiny_model(), images(2)
    method = IGOSPlusPlus(model)
    attr = method.attribute(x, target=0, seed=0, optimizer="nag", max_step=1e4, **FAST)
    assert float(attr.max()) > 0.1
    figure, _ = viz.visualize_image_attr(
        attr[0].permute(1, 2, 0).numpy(),
        x[0].permute(1, 2, 0).numpy(),
        method="heat_map",
        sign="positive",
        use_pyplot=False,
    )
    assert figure is not None

    def perturb(inputs):
        noise = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(0)) * 0.01
        return noise, inputs - noise

    value = infidelity(model, perturb, x, attr, target=0, n_perturb_samples=2)
    assert value.shape == (2,) and bool(torch.isfinite(value).all())
    sens = sensitivity_max(
        method.attribute, x, target=0, seed=0, n_perturb_samples=2, perturb_radius=0.01, **FAST
    )
    assert sens.shape == (2,) and bool(torch.isfinite(sens).all())


def test_hugging_face_image_model_and_logit_score():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    x = images(2)
    attr = IGOS(model).attribute(x, target=[0, 2], seed=0, **FAST)
    assert attr.shape == x.shape
    logit = IGOSPlusPlus(model).attribute(x, target=1, seed=0, score="logit", **FAST)
    assert logit.shape == x.shape and bool(torch.isfinite(logit).all())


def test_baselines_and_progress(capsys):
    model, x = tiny_model(), images(2)
    method = IGOS(model, normalization=([0.5, 0.5, 0.5], [0.25, 0.25, 0.25]))
    kwargs = dict(FAST, target=0, seed=0)
    black = method.attribute(x, baselines="black", **kwargs)
    explicit = method.attribute(x, baselines=torch.full((3, 16, 16), -2.0), **kwargs)
    assert torch.allclose(black, explicit)
    assert not torch.equal(black, method.attribute(x, baselines="blur", **kwargs))
    assert method.attribute(x, baselines=(0.0,), **kwargs).shape == x.shape
    method.attribute(x, show_progress=True, **kwargs)
    assert "IGOS" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"inputs": (images(1), images(1))}, ValueError, "at most 1 tensor"),
        ({"inputs": torch.rand(3, 16, 16)}, ValueError, "`inputs` must be 4-D"),
        ({"inputs": torch.full((1, 3, 16, 16), float("nan"))}, ValueError, "NaN"),
        ({"mask_size": 1}, ValueError, "`mask_size`"),
        ({"n_iterations": 0}, ValueError, "`n_iterations`"),
        ({"optimizer": "adam"}, ValueError, "`optimizer`"),
        ({"line_search": "exact"}, ValueError, "`line_search`"),
        ({"step_decay": 1.5}, ValueError, "`step_decay`"),
        ({"target": 5}, ValueError, "number of classes"),
        ({"target": 1.5}, TypeError, "`target`"),
        ({"mask_init": torch.full((4, 4), 2.0)}, ValueError, r"`mask_init` must lie in \[0, 1\]"),
        ({"mask_init": torch.ones(3, 3)}, ValueError, "`mask_init`"),
        ({"internal_batch_size": 0}, ValueError, "`internal_batch_size`"),
        ({"score": "prob"}, ValueError, "`score`"),
        ({"baselines": "noise"}, ValueError, "`baseline`"),
        ({"seed": "x"}, TypeError, "`seed`"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    counter = CountingForward(tiny_model())
    call = dict(FAST, inputs=images(1), target=0)
    call.update(kwargs)
    with pytest.raises(error, match=match):
        IGOS(counter).attribute(**call)
    if "target" not in kwargs:  # everything but the class range is checked before any model call
        assert counter.calls == 0


def test_mask_init_pair_for_igos_plus_plus():
    model, x = tiny_model(), images(2)
    half = torch.full((4, 4), 0.5)
    _, mask = IGOSPlusPlus(model).attribute(
        x,
        target=0,
        mask_init=(half, torch.ones(4, 4)),
        n_iterations=1,
        optimizer="nag",
        max_step=0.0 + 1e-12,
        seed=0,
        mask_size=4,
        n_steps=2,
        return_mask=True,
    )
    assert torch.allclose(mask, torch.full_like(mask, 0.5), atol=1e-6)
