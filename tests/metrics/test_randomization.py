from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_xai.metrics.functional.randomization import model_randomization_check, randomization_layers
from lightning_xai.metrics.functional.similarity import (
    average_tie_ranks,
    spearman_similarity,
    ssim_similarity,
)
from lightning_xai.metrics.randomization import ModelRandomizationCheck


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    )


def trained_like(model: nn.Module) -> nn.Module:
    """Move every parameter and batch-norm statistic away from its initial value, as training would."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            tensor.add_(torch.rand_like(tensor))
    return model


def input_x_gradient(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inputs = inputs.clone().requires_grad_()
    score = model(inputs).gather(1, target[:, None]).sum()
    return torch.autograd.grad(score, inputs)[0] * inputs


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def assert_bitwise_equal(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    current = model.state_dict(keep_vars=True)
    assert current.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(current[key].detach(), value), key


def batch(seed: int = 1, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(size, 1, 8, 8, generator=generator), torch.randint(0, 3, (size,), generator=generator)


# ----------------------------------------------------------------------------------------------------------------
# Similarities


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 6), st.booleans())
def test_spearman_equals_scipy(seed: int, levels: int, with_ties: bool) -> None:
    generator = torch.Generator().manual_seed(seed)
    if with_ties:
        a = torch.randint(0, levels, (3, 7, 9), generator=generator).double()
        b = torch.randint(0, levels, (3, 7, 9), generator=generator).double()
    else:
        a = torch.randn(3, 7, 9, generator=generator, dtype=torch.float64)
        b = torch.randn(3, 7, 9, generator=generator, dtype=torch.float64)
    ours = spearman_similarity(a, b)
    for i in range(3):
        expected = scipy.stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        if np.isnan(expected):
            assert ours[i].item() == 0.0
        else:
            assert ours[i].item() == pytest.approx(expected, abs=1e-10)


def test_average_tie_ranks_equal_scipy_rankdata() -> None:
    values = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    ranks = average_tie_ranks(values)
    for row in range(2):
        np.testing.assert_allclose(ranks[row].numpy(), scipy.stats.rankdata(values[row].numpy()) - 1)


def test_spearman_constant_map_is_zero_and_monotone_invariant() -> None:
    a = torch.rand(2, 5, 5)
    assert spearman_similarity(a, torch.ones(2, 5, 5)).tolist() == [0.0, 0.0]
    assert spearman_similarity(a, a.exp() * 3 + 1).tolist() == pytest.approx([1.0, 1.0])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(7, 12), st.integers(7, 12), st.booleans())
def test_ssim_equals_skimage(seed: int, height: int, width: int, signed: bool) -> None:
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity

    generator = torch.Generator().manual_seed(seed)
    a = torch.rand(2, height, width, generator=generator, dtype=torch.float64)
    b = 0.5 * a + 0.5 * torch.rand(2, height, width, generator=generator, dtype=torch.float64)
    if signed:
        b = 2 * b - 0.7
    ours = ssim_similarity(a, b)
    for i in range(2):
        x, y = a[i].numpy(), b[i].numpy()
        data_range = max(x.max(), y.max()) - min(x.min(), y.min())
        assert ours[i].item() == pytest.approx(structural_similarity(x, y, data_range=data_range), abs=1e-9)


def test_ssim_float32_maps_and_extremes() -> None:
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity

    a, b = torch.rand(1, 9, 9), torch.rand(1, 9, 9)
    x, y = a[0].double().numpy(), b[0].double().numpy()
    data_range = max(x.max(), y.max()) - min(x.min(), y.min())
    assert ssim_similarity(a, b).item() == pytest.approx(
        structural_similarity(x, y, data_range=data_range), abs=1e-6
    )
    assert ssim_similarity(a, a).item() == pytest.approx(1.0)
    # Two identical constant maps have no data range: identical, so 1 (skimage: NaN).
    assert ssim_similarity(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8)).item() == 1.0
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim_similarity(torch.rand(1, 6, 8), torch.rand(1, 6, 8))


# ----------------------------------------------------------------------------------------------------------------
# Layers


def test_layer_list_orders_and_norm_handling() -> None:
    model = make_model()
    assert [n for n, _ in randomization_layers(model)] == ["6", "3", "1", "0"]
    assert [n for n, _ in randomization_layers(model, order="bottom_up")] == ["0", "1", "3", "6"]
    assert [n for n, _ in randomization_layers(model, skip_norm_layers=True)] == ["6", "3", "0"]
    assert randomization_layers(model, layers=["0", "6"]) == [("6", ("6",)), ("0", ("0",))]


def test_blocks_look_through_wrappers() -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Sequential(
                nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)),
                nn.ReLU(),
                nn.Sequential(nn.Linear(2, 2)),
            )

    steps = randomization_layers(Wrapper(), layers="blocks")
    assert steps == [("model.2", ("model.2.0",)), ("model.0", ("model.0.0", "model.0.1"))]
    steps = randomization_layers(Wrapper(), layers="blocks", skip_norm_layers=True)
    assert steps[-1] == ("model.0", ("model.0.0",))


def test_layer_list_errors() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="does not have"):
        randomization_layers(model, layers=["nope"])
    with pytest.raises(ValueError, match="holds no module"):
        randomization_layers(model, layers=["2"])
    with pytest.raises(ValueError, match="`layers`"):
        randomization_layers(model, layers="everything")
    with pytest.raises(ValueError, match="nothing to randomise"):
        randomization_layers(nn.ReLU())
    with pytest.raises(ValueError, match="`order`"):
        randomization_layers(model, order="sideways")


# ----------------------------------------------------------------------------------------------------------------
# The check


def test_step_zero_is_one_and_keys() -> None:
    model = trained_like(make_model())
    metric = ModelRandomizationCheck(model, input_x_gradient)
    inputs, target = batch()
    metric.update(inputs, target)
    result = metric.compute()
    assert set(result) == {"spearman", "ssim"}
    for values in result.values():
        assert list(values) == ["original", "6", "3", "1", "0", "last"]
        assert values["original"].item() == pytest.approx(1.0, abs=1e-6)
        assert values["last"] == values["0"]
        assert all(-1 - 1e-6 <= v.item() <= 1 + 1e-6 for v in values.values())
    # A gradient explanation depends on the weights: the fully randomised model explains differently.
    assert result["spearman"]["last"].item() < 0.9


def test_fixed_seed_gives_identical_results_and_leaves_global_rng() -> None:
    inputs, target = batch()
    state = torch.get_rng_state()
    first = model_randomization_check(trained_like(make_model()), input_x_gradient, inputs, target, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    second = model_randomization_check(trained_like(make_model()), input_x_gradient, inputs, target, seed=3)
    other = model_randomization_check(trained_like(make_model()), input_x_gradient, inputs, target, seed=4)
    for similarity in first:
        for key in first[similarity]:
            assert torch.equal(first[similarity][key], second[similarity][key])
    assert not torch.equal(first["spearman"]["6"], other["spearman"]["6"])


def test_reinitialisation_is_reset_parameters_under_seed_plus_step() -> None:
    model = trained_like(make_model())
    seen: list[dict[str, torch.Tensor]] = []

    def recording(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(snapshot(model))
        return input_x_gradient(model, inputs, target)

    inputs, target = batch()
    model_randomization_check(model, recording, inputs, target, seed=10, similarity="spearman")
    # Calls: trained, recomputed, then after steps "6" (seed 11), "3" (12), "1" (13), "0" (14).
    assert len(seen) == 6
    for call, (name, seed) in zip(seen[2:], [("6", 11), ("3", 12), ("1", 13), ("0", 14)], strict=True):
        fresh = make_model()[int(name)]
        torch.manual_seed(seed)
        fresh.reset_parameters()
        for key, value in fresh.state_dict().items():
            assert torch.equal(call[f"{name}.{key}"], value), (name, key)
    # Cascading: the earlier re-initialised layer stays randomised, the later ones stay trained.
    assert torch.equal(seen[3]["6.weight"], seen[2]["6.weight"])
    assert torch.equal(seen[2]["0.weight"], dict(model.state_dict())["0.weight"])
    # The batch-norm reset also reset its running statistics.
    assert torch.equal(seen[4]["1.running_var"], torch.ones(4))
    assert seen[4]["1.num_batches_tracked"].item() == 0


@pytest.mark.parametrize("inplace", [False, True])
def test_user_weights_bitwise_unchanged(inplace: bool) -> None:
    model = trained_like(make_model()).train()
    model[0].weight.grad = torch.full_like(model[0].weight, 7.0)
    saved = snapshot(model)
    grad = model[0].weight.grad

    def backward_explainer(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        inputs = inputs.clone().requires_grad_()
        model(inputs).gather(1, target[:, None]).sum().backward()
        return inputs.grad * inputs

    inputs, target = batch()
    # force_eval=False: train-mode batch norm updates its running statistics during every explanation.
    metric = ModelRandomizationCheck(model, backward_explainer, inplace=inplace, force_eval=False)
    metric.update(inputs, target)
    assert_bitwise_equal(model, saved)
    assert model.training and all(m.training for m in model.modules())
    assert model[0].weight.grad is grad and torch.equal(grad, torch.full_like(grad, 7.0))
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("inplace", [False, True])
def test_user_weights_unchanged_after_exception_in_explain_fn(inplace: bool) -> None:
    model = trained_like(make_model())
    saved = snapshot(model)
    calls = []

    def failing(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 4:  # after two layers were re-initialised
            raise RuntimeError("explainer failed")
        return input_x_gradient(model, inputs, target)

    metric = ModelRandomizationCheck(model, failing, inplace=inplace)
    with pytest.raises(RuntimeError, match="explainer failed"):
        metric.update(*batch())
    assert_bitwise_equal(model, saved)
    assert metric.count.item() == 0


def test_inplace_and_copy_modes_agree() -> None:
    inputs, target = batch()
    copied = model_randomization_check(trained_like(make_model()), input_x_gradient, inputs, target)
    inplace = model_randomization_check(
        trained_like(make_model()), input_x_gradient, inputs, target, inplace=True
    )
    for similarity in copied:
        for key in copied[similarity]:
            assert torch.equal(copied[similarity][key], inplace[similarity][key])


def test_skip_layers_scores_only_the_fully_randomised_model() -> None:
    calls = []

    def counting(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return input_x_gradient(model, inputs, target)

    inputs, target = batch()
    full = model_randomization_check(trained_like(make_model()), input_x_gradient, inputs, target)
    metric = ModelRandomizationCheck(trained_like(make_model()), counting, skip_layers=True)
    assert metric.layer_names == ["original", "last"]
    metric.update(inputs, target)
    result = metric.compute()
    assert len(calls) == 3
    assert list(result["ssim"]) == ["original", "last"]
    assert torch.allclose(result["ssim"]["last"], full["ssim"]["last"])


def test_target_none_is_argmax_and_grad_disabled_context() -> None:
    model = trained_like(make_model())
    inputs, _ = batch()
    with torch.no_grad():
        argmax = model.eval()(inputs).argmax(1)
    explicit = model_randomization_check(model, input_x_gradient, inputs, argmax)
    with torch.no_grad():  # gradient explainers still run: the metric enables gradients itself
        implicit = model_randomization_check(model, input_x_gradient, inputs, None)
    assert torch.equal(explicit["spearman"]["last"], implicit["spearman"]["last"])


def test_inference_mode_names_the_trainer_flag() -> None:
    metric = ModelRandomizationCheck(make_model(), input_x_gradient)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"Trainer\(inference_mode=False\)"):
        metric.update(*batch())


def test_batch_permutation_invariance() -> None:
    inputs, target = batch(size=6)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    a = model_randomization_check(trained_like(make_model()), input_x_gradient, inputs, target)
    b = model_randomization_check(trained_like(make_model()), input_x_gradient, inputs[perm], target[perm])
    for similarity in a:
        for key in a[similarity]:
            assert torch.allclose(a[similarity][key], b[similarity][key], atol=1e-6)


def test_bad_arguments_and_outputs() -> None:
    model = make_model()
    with pytest.raises(TypeError, match="explain_fn"):
        ModelRandomizationCheck(model, "saliency")
    with pytest.raises(ValueError, match="similarity"):
        ModelRandomizationCheck(model, input_x_gradient, similarity="pearson")
    with pytest.raises(ValueError, match="normalize"):
        ModelRandomizationCheck(model, input_x_gradient, normalize="l2")
    with pytest.raises(TypeError, match="seed"):
        ModelRandomizationCheck(model, input_x_gradient, seed=1.5)
    with pytest.raises(TypeError, match="model"):
        ModelRandomizationCheck(lambda x: x, input_x_gradient)
    inputs, target = batch()
    with pytest.raises(ValueError, match="NaN"):
        ModelRandomizationCheck(model, input_x_gradient).update(inputs * float("nan"), target)
    with pytest.raises(ValueError, match="NaN"):
        ModelRandomizationCheck(model, lambda m, x, t: x * float("nan")).update(inputs, target)
    with pytest.raises(TypeError, match="attribution tensor"):
        ModelRandomizationCheck(model, lambda m, x, t: "map").update(inputs, target)
    with pytest.raises(ValueError, match="one map per input"):
        ModelRandomizationCheck(model, lambda m, x, t: x[:2]).update(inputs, target)
    shapes = iter([(8, 8)] + [(7, 7)] * 10)

    def shifting(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.rand(inputs.shape[0], *next(shapes))

    with pytest.raises(ValueError, match="on the trained model"):
        ModelRandomizationCheck(model, shifting).update(inputs, target)
    with pytest.raises(ValueError, match="target"):
        ModelRandomizationCheck(model, input_x_gradient).update(inputs, torch.tensor([0, 1, 2, 3]))


def _ddp_randomization(rank: int, world_size: int, inputs: torch.Tensor, target: torch.Tensor) -> dict:
    metric = ModelRandomizationCheck(trained_like(make_model()), input_x_gradient)
    half = inputs.shape[0] // world_size
    rows = slice(rank * half, (rank + 1) * half)
    metric.update(inputs[rows], target[rows])
    return metric.compute()


def test_ddp_equals_single_process(ddp) -> None:
    inputs, target = batch(size=4)
    single = ModelRandomizationCheck(trained_like(make_model()), input_x_gradient)
    single.update(inputs, target)
    expected = single.compute()
    for result in ddp(_ddp_randomization, inputs, target):
        for similarity in expected:
            for key in expected[similarity]:
                assert torch.allclose(result[similarity][key], expected[similarity][key], atol=1e-6)
