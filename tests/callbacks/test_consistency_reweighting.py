"""ExplanationConsistencyReweighting: scores, weights, the tapped loss, schedules, resume and errors."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai.callbacks import ExplanationConsistencyReweighting, find_loss_tap
from lightning_xai.data import ShapesDataModule, ShapesDataset
from lightning_xai.explain import background_pgd, grad_cam
from lightning_xai.explain.gradcam import grad_cam_and_input_gradient
from lightning_xai.losses import consistency_weights
from lightning_xai.metrics.functional import score_consistency
from lightning_xai.models import small_resnet
from lightning_xai.modules import ImageClassifier

pytestmark = [
    pytest.mark.filterwarnings("ignore:ExplanationConsistencyReweighting scores the training dataset"),
    pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
]


def shapes(**kwargs) -> ShapesDataModule:
    settings = {"batch_size": 6, "image_size": 16, "train_size": 12, "val_size": 6, "test_size": 6, "seed": 0}
    return ShapesDataModule(**{**settings, **kwargs})


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


class Recorder(L.LightningModule):
    """A plain user module (loss in ``self.criterion``) that also records what each training loss was made of."""

    def __init__(
        self,
        watch: ExplanationConsistencyReweighting | None = None,
        seed: int = 0,
        network: nn.Module | None = None,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.model = small_resnet(num_classes=4, width=4) if network is None else network
        self.criterion = nn.CrossEntropyLoss()
        self.watch = [watch]  # a list, so the callback is not a submodule
        self.records: list[dict] = []
        self.val_records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["label"])
        watch = self.watch[0]
        self.records.append(
            {
                "epoch": self.current_epoch,
                "loss": loss.detach().clone(),
                "per_sample": F.cross_entropy(logits.detach(), batch["label"], reduction="none"),
                "index": batch["index"].clone(),
                "weights": None
                if watch is None or watch.batch_weights is None
                else watch.batch_weights.clone(),
            }
        )
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["label"])
        self.val_records.append((loss.detach(), F.cross_entropy(logits, batch["label"])))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def positive_cnn() -> nn.Module:
    """A network whose Grad-CAM of any class is positive everywhere (never a degenerate zero map)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)
    )
    with torch.no_grad():
        net[0].bias.fill_(0.5)
        net[0].weight.mul_(0.1)
        net[4].weight.abs_()
    return net


# -- scores and weights ---------------------------------------------------------------------------------------


def test_weights_are_normalised_clipped_and_monotone_in_inconsistency():
    v = torch.tensor([0.05, 0.10, 0.20, 0.02, 0.13], dtype=torch.float64)
    w, clipped = consistency_weights(v)
    assert float(clipped) == 0.0 and torch.isclose(w.double().mean(), torch.tensor(1.0, dtype=torch.float64))
    order = torch.argsort(v)
    assert bool((w[order][1:] >= w[order][:-1]).all())  # lower consistency (higher v) -> higher weight
    w, clipped = consistency_weights(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    assert float(w.min()) == pytest.approx(0.1) and float(w.max()) == pytest.approx(5.0)  # 8 and 0 clipped
    assert float(clipped) == 1.0
    w, _ = consistency_weights(torch.tensor([0.3, 0.2, 0.1]), clip=(0.5, 1.2))
    assert bool(((w >= 0.5) & (w <= 1.2)).all()) and float(w[0]) == pytest.approx(1.2)
    w, clipped = consistency_weights(torch.full((4,), 1e-8))  # everything consistent: no reweighting
    assert torch.equal(w, torch.ones(4)) and float(clipped) == 0.0


def test_clipped_weights_keep_mean_one_and_degenerate_maps_are_left_out():
    """The rule issue 33 set: clipping no longer shrinks the loss (the clipped weights still average 1, inside the
    bounds), and a degenerate map (E = 0 by convention, not by measurement) gets weight 1 and enters no mean."""
    v = torch.rand(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 6
    w, clipped = consistency_weights(v)
    assert float(clipped) > 0.1 and float(w.double().mean()) == pytest.approx(1.0, abs=1e-6)
    assert float(w.min()) >= 0.1 - 1e-6 and float(w.max()) <= 5.0 + 1e-6
    order = torch.argsort(v)
    assert bool((w[order][1:] >= w[order][:-1] - 1e-6).all())
    informative = torch.ones(500, dtype=torch.bool)
    informative[:100] = False
    v_with_degenerate = torch.where(informative, v, torch.ones_like(v))  # E = 0 -> v = 1 on degenerate maps
    w2, _ = consistency_weights(v_with_degenerate, informative=informative)
    assert torch.equal(w2[:100], torch.ones(100))
    torch.testing.assert_close(w2[100:], consistency_weights(v[100:])[0])  # as if they were not there
    # out of reach: samples with v = 0 stay at the floor, the rest at the ceiling
    w3, _ = consistency_weights(torch.tensor([1.0] + [0.0] * 7))
    assert torch.allclose(w3, torch.tensor([5.0] + [0.1] * 7))


def _pixels_and_labels(n: int = 4, size: int = 16):
    ds = ShapesDataset(n, image_size=size, seed=3)
    return torch.stack([ds[i]["image"] for i in range(n)]), torch.stack([ds[i]["label"] for i in range(n)])


def test_scores_lie_in_unit_interval_and_eps_zero_gives_one():
    model = small_resnet(num_classes=4, width=4)
    x, y = _pixels_and_labels()
    scores = score_consistency(model, x, y)
    assert scores.consistency.dtype == torch.float64
    assert bool(((scores.consistency >= 0) & (scores.consistency <= 1 + 1e-9)).all())
    assert scores.background.shape == (4, 1, 16, 16) and scores.background.dtype == torch.bool
    # eps = 0: E = 1 for every sample with a non-zero map; zero maps (frequent at random init) score 0
    same = score_consistency(model, x, y, eps=0.0)
    assert torch.allclose(same.consistency, (~same.degenerate).double(), atol=1e-6)
    same = score_consistency(positive_cnn(), x, y, layer="1", eps=0.0)
    assert not same.degenerate.any()
    assert torch.allclose(same.consistency, torch.ones(4, dtype=torch.float64), atol=1e-6)


class _CountingModel(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_the_first_attack_step_reuses_the_clean_grad_cam_forward():
    """score_consistency = grad_cam + background_pgd + grad_cam, with the first PGD gradient taken from the clean
    Grad-CAM's forward: the same attacked images and scores, one forward fewer (1 + (K - 1) + 1)."""
    torch.manual_seed(0)
    net = small_resnet(num_classes=4, width=4).eval()
    counting = _CountingModel(net).eval()
    x, y = _pixels_and_labels()
    heat = grad_cam(net, x, y, "layer4", upsample=True, normalize=True)
    background = heat < 0.5
    attacked = background_pgd(net, x, y, background, eps=8 / 255, step=2 / 255, steps=5)
    expected = F.cosine_similarity(
        heat.flatten(1),
        grad_cam(net, attacked, y, "layer4", upsample=True, normalize=True).flatten(1),
        eps=1e-8,
    )
    scores = score_consistency(counting, x, y, layer=net.layer4)
    assert counting.calls == 1 + 4 + 1
    assert torch.equal(scores.background, background)
    torch.testing.assert_close(scores.consistency, expected.double(), rtol=0, atol=1e-6)
    cam, gradient = grad_cam_and_input_gradient(net, x, y, "layer4")
    assert torch.equal(cam, heat)
    leaf = x.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(F.cross_entropy(net(leaf), y, reduction="sum"), leaf)
    assert torch.equal(gradient, reference)
    with pytest.raises(ValueError, match="random_start"):
        background_pgd(net, x, y, background, initial_gradient=gradient, random_start=True)


def test_zero_maps_score_zero_and_count_as_degenerate():
    model = small_resnet(num_classes=4, width=4)
    for module in model.modules():  # a dead network: every feature map, hence every Grad-CAM, is zero
        if isinstance(module, nn.Conv2d):
            nn.init.zeros_(module.weight)
        if isinstance(module, nn.BatchNorm2d):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    x, y = _pixels_and_labels(2)
    scores = score_consistency(model, x, y)
    assert torch.equal(scores.consistency, torch.zeros(2, dtype=torch.float64))
    assert bool(scores.degenerate.all()) and bool(scores.background.all())  # H = 0: all background


def test_prediction_agreement_zeroes_changed_predictions_only():
    model = small_resnet(num_classes=4, width=4)
    x, y = _pixels_and_labels()
    plain = score_consistency(model, x, y, eps=0.3, step=0.1)
    agreed = score_consistency(model, x, y, eps=0.3, step=0.1, prediction_agreement=True)
    kept = agreed.consistency > 0
    assert torch.allclose(agreed.consistency[kept], plain.consistency[kept])
    assert bool((agreed.consistency <= plain.consistency + 1e-12).all())


def test_scoring_leaves_the_model_as_it_was():
    model = small_resnet(num_classes=4, width=4).train()
    x, y = _pixels_and_labels()
    F.cross_entropy(model(x), y).backward()
    model.layer1.requires_grad_(False)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    flags = {n: m.training for n, m in model.named_modules()}
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    score_consistency(model, x, y)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())  # eval mode: BN stats untouched
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters() if p.grad is not None)
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_out_of_range_pixels_need_mean_and_std():
    model = small_resnet(num_classes=4, width=4)
    x, y = _pixels_and_labels(2)
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    with pytest.raises(ValueError, match=r"mean.*std"):
        score_consistency(model, (x - 0.5) / 0.25, y)
    scores = score_consistency(model, (x - 0.5) / 0.25, y, mean=mean, std=std)
    assert scores.consistency.shape == (2,)
    with pytest.raises(ValueError, match="multi-label"):
        score_consistency(model, x, F.one_hot(y, 4))


# -- the callback in a Trainer --------------------------------------------------------------------------------


def test_epoch_mode_tapped_loss_equals_hand_weighted_loss_after_warmup():
    data = shapes(val_size=6)
    callback = ExplanationConsistencyReweighting(warmup_epochs=1, refresh_every=1, refresh_fraction=0.5)
    module = Recorder(callback)
    criterion = module.criterion
    fit = trainer(max_epochs=3, callbacks=[callback], limit_val_batches=1)
    fit.fit(module, data)
    assert callback.n_refreshes == 2 and callback.last_refresh_epoch == 2
    warmup = [r for r in module.records if r["epoch"] == 0]
    weighted = [r for r in module.records if r["epoch"] > 0]
    assert warmup and weighted
    for r in warmup:  # weight 1: the criterion's own mean
        assert r["weights"] is None and torch.allclose(r["loss"], r["per_sample"].mean(), atol=1e-6)
    for r in weighted:
        assert torch.allclose(r["loss"], (r["weights"] * r["per_sample"]).mean(), atol=1e-6)
    last = [r for r in module.records if r["epoch"] == 2]
    for r in last:  # looked up by dataset index in the table of the latest refresh
        assert torch.equal(r["weights"], callback.weights[r["index"]])
    # the table: low consistency -> high weight; bounds; scored everything on the first refresh
    v, w = callback.v, callback.weights
    assert v.shape == w.shape == (12,) and bool(callback.scored.all())
    order = torch.argsort(v)
    assert bool((w[order][1:] >= w[order][:-1]).all())
    assert bool(((w >= 0.1) & (w <= 5.0)).all())
    if not bool(((v / v.mean() < 0.1) | (v / v.mean() > 5)).any()):
        assert float(w.double().mean()) == pytest.approx(1.0, abs=1e-6)
    # validation is never weighted; after fit the user's criterion is back as it was
    assert module.val_records and all(torch.allclose(a, b) for a, b in module.val_records)
    assert module.criterion is criterion and not criterion._forward_hooks and find_loss_tap(module) is None


def test_batch_mode_scores_each_nth_batch_and_weights_the_loss():
    data = shapes(batch_size=4)  # 3 batches per epoch
    callback = ExplanationConsistencyReweighting(refresh="batch", warmup_epochs=1, every_n_steps=2)
    module = Recorder(callback)
    trainer(max_epochs=2, callbacks=[callback]).fit(module, data)
    assert [r["weights"] is not None for r in module.records] == [False] * 3 + [False, True, False]
    for r in module.records:
        expected = r["per_sample"].mean() if r["weights"] is None else (r["weights"] * r["per_sample"]).mean()
        assert torch.allclose(r["loss"], expected, atol=1e-6)
    w = module.records[4]["weights"]
    assert bool(((w >= 0.1) & (w <= 5.0)).all()) and callback.weights is None  # no table in batch mode


def test_the_attack_defaults_depend_on_the_refresh_mode():
    epoch = ExplanationConsistencyReweighting()
    assert (epoch.scoring.eps, epoch.scoring.step, epoch.scoring.steps) == (8 / 255, 2 / 255, 5)
    batch = ExplanationConsistencyReweighting(refresh="batch", eps=4 / 255)
    assert (batch.scoring.eps, batch.scoring.step, batch.scoring.steps) == (4 / 255, 4 / 255, 1)
    given = ExplanationConsistencyReweighting(refresh="batch", step=1 / 255, steps=3)
    assert (given.scoring.step, given.scoring.steps) == (1 / 255, 3)
    assert batch.config()["steps"] == 1 and epoch.config()["steps"] == 5


def test_unmodified_image_classifier_gets_a_table_and_logs_the_refresh():
    data = shapes()
    module = ImageClassifier("small_resnet", num_classes=4)
    callback = ExplanationConsistencyReweighting(warmup_epochs=0, score_batch_size=5)
    fit = trainer(callbacks=[callback])
    fit.fit(module, data)
    assert callback.v.shape == (12,) and bool(callback.scored.all()) and callback.n_refreshes == 1
    metrics = fit.callback_metrics
    assert float(metrics["ece/consistency"]) == pytest.approx(1.0 - float(callback.v.mean()), abs=1e-6)
    assert float(metrics["ece/n_scored"]) == 12.0
    # zero maps score E = 0 (v = 1); every degenerate sample is counted
    assert float(metrics["ece/n_degenerate"]) <= float((callback.v == 1.0).sum())
    assert float(metrics["ece/weight_p50"]) == pytest.approx(float(callback.weights.quantile(0.5)), abs=1e-6)
    # degenerate maps are out of the reweighting: weight 1; the others average 1
    assert float(metrics["ece/n_degenerate"]) == float(callback.degenerate.sum())
    assert bool((callback.weights[callback.degenerate] == 1.0).all())
    if bool((~callback.degenerate).any()):
        assert float(callback.weights[~callback.degenerate].double().mean()) == pytest.approx(1.0, abs=1e-5)
    for key in ("ece/inconsistency", "ece/weight_p05", "ece/weight_p95", "ece/clipped_fraction"):
        assert key in metrics


def test_eps_zero_gives_weight_one_everywhere():
    callback = ExplanationConsistencyReweighting(warmup_epochs=0, eps=0.0, layer="model.1")
    module = Recorder(callback, network=positive_cnn())
    fit = trainer(callbacks=[callback])
    fit.fit(module, shapes())
    assert torch.allclose(callback.v, torch.zeros(12, dtype=torch.float64), atol=1e-6)
    assert torch.equal(callback.weights, torch.ones(12))
    assert float(fit.callback_metrics["ece/consistency"]) == pytest.approx(1.0, abs=1e-6)
    assert float(fit.callback_metrics["ece/n_degenerate"]) == 0.0


def test_same_seed_same_tables_and_subsets():
    def table():
        callback = ExplanationConsistencyReweighting(
            warmup_epochs=0, refresh_every=1, refresh_fraction=0.5, seed=7, layer="model.1"
        )
        trainer(max_epochs=2, callbacks=[callback]).fit(Recorder(callback, network=positive_cnn()), shapes())
        return callback

    a, b = table(), table()
    assert torch.equal(a.v, b.v) and torch.equal(a.weights, b.weights)
    subset = a.refresh_indices(12, 1)
    assert len(subset) == 6 and torch.equal(subset, b.refresh_indices(12, 1))
    assert bool((subset[1:] > subset[:-1]).all()) and not torch.equal(subset, a.refresh_indices(12, 2))


def test_score_dataloader_and_score_transform_are_used_for_scoring():
    class Transformed(torch.utils.data.Dataset):
        def __init__(self, base):
            self.base, self.transform = base, None

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            item = dict(self.base[i])
            if self.transform is not None:
                item["image"] = self.transform(item["image"])
            return item

    base = ShapesDataset(8, image_size=16, seed=2)
    seen = []

    def spy(image):
        seen.append(image.shape)
        return image

    train = Transformed(base)
    callback = ExplanationConsistencyReweighting(warmup_epochs=0, score_transform=spy)
    trainer(callbacks=[callback]).fit(Recorder(callback), DataLoader(train, batch_size=4))
    assert len(seen) == 8 and train.transform is None  # applied while scoring only, then restored
    other = ExplanationConsistencyReweighting(warmup_epochs=0, score_dataloader=DataLoader(ShapesDataset(5)))
    with pytest.raises(ValueError, match="5 samples but the training set has 8"):
        trainer(callbacks=[other]).fit(Recorder(other), DataLoader(base, batch_size=4))


# -- resume ---------------------------------------------------------------------------------------------------


def test_resume_restores_the_table_and_the_schedule(tmp_path):
    data = shapes()
    callback = ExplanationConsistencyReweighting(warmup_epochs=0, refresh_every=3)
    fit = trainer(callbacks=[callback])
    fit.fit(Recorder(callback), data)
    path = tmp_path / "ece.ckpt"
    fit.save_checkpoint(path)
    saved = callback.state_dict()

    # state_dict -> new callback -> load_state_dict
    fresh = ExplanationConsistencyReweighting(warmup_epochs=0, refresh_every=3)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.v, callback.v) and torch.equal(fresh.weights, callback.weights)
    assert (
        torch.equal(fresh.scored, callback.scored)
        and fresh.next_refresh_epoch == callback.next_refresh_epoch == 3
    )

    # a resumed run continues with the table: epoch 1 is no refresh epoch, its losses use the saved weights
    resumed = ExplanationConsistencyReweighting(warmup_epochs=0, refresh_every=3)
    module = Recorder(resumed)
    trainer(max_epochs=2, callbacks=[resumed]).fit(module, data, ckpt_path=path)
    assert resumed.n_refreshes == 1 and torch.equal(resumed.v, saved["v"])
    assert module.records and all(r["epoch"] == 1 for r in module.records)
    for r in module.records:
        assert torch.equal(r["weights"], saved["weights"][r["index"]])
        assert torch.allclose(r["loss"], (r["weights"] * r["per_sample"]).mean(), atol=1e-6)

    with pytest.warns(UserWarning, match="eps"):
        ExplanationConsistencyReweighting(eps=4 / 255, warmup_epochs=0, refresh_every=3).load_state_dict(
            saved
        )


# -- errors ---------------------------------------------------------------------------------------------------


class NoLoss(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = small_resnet(num_classes=4, width=4)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class HandWrittenLoss(NoLoss):
    def training_step(self, batch, batch_idx):
        return -self(batch[0]).log_softmax(1).gather(1, batch[1][:, None]).mean()


class TupleModule(NoLoss):
    def __init__(self):
        super().__init__()
        self.criterion = nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        return self.criterion(self(batch[0]), batch[1])


def _tuple_loader():
    x, y = _pixels_and_labels(4)
    return DataLoader(TensorDataset(x, y), batch_size=2)


def test_clear_errors_for_missing_loss_indices_and_bad_arguments():
    with pytest.raises(RuntimeError, match="called no loss function that the tap can reach"):
        trainer(callbacks=[ExplanationConsistencyReweighting(refresh="batch")]).fit(
            HandWrittenLoss(), _tuple_loader()
        )
    # epoch mode on batches without an index: recovered from the sampler, else refused (test_consistency_indices.py)
    # batch mode needs no index
    callback = ExplanationConsistencyReweighting(refresh="batch", warmup_epochs=0)
    trainer(callbacks=[callback]).fit(TupleModule(), _tuple_loader())
    assert callback.batch_weights is not None
    with pytest.raises(ValueError, match="refresh_fraction"):
        ExplanationConsistencyReweighting(refresh_fraction=0.0)
    with pytest.raises(ValueError, match="refresh"):
        ExplanationConsistencyReweighting(refresh="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mean"):
        ExplanationConsistencyReweighting(mean=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="layer"):
        trainer(callbacks=[ExplanationConsistencyReweighting(layer="nope")]).fit(
            TupleModule(), _tuple_loader()
        )
