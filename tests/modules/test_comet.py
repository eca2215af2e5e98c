"""ComprehensiveAttribution (COMET): gradient routing, the frozen detector, the hinges, composition, logging,
errors, DDP and checkpoints."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_xai.callbacks import MultiHeadExplainer
from lightning_xai.data import ShapesDataModule
from lightning_xai.models import small_resnet
from lightning_xai.modules import ComprehensiveAttribution, small_selector, train_detector

pytestmark = pytest.mark.filterwarnings(
    "ignore:You are trying to `self.log\\(\\)`", "ignore:Found .* module\\(s\\) in eval mode"
)


def trainer(**kwargs) -> L.Trainer:
    settings = {
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "accelerator": "cpu",
    }
    return L.Trainer(**{**settings, **kwargs})


def tiny_data(**kwargs) -> ShapesDataModule:
    settings = {"batch_size": 4, "image_size": 16, "train_size": 8, "val_size": 4, "test_size": 4}
    return ShapesDataModule(**{**settings, **kwargs})


def tiny_module(**kwargs) -> ComprehensiveAttribution:
    torch.manual_seed(0)
    settings = {
        "selector": small_selector(width=4),
        "predictor": small_resnet(4, width=4),
        "detector": small_resnet(4, width=4),
    }
    return ComprehensiveAttribution(**{**settings, **kwargs})


# -- gradient routing ------------------------------------------------------------------------------------------


def _step_grads(module: ComprehensiveAttribution, x: torch.Tensor, y: torch.Tensor) -> dict[str, list]:
    module.zero_grad(set_to_none=True)
    module.compute_losses(x, y)["loss"].backward()
    return {
        "predictor": [p.grad.clone() for p in module.predictor.parameters()],
        "selector": [p.grad.clone() for p in module.selector.parameters()],
        "detector": [p.grad for p in module.detector.parameters()],
    }


def _reference_grads(module: ComprehensiveAttribution, x: torch.Tensor, y: torch.Tensor):
    hp = module.hparams
    mask = torch.sigmoid(module.selector(x))
    q = module.fill_value.to(x.dtype)
    selected, complement = mask * x + (1 - mask) * q, (1 - mask) * x + mask * q
    predictor_params = list(module.predictor.parameters())
    selector_params = list(module.selector.parameters())
    g_pred = torch.autograd.grad(F.cross_entropy(module.predictor(selected.detach()), y), predictor_params)
    l_p = F.cross_entropy(module.predictor(selected), y)
    l_d = F.cross_entropy(module.detector(complement), y)
    area = F.relu(mask.flatten(1).mean(1) - hp.area_threshold).mean()
    l_sel = hp.alpha * l_p + hp.beta * F.relu(l_p - l_d + hp.delta) + hp.area_weight * area
    g_sel = torch.autograd.grad(l_sel, selector_params)
    return list(g_pred), list(g_sel), float(F.relu(l_p - l_d + hp.delta).detach()), float(area.detach())


def _close(a: list, b: list) -> bool:
    return all(torch.allclose(u, v, rtol=1e-6, atol=1e-12) for u, v in zip(a, b, strict=True))


def test_gradient_routing_matches_separate_computations():
    module = tiny_module(area_threshold=0.2).double().train()
    x, y = torch.rand(4, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    # BatchNorm in training mode uses batch statistics: every forward below sees the same batch.
    ref_pred, ref_sel, hinge, area = _reference_grads(module, x, y)
    assert hinge > 0 and area > 0  # both terms are active, so the test sees their gradients
    grads = _step_grads(module, x, y)
    assert _close(grads["predictor"], ref_pred)
    assert _close(grads["selector"], ref_sel)
    assert all(g is None for g in grads["detector"])

    changed = copy.deepcopy(module)
    changed.hparams.beta, changed.hparams.area_weight = 40.0, 1000.0
    other = _step_grads(changed, x, y)
    assert _close(other["predictor"], grads["predictor"])  # β and λ never reach the predictor
    assert not _close(other["selector"], grads["selector"])  # ... but do reach the selector


def test_training_step_updates_predictor_batchnorm_statistics_once():
    module = tiny_module().train()
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    tracked = next(m for m in module.predictor.modules() if isinstance(m, nn.BatchNorm2d))
    before = int(tracked.num_batches_tracked)
    module.compute_losses(x, y)
    assert int(tracked.num_batches_tracked) == before + 1


def test_ablation_sends_no_gradient_through_the_detector():
    module = tiny_module(use_detector=False, area_threshold=1.0).double().train()
    x, y = torch.rand(4, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    losses = module.compute_losses(x, y)
    assert float(losses["hinge"]) == 0.0 and losses["L_D"] is not None
    module.zero_grad(set_to_none=True)
    losses["loss"].backward()
    mask = torch.sigmoid(module.selector(x))
    selected = mask * x
    expected = torch.autograd.grad(
        F.cross_entropy(module.predictor(selected), y), list(module.selector.parameters())
    )
    assert _close([p.grad for p in module.selector.parameters()], list(expected))


# -- the frozen detector -------------------------------------------------------------------------------------------


class _ModeRecorder(Callback):
    def __init__(self) -> None:
        self.modes: list[bool] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.modes.append(module.detector.training)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.modes.append(module.detector.training)


def test_detector_is_bitwise_unchanged_and_in_eval_mode_after_fit():
    module = tiny_module()
    before = {k: v.clone() for k, v in module.detector.state_dict().items()}
    predictor_before = [p.clone() for p in module.predictor.parameters()]
    recorder = _ModeRecorder()
    trainer(max_epochs=2, callbacks=[recorder]).fit(module, tiny_data())
    after = module.detector.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm buffers included
    assert recorder.modes and not any(recorder.modes)
    assert all(p.grad is None and not p.requires_grad for p in module.detector.parameters())
    assert not all(
        torch.equal(a, b) for a, b in zip(predictor_before, module.predictor.parameters(), strict=True)
    )
    module.train()
    assert module.training and not module.detector.training


def test_train_bn_detector_mode_follows_the_module():
    module = tiny_module(detector_mode="train_bn").train()
    assert module.detector.training
    bn = next(m for m in module.detector.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    module.compute_losses(torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    assert not torch.equal(before, bn.running_mean)
    assert all(p.grad is None for p in module.detector.parameters())


# -- the hinges ----------------------------------------------------------------------------------------------------


def test_area_hinge_is_zero_below_the_threshold_and_linear_above():
    module = tiny_module(area_threshold=0.6, area_weight=100.0)
    low = torch.full((2, 1, 4, 4), 0.5, requires_grad=True)
    value = module.area_term(low)
    assert float(value.detach()) == 0.0
    (grad,) = torch.autograd.grad(value, low)
    assert torch.count_nonzero(grad) == 0
    # sample 0 covers 0.8 (above τ), sample 1 covers 0.3 (below)
    mask = torch.cat([torch.full((1, 1, 4, 4), 0.8), torch.full((1, 1, 4, 4), 0.3)]).requires_grad_(True)
    value = module.hparams.area_weight * module.area_term(mask)
    assert torch.isclose(value, torch.tensor(100.0 * 0.2 / 2))
    (grad,) = torch.autograd.grad(value, mask)
    # slope λ/B with respect to the sample's mean coverage, spread over its 16 pixels
    assert torch.allclose(grad[0].sum(), torch.tensor(100.0 / 2)) and torch.count_nonzero(grad[1]) == 0
    bigger = mask.detach().clone()
    bigger[0] += 0.1
    assert torch.isclose(100.0 * module.area_term(bigger) - value.detach(), torch.tensor(100.0 * 0.1 / 2))


def test_detector_hinge_matches_the_spec():
    module = tiny_module(beta=4.0, delta=2.0)
    l_p = torch.tensor([1.0, 1.2], requires_grad=True)
    l_d = torch.tensor([2.0, 2.4], requires_grad=True)
    value = module.detector_term(l_p, l_d)  # batch means: 1.1 − 2.2 + 2 = 0.9
    assert torch.isclose(value, torch.tensor(4.0 * 0.9))
    inactive = module.detector_term(l_p, l_d + 5.0)
    assert float(inactive.detach()) == 0.0
    grads = torch.autograd.grad(inactive, (l_p, l_d))
    assert all(torch.count_nonzero(g) == 0 for g in grads)

    sample = tiny_module(beta=4.0, delta=2.0, hinge_reduction="sample")
    # per sample: max(0, 1 − 4 + 2) = 0 and max(0, 1.2 − 2.4 + 2) = 0.8, mean 0.4
    value = sample.detector_term(l_p, torch.tensor([4.0, 2.4]))
    assert torch.isclose(value, torch.tensor(4.0 * 0.4))

    unbounded = tiny_module(beta=4.0, detector_penalty="unbounded")
    assert torch.isclose(unbounded.detector_term(l_p, l_d), torch.tensor(-4.0 * 2.2))


# -- composition and the forward ---------------------------------------------------------------------------------


def test_composition_with_full_and_empty_masks():
    module = tiny_module(fill=[0.1, 0.2, 0.3])
    x = torch.rand(2, 3, 8, 8)
    q = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).expand_as(x)
    selected, complement = module.compose(x, torch.ones(2, 1, 8, 8))
    assert torch.equal(selected, x) and torch.allclose(complement, q)
    selected, complement = module.compose(x, torch.zeros(2, 1, 8, 8))
    assert torch.allclose(selected, q) and torch.equal(complement, x)


def test_fill_options():
    x = torch.ones(1, 3, 4, 4)
    assert torch.equal(tiny_module().compose(x, torch.zeros(1, 1, 4, 4))[0], torch.zeros_like(x))
    black = tiny_module(fill="black", normalization=([0.5, 0.5, 0.5], [0.25, 0.25, 0.25]))
    assert torch.allclose(black.compose(x, torch.zeros(1, 1, 4, 4))[0], torch.full_like(x, -2.0))
    with pytest.raises(ValueError, match="normalization"):
        tiny_module(fill="black")


@pytest.mark.parametrize("size", [64, 224])
def test_default_selector_mask_shape_and_range(size):
    torch.manual_seed(0)
    module = ComprehensiveAttribution(
        predictor=small_resnet(4, width=4), detector=small_resnet(4, width=4)
    ).eval()
    x = torch.rand(1, 3, size, size)
    logits, mask, detector_logits = module(x)
    assert type(module.selector).__name__ == "LRASPP"
    assert mask.shape == (1, 1, size, size) and float(mask.min()) >= 0 and float(mask.max()) <= 1
    assert logits.shape == detector_logits.shape == (1, 4)
    assert torch.equal(module.explain(x), mask)


def test_default_selector_trains_under_fit():
    torch.manual_seed(0)
    module = ComprehensiveAttribution(predictor=small_resnet(4, width=4), detector=small_resnet(4, width=4))
    selector_before = [p.clone() for p in module.selector.parameters()]
    trainer(max_steps=2).fit(module, tiny_data(image_size=32, batch_size=2, train_size=4))
    assert not all(
        torch.equal(a, b) for a, b in zip(selector_before, module.selector.parameters(), strict=True)
    )


def test_low_resolution_selector_output_is_resized():
    selector = nn.Conv2d(3, 1, 3, stride=4, padding=1)
    module = tiny_module(selector=selector).eval()
    _, mask, _ = module(torch.rand(2, 3, 16, 16))
    assert mask.shape == (2, 1, 16, 16)


# -- logging, data, callbacks ------------------------------------------------------------------------------------


class _LoggedKeys(Callback):
    def __init__(self) -> None:
        self.keys: list[set[str]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.keys.append(set(trainer.callback_metrics))


def test_every_loss_term_is_logged_each_step():
    recorder = _LoggedKeys()
    trainer(max_epochs=1, callbacks=[recorder]).fit(tiny_module(), tiny_data())
    wanted = {f"train_{k}_step" for k in ("L_P", "L_D", "hinge", "area", "L_sel", "paper_objective")}
    assert len(recorder.keys) == 2
    assert all(wanted <= keys for keys in recorder.keys)


def test_train_detector_helper_returns_a_trained_frozen_ready_classifier():
    data = tiny_data()
    detector = train_detector(data, small_resnet(4, width=4), max_epochs=1)
    assert isinstance(detector, nn.Module) and not detector.training
    module = ComprehensiveAttribution(small_selector(4), small_resnet(4, width=4), detector)
    assert module.num_classes == 4 and all(not p.requires_grad for p in module.detector.parameters())


def test_multi_head_explainer_refuses_this_module_with_a_clear_message():
    # MHEX adds heads to a classifier trained through a loss attribute; COMET's objective is its own.
    with pytest.raises(AttributeError, match="criterion"):
        MultiHeadExplainer().setup(None, tiny_module(), "fit")


# -- errors --------------------------------------------------------------------------------------------------------


def test_detector_with_another_class_count_is_an_error():
    with pytest.raises(ValueError, match="the detector has 3"):
        tiny_module(detector=small_resnet(3, width=4))
    # class counts that cannot be read from the modules are checked at the first forward
    opaque = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    module = tiny_module(detector=opaque, num_classes=4).eval()
    with pytest.raises(ValueError, match="detector returned 3 classes, expected 4"):
        module(torch.rand(2, 3, 16, 16))


def test_selector_with_several_channels_is_an_error():
    module = tiny_module(selector=nn.Conv2d(3, 2, 3, padding=1)).eval()
    with pytest.raises(ValueError, match="one-channel map"):
        module(torch.rand(2, 3, 16, 16))


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="`detector` is required"):
        ComprehensiveAttribution(small_selector(4), small_resnet(4, width=4), None)
    with pytest.raises(ValueError, match="area_threshold"):
        tiny_module(area_threshold=1.5)
    with pytest.raises(ValueError, match="hinge_reduction"):
        tiny_module(hinge_reduction="pixel")
    with pytest.raises(ValueError, match="selector"):
        tiny_module(selector="unet")


# -- checkpoints and DDP -------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    module = ComprehensiveAttribution(
        "small_selector", "small_resnet", small_resnet(4), beta=3.0, fill=[0.2, 0.3, 0.4]
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc", mode="max")
    trainer(max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint], limit_val_batches=1).fit(
        module, tiny_data(image_size=32)
    )
    path = checkpoint.best_model_path
    assert path
    restored = ComprehensiveAttribution.load_from_checkpoint(path, detector=small_resnet(4))
    assert restored.hparams.beta == 3.0 and restored.hparams.fill == pytest.approx([0.2, 0.3, 0.4])
    x = torch.rand(2, 3, 16, 16)
    module.eval()
    restored.eval()
    with torch.no_grad():
        for a, b in zip(module(x), restored(x), strict=True):
            assert torch.equal(a, b)


def _ddp_comet_step(rank: int, world_size: int) -> list[torch.Tensor]:
    from torch.nn.parallel import DistributedDataParallel

    class Step(nn.Module):
        def __init__(self, module: ComprehensiveAttribution) -> None:
            super().__init__()
            self.module = module

        def forward(self, x, y):
            return self.module.compute_losses(x, y)["loss"]

    torch.manual_seed(0)
    module = tiny_module().train()
    wrapped = DistributedDataParallel(Step(module), find_unused_parameters=False)
    optimizers = module.configure_optimizers()
    torch.manual_seed(100 + rank)  # each rank its own batch
    for _ in range(2):
        x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 4, (4,))
        loss = wrapped(x, y)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
    return [p.detach().clone() for p in module.parameters()]


def test_ddp_two_processes_keep_equal_parameters(ddp):
    rank0, rank1 = ddp(_ddp_comet_step)
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank1, strict=True))
    fresh = [p.detach() for p in tiny_module().parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(rank0, fresh, strict=True))


def test_image_shaped_fill_survives_the_hyperparameters():
    fill = torch.rand(3, 16, 16)
    module = tiny_module(fill=fill)
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(module.compose(x, torch.zeros(2, 1, 16, 16))[0], fill.expand_as(x))
    rebuilt = tiny_module(**{"fill": module.hparams.fill})
    assert torch.equal(rebuilt.fill_value, module.fill_value)
    with pytest.raises(ValueError, match="fill"):
        tiny_module(fill=torch.rand(2, 3, 4, 4))
