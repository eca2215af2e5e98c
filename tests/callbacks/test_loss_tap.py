"""The loss tap: per-sample losses of common criteria, weights, auxiliary terms, sharing and restoring."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai.callbacks import LossTap, PerSampleLoss, SampleWeightedLossMixin, find_loss_tap

GEN = torch.Generator().manual_seed(0)
LOGITS = torch.randn(6, 4, generator=GEN)
LABELS = torch.tensor([0, 1, 2, 3, 1, 2])
PROBS = torch.softmax(torch.randn(6, 4, generator=GEN), 1)
MULTI = (torch.rand(6, 4, generator=GEN) > 0.5).float()
CLASS_W = torch.tensor([0.5, 1.0, 2.0, 1.5])


CASES = [
    (nn.CrossEntropyLoss(), LOGITS, LABELS),
    (nn.CrossEntropyLoss(weight=CLASS_W, label_smoothing=0.1), LOGITS, LABELS),
    (nn.CrossEntropyLoss(ignore_index=1), LOGITS, LABELS),
    (nn.CrossEntropyLoss(weight=CLASS_W, ignore_index=2), LOGITS, LABELS),
    (nn.CrossEntropyLoss(label_smoothing=0.2), LOGITS, PROBS),
    (nn.CrossEntropyLoss(), torch.randn(6, 4, 5, generator=GEN), torch.randint(0, 4, (6, 5), generator=GEN)),
    (nn.CrossEntropyLoss(reduction="sum"), LOGITS, LABELS),
    (nn.NLLLoss(weight=CLASS_W), LOGITS.log_softmax(1), LABELS),
    (nn.BCEWithLogitsLoss(pos_weight=torch.full((4,), 2.0)), LOGITS, MULTI),
    (nn.BCEWithLogitsLoss(weight=CLASS_W), LOGITS, MULTI),
    (nn.MSELoss(), LOGITS, PROBS),
    (nn.SmoothL1Loss(beta=0.5), LOGITS, PROBS),
    (nn.KLDivLoss(reduction="batchmean"), LOGITS.log_softmax(1), PROBS),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_per_sample_losses_reduce_to_the_criterion(case):
    criterion, inputs, target = CASES[case]
    parts = PerSampleLoss(criterion)(inputs, target)
    assert parts.per_sample.shape == (6,)
    assert torch.allclose(parts.reduce(), criterion(inputs, target), atol=1e-6)
    assert criterion.reduction in ("mean", "sum", "batchmean")  # restored after the call


def test_per_sample_losses_of_functions():
    parts = PerSampleLoss(F.cross_entropy)(LOGITS, LABELS, weight=CLASS_W, ignore_index=3)
    assert torch.allclose(parts.reduce(), F.cross_entropy(LOGITS, LABELS, weight=CLASS_W, ignore_index=3))
    parts = PerSampleLoss(F.binary_cross_entropy_with_logits)(LOGITS, MULTI, reduction="sum")
    assert torch.allclose(parts.reduce(), F.binary_cross_entropy_with_logits(LOGITS, MULTI, reduction="sum"))


@pytest.mark.parametrize(
    "criterion, message",
    [
        (nn.CrossEntropyLoss(reduction="none"), "reduction='none'"),
        (nn.Linear(2, 2), "SampleWeightedLossMixin"),
        (lambda x, y: (x - y).mean(), "no `reduction` argument"),
    ],
)
def test_unsupported_criteria_fail_up_front(criterion, message):
    with pytest.raises(TypeError, match=message):
        PerSampleLoss(criterion)


class Plain(L.LightningModule):
    def __init__(self, criterion=None) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 4)
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()


def test_inactive_tap_returns_the_criterion_untouched_and_keeps_state_dict():
    module = Plain(nn.CrossEntropyLoss(weight=CLASS_W))
    keys = list(module.state_dict())
    owner = object()
    tap = LossTap.acquire(module, owner)
    assert list(module.state_dict()) == keys
    assert torch.equal(module.criterion(LOGITS, LABELS), F.cross_entropy(LOGITS, LABELS, weight=CLASS_W))
    tap.open_batch(owner)  # open, but nothing published and no term: still the plain value
    assert torch.equal(module.criterion(LOGITS, LABELS), F.cross_entropy(LOGITS, LABELS, weight=CLASS_W))
    tap.release(owner)
    assert find_loss_tap(module) is None and not module.criterion._forward_hooks


def test_weighted_loss_equals_hand_weighted_mean():
    module, owner = Plain(), object()
    tap = LossTap.acquire(module, owner)
    weights = torch.tensor([0.1, 2.0, 1.0, 0.5, 3.0, 1.0])
    tap.open_batch(owner)
    tap.set_sample_weights(owner, weights)
    per_sample = F.cross_entropy(LOGITS, LABELS, reduction="none")
    assert torch.allclose(module.criterion(LOGITS, LABELS), (weights * per_sample).sum() / 6)
    tap.close_batch(owner)  # weights are for one batch only
    assert torch.equal(module.criterion(LOGITS, LABELS), F.cross_entropy(LOGITS, LABELS))
    tap.open_batch(owner)
    with pytest.raises(ValueError, match="one weight per sample"):
        tap.set_sample_weights(owner, torch.ones(3))
        module.criterion(LOGITS, LABELS)
    tap.close_batch(owner)
    with pytest.raises(RuntimeError, match="open training batch"):
        tap.set_sample_weights(owner, weights)


def test_class_weights_keep_their_denominator():
    module, owner = Plain(nn.CrossEntropyLoss(weight=CLASS_W)), object()
    tap = LossTap.acquire(module, owner)
    tap.open_batch(owner)
    weights = torch.linspace(0.5, 1.5, 6)
    tap.set_sample_weights(owner, weights)
    per_sample = F.cross_entropy(LOGITS, LABELS, weight=CLASS_W, reduction="none")
    expected = (weights * per_sample).sum() / CLASS_W[LABELS].sum()
    assert torch.allclose(module.criterion(LOGITS, LABELS), expected)


def test_several_owners_share_one_tap_with_weights_and_terms():
    module = Plain()
    first, second = object(), object()
    tap = LossTap.acquire(module, first)
    assert LossTap.acquire(module, second) is tap
    head = torch.randn(6, 4, generator=GEN)

    def per_sample_term(inputs, target, per_sample_loss):
        return 0.3 * per_sample_loss(head, target).per_sample

    tap.add_term(first, per_sample_term)
    tap.add_term(second, lambda inputs, target, per_sample_loss: torch.tensor(0.25))
    w1, w2 = torch.rand(6, generator=GEN), torch.rand(6, generator=GEN)
    for owner, w in ((first, w1), (second, w2)):
        tap.open_batch(owner)
        tap.set_sample_weights(owner, w)
    main = F.cross_entropy(LOGITS, LABELS, reduction="none")
    aux = F.cross_entropy(head, LABELS, reduction="none")
    expected = (w1 * w2 * (main + 0.3 * aux)).sum() / 6 + 0.25
    assert torch.allclose(module.criterion(LOGITS, LABELS), expected)
    tap.release(first)
    assert find_loss_tap(module) is tap and module.criterion._forward_hooks
    tap.release(second)
    assert find_loss_tap(module) is None and not module.criterion._forward_hooks


def test_function_attribute_is_replaced_and_restored():
    class WithFunction(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.loss_fn = F.cross_entropy

    module, owner = WithFunction(), object()
    tap = LossTap.acquire(module, owner)
    assert tap.attribute == "loss_fn" and module.loss_fn is not F.cross_entropy
    tap.open_batch(owner)
    tap.set_sample_weights(owner, torch.zeros(6))
    assert float(module.loss_fn(LOGITS, LABELS)) == 0.0
    tap.release(owner)
    assert module.loss_fn is F.cross_entropy

    class ClassAttribute(L.LightningModule):
        loss_func = staticmethod(F.cross_entropy)

    module = ClassAttribute()
    tap = LossTap.acquire(module, owner)
    tap.release(owner)
    assert "loss_func" not in vars(module) and module.loss_func is F.cross_entropy


def test_loss_attr_and_clear_error_without_a_loss():
    class Custom(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.my_loss = nn.CrossEntropyLoss()

    owner = object()
    with pytest.raises(AttributeError, match=r"no attribute `nope`.*SampleWeightedLossMixin"):
        LossTap.acquire(Custom(), owner, loss_attr="nope")
    tap = LossTap.acquire(Custom(), owner, loss_attr="my_loss")
    assert tap.attribute == "my_loss" and not tap.inline
    module = Custom()  # no known loss attribute: the losses called in training_step are tapped
    tap = LossTap.acquire(module, owner)
    assert tap.inline and tap.attribute is None and "training_step" in vars(module)
    tap.release(owner)
    assert "training_step" not in vars(module)


def test_mixin_module_calls_the_tap_itself():
    class Mixed(SampleWeightedLossMixin, L.LightningModule):
        pass

    module, owner = Mixed(), object()
    assert torch.allclose(module.sample_weighted_loss(LOGITS, LABELS), F.cross_entropy(LOGITS, LABELS))
    tap = LossTap.acquire(module, owner)
    assert tap.attribute is None
    tap.open_batch(owner)
    weights = torch.arange(6.0)
    tap.set_sample_weights(owner, weights)
    per_sample = F.cross_entropy(LOGITS, LABELS, reduction="none")
    assert torch.allclose(module.sample_weighted_loss(LOGITS, LABELS), (weights * per_sample).mean())


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)
        self.criterion = nn.CrossEntropyLoss()
        self.seen: list[tuple[str, float, float]] = []

    def _step(self, batch, stage):
        x, y = batch
        logits = self.layer(x)
        loss = self.criterion(logits, y)
        self.seen.append((stage, float(loss.detach()), float(F.cross_entropy(logits, y).detach())))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class HalfWeights(L.Callback):
    def setup(self, trainer, pl_module, stage):
        self.tap = LossTap.acquire(pl_module, self)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.tap.open_batch(self)
        self.tap.set_sample_weights(self, torch.full((batch[0].shape[0],), 0.5))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.tap.close_batch(self)

    def teardown(self, trainer, pl_module, stage):
        self.tap.release(self)


def test_tap_acts_on_training_batches_only_in_a_trainer():
    data = TensorDataset(torch.randn(8, 3, generator=GEN), torch.randint(0, 2, (8,), generator=GEN))
    module = Classifier()
    criterion = module.criterion
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[HalfWeights()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    train = [(a, b) for stage, a, b in module.seen if stage == "train"]
    val = [(a, b) for stage, a, b in module.seen if stage == "val"]
    assert train and val
    assert all(a == pytest.approx(0.5 * b) for a, b in train)
    assert all(a == b for a, b in val)
    assert module.criterion is criterion and not criterion._forward_hooks and find_loss_tap(module) is None


def test_terms_get_the_criterion_with_the_calls_options():
    class FunctionLoss(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.loss_fn = F.cross_entropy

    module, owner = FunctionLoss(), object()
    tap = LossTap.acquire(module, owner)
    seen = []
    tap.add_term(
        owner, lambda input, target, loss_of: seen.append(loss_of(input, target).reduce()) or seen[-1]
    )
    tap.open_batch(owner)
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    loss = module.loss_fn(LOGITS, LABELS, weight=weight, label_smoothing=0.2)
    tap.close_batch(owner)
    tap.release(owner)
    own = F.cross_entropy(LOGITS, LABELS, weight=weight, label_smoothing=0.2)
    assert torch.allclose(seen[0], own) and torch.allclose(loss, 2 * own)


def test_the_loss_tap_names_still_import_from_their_old_module():
    import importlib
    import sys

    import lightning_xai.losses as new

    sys.modules.pop("lightning_xai.callbacks.loss_tap", None)
    with pytest.warns(DeprecationWarning, match=r"lightning_xai\.losses"):
        old = importlib.import_module("lightning_xai.callbacks.loss_tap")

    for name in new.__all__:
        assert getattr(old, name) is getattr(new, name)
