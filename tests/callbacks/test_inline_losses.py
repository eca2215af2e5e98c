"""The training-time callbacks on unmodified modules in the most common Lightning style: the network as
``self.net`` (or nested deeper), the loss computed inline in ``training_step`` (``F.cross_entropy``, an
``nn.CrossEntropyLoss()`` created there, a Hugging Face model's own ``outputs.loss``)."""

from __future__ import annotations

import os
import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai.callbacks import (
    ExplanationConsistencyReweighting,
    LossTap,
    MultiHeadExplainer,
    find_loss_tap,
)
from lightning_xai.heads import find_mhex
from lightning_xai.losses import INLINE_LOSSES
from lightning_xai.models import find_network, small_resnet

pytestmark = [
    pytest.mark.filterwarnings("ignore:ExplanationConsistencyReweighting scores the training dataset"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:The number of training batches"),
]

LAMBDAS = [0.1, 0.2, 0.3, 0.4]


class Inline(L.LightningModule):
    """What users write: ``self.net`` and the loss inline; it records what each step's loss was made of."""

    def __init__(self, style: str = "functional", seed: int = 0, **loss_options) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = small_resnet(num_classes=4, width=4)
        self.style = style
        self.loss_options = loss_options
        self.train_records: list[dict] = []
        self.val_records: list[dict] = []

    def forward(self, x):
        return self.net(x)

    def _loss(self, logits, y):
        if self.style == "functional":
            return F.cross_entropy(logits, y, **self.loss_options)
        return nn.CrossEntropyLoss(**self.loss_options)(logits, y)

    def _record(self, logits, y, loss) -> dict:
        heads = find_mhex(self.net)
        head_logits = {} if heads is None else {k: v.detach().clone() for k, v in heads.head_logits.items()}
        return {
            "logits": logits.detach().clone(),
            "y": y.clone(),
            "loss": loss.detach().clone(),
            "heads": head_logits,
        }

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = self._loss(logits, y)
        self.train_records.append(self._record(logits, y, loss))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = self._loss(logits, y)
        self.val_records.append(self._record(logits, y, loss))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Expected(L.Callback):
    """After each training batch: the returned loss minus the hand-computed one (``|Δ|`` recorded)."""

    def __init__(
        self, ece: ExplanationConsistencyReweighting | None, mhex: MultiHeadExplainer | None
    ) -> None:
        self.ece, self.mhex = ece, mhex
        self.errors: list[float] = []
        self.weighted: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        record = pl_module.train_records[-1]
        logits, y = record["logits"], record["y"]
        options = pl_module.loss_options
        per_sample = F.cross_entropy(logits, y, reduction="none", **options)
        if self.mhex is not None:
            for lam, head in zip(LAMBDAS, record["heads"].values(), strict=True):
                per_sample = per_sample + lam * F.cross_entropy(head, y, reduction="none", **options)
        weights = None if self.ece is None else self.ece.batch_weights
        self.weighted.append(weights is not None)
        if weights is not None:
            per_sample = per_sample * weights
        expected = per_sample.mean()
        self.errors.append(float((outputs["loss"].detach() - expected).abs()))


def _loader(n: int = 8, batch_size: int = 4, seed: int = 0, size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, size, size, generator=g), torch.arange(n) % 4
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def _trainer(callbacks, **kwargs) -> L.Trainer:
    settings = dict(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    return L.Trainer(**{**settings, **kwargs})


def _callbacks(which: str):
    ece = (
        ExplanationConsistencyReweighting(refresh="batch", warmup_epochs=0, steps=1)
        if "ece" in which
        else None
    )
    mhex = MultiHeadExplainer(lambdas=LAMBDAS) if "mhex" in which else None
    return ece, mhex, [c for c in (mhex, ece) if c is not None]


@pytest.mark.parametrize("style", ["functional", "module"])
@pytest.mark.parametrize("which", ["ece", "mhex", "ece+mhex"])
def test_inline_module_trains_with_the_hand_weighted_loss(style, which):
    module = Inline(style)
    ece, mhex, callbacks = _callbacks(which)
    check = Expected(ece, mhex)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    _trainer([*callbacks, check]).fit(module, _loader(), _loader(4, seed=1))
    assert len(check.errors) == 2 and max(check.errors) < 1e-6
    if ece is not None:
        assert all(check.weighted) and not torch.equal(ece.batch_weights, torch.ones(4))
    if mhex is not None:
        assert sorted(find_mhex(module.net).branches) == ["layer1", "layer2", "layer3", "layer4"]
    # validation untouched: the module's own cross-entropy of its logits
    for record in module.val_records:
        assert torch.equal(record["loss"], F.cross_entropy(record["logits"], record["y"]))
    # it trained, and the module is as it was: no tap, its own training_step
    assert any(not torch.equal(v, module.state_dict()[k]) for k, v in before.items() if v.is_floating_point())
    assert find_loss_tap(module) is None and "training_step" not in vars(module)


@pytest.mark.parametrize(
    "options",
    [
        {"label_smoothing": 0.2},
        {"ignore_index": 1},
        {"weight": torch.tensor([1.0, 2.0, 0.5, 3.0])},
        {"weight": torch.tensor([1.0, 2.0, 0.5, 3.0]), "ignore_index": 2, "label_smoothing": 0.1},
        {"reduction": "sum"},
    ],
    ids=["smoothing", "ignore_index", "class_weights", "all", "sum"],
)
@pytest.mark.parametrize("style", ["functional", "module"])
def test_criterion_options_unchanged_with_unit_weights_and_weighted_by_the_criterions_rule(options, style):
    module, owner = Inline(style, **options), object()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 3, 1, 2])
    plain = module.training_step((x, y), 0)
    tap = LossTap.acquire(module, owner)
    tap.open_batch(owner, target=y)
    tap.set_sample_weights(owner, torch.ones(6))
    assert torch.allclose(module.training_step((x, y), 0), plain, atol=1e-7)
    weights = torch.tensor([0.5, 2.0, 1.0, 0.0, 3.0, 1.5])
    tap.set_sample_weights(owner, weights)
    weighted = module.training_step((x, y), 0)
    tap.close_batch(owner)
    tap.release(owner)
    logits = module(x)
    per_sample = F.cross_entropy(logits, y, **{**options, "reduction": "none"})
    # the criterion's own denominator: the counted targets' class-weight mass ("mean"), 1 ("sum")
    if options.get("reduction") == "sum":
        denominator = torch.tensor(1.0)
    else:
        counted = y != options.get("ignore_index", -100)
        w = options.get("weight", torch.ones(4))
        denominator = (w[y.clamp_min(0)] * counted).sum()
    assert torch.allclose(weighted, (weights * per_sample).sum() / denominator, atol=1e-6)
    assert torch.equal(module.training_step((x, y), 0), plain)  # released: the module's own loss again


@pytest.mark.parametrize("fn", INLINE_LOSSES, ids=lambda f: f.__name__)
def test_every_intercepted_loss_is_unchanged_under_the_mode_with_unit_weights(fn):
    g = torch.Generator().manual_seed(0)
    b = 5
    args: dict = {}
    if fn in (F.cross_entropy, F.multi_margin_loss):
        input, target = torch.randn(b, 4, generator=g), torch.tensor([0, 3, 1, 2, 1])
    elif fn is F.nll_loss:
        input, target = torch.randn(b, 4, generator=g).log_softmax(1), torch.tensor([0, 3, 1, 2, 1])
    elif fn is F.binary_cross_entropy:
        input, target = (
            torch.rand(b, 3, generator=g).clamp(0.05, 0.95),
            (torch.rand(b, 3, generator=g) > 0.5).float(),
        )
    elif fn is F.kl_div:
        input, target = (
            torch.randn(b, 4, generator=g).log_softmax(1),
            torch.randn(b, 4, generator=g).softmax(1),
        )
        args = {"reduction": "batchmean"}
    elif fn is F.gaussian_nll_loss:
        input, target = torch.randn(b, 3, generator=g), torch.randn(b, 3, generator=g)
        args = {"var": torch.rand(b, 3, generator=g) + 0.1}
    elif fn in (F.soft_margin_loss, F.hinge_embedding_loss):
        input, target = (
            torch.randn(b, 3, generator=g),
            torch.randint(0, 2, (b, 3), generator=g).float() * 2 - 1,
        )
    elif fn is F.poisson_nll_loss:
        input, target = torch.randn(b, 3, generator=g), torch.rand(b, 3, generator=g) * 3
    else:
        input, target = torch.randn(b, 3, generator=g), torch.rand(b, 3, generator=g)

    class Module(L.LightningModule):
        def training_step(self, batch, batch_idx):
            return fn(batch[0], batch[1], **args)

    module, owner = Module(), object()
    plain = module.training_step((input, target), 0)
    tap = LossTap.acquire(module, owner)
    tap.open_batch(owner, target=target)
    tap.set_sample_weights(owner, torch.ones(b))
    tapped = module.training_step((input, target), 0)
    assert tap.step_calls == 1
    tap.release(owner)
    assert torch.allclose(tapped, plain, atol=1e-6)


class TwoLosses(Inline):
    """The training loss plus a feature penalty (target not the labels), or the same loss twice."""

    def __init__(self, twice: bool = False) -> None:
        super().__init__()
        self.twice = twice

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_records.append(self._record(logits, y, loss))
        if self.twice:
            return loss + F.cross_entropy(logits, y, label_smoothing=0.1)
        penalty = F.mse_loss(logits, torch.zeros_like(logits))
        self.train_records[-1]["penalty"] = penalty.detach()
        return loss + 0.1 * penalty


def test_two_loss_calls_tap_the_one_on_the_labels_or_raise_how_to_choose():
    module = TwoLosses()
    ece, _, callbacks = _callbacks("ece")
    weighted = []

    class Check(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            r = pl_module.train_records[-1]
            per_sample = F.cross_entropy(r["logits"], r["y"], reduction="none")
            weighted.append(
                float((outputs["loss"] - (ece.batch_weights * per_sample).mean() - 0.1 * r["penalty"]).abs())
            )

    _trainer([*callbacks, Check()]).fit(module, _loader())
    assert len(weighted) == 2 and max(weighted) < 1e-6
    with pytest.raises(RuntimeError, match=r"called 2 loss functions.*loss_attr=.*sample_weighted_loss"):
        _trainer(_callbacks("ece")[2]).fit(TwoLosses(twice=True), _loader())


class HandWritten(Inline):
    """A loss no tap can reach (written out by hand), returned in a dict."""

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = -logits.log_softmax(1).gather(1, y[:, None]).mean()
        self.train_records.append(self._record(logits, y, loss))
        return {"loss": loss}


def test_mhex_without_any_tappable_loss_adds_the_heads_cross_entropy_to_the_returned_loss():
    module = HandWritten()
    _, mhex, callbacks = _callbacks("mhex")
    check = Expected(None, mhex)
    _trainer([*callbacks, check]).fit(module, _loader())
    assert len(check.errors) == 2 and max(check.errors) < 1e-6

    with pytest.raises(RuntimeError, match="called no loss function that the tap can reach"):
        _trainer(_callbacks("ece")[2]).fit(HandWritten(), _loader())

    class Manual(HandWritten):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)["loss"]
            self.manual_backward(loss)
            return loss

    with pytest.raises(AttributeError, match=r"manual optimization.*loss_attr="):
        _trainer(_callbacks("mhex")[2]).fit(Manual(), _loader())


def _bert(num_labels: int = 4):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=num_labels,
        max_position_embeddings=32,
    )
    return BertForSequenceClassification(config)


class HFText(L.LightningModule):
    """The Hugging Face style: the model computes its cross-entropy itself from ``labels=``."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _bert()
        self.records: list[dict] = []

    def training_step(self, batch, batch_idx):
        out = self.encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["label"]
        )
        heads = find_mhex(self.encoder)
        self.records.append(
            {
                "logits": out.logits.detach(),
                "y": batch["label"],
                "heads": {k: v.detach() for k, v in heads.head_logits.items()},
            }
        )
        return out.loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _token_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 40, (8, 12), generator=g)
    items = [
        {
            "input_ids": ids[i],
            "attention_mask": torch.ones(12, dtype=torch.long),
            "label": torch.tensor(i % 4),
        }
        for i in range(8)
    ]
    return DataLoader(items, batch_size=4)


def test_hugging_face_model_returning_its_own_loss():
    module = HFText()
    lambdas = [0.3, 0.7]
    errors = []

    class Check(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            r = pl_module.records[-1]
            expected = F.cross_entropy(r["logits"], r["y"])
            for lam, head in zip(lambdas, r["heads"].values(), strict=True):
                expected = expected + lam * F.cross_entropy(head, r["y"])
            errors.append(float((outputs["loss"] - expected).abs()))

    mhex = MultiHeadExplainer(lambdas=lambdas, special_token_ids=[0, 1, 2, 3])
    _trainer([mhex, Check()]).fit(module, _token_loader())
    assert len(errors) == 2 and max(errors) < 1e-6 and len(mhex.handle.stages) == 2
    # ECE explains images: token inputs get a clear error, not a failure deep inside Grad-CAM
    with pytest.raises(ValueError, match=r"`inputs` must be .*4-D"):
        _trainer([ExplanationConsistencyReweighting(refresh="batch", warmup_epochs=0)]).fit(
            HFText(), _token_loader()
        )


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Identity()
        self.backbone = small_resnet(num_classes=4, width=4)

    def forward(self, x):
        return self.backbone(self.stem(x))


class Nested(Inline):
    """The network two levels down: ``self.wrapper.inner.backbone``."""

    def __init__(self) -> None:
        super().__init__()
        del self.net
        self.wrapper = nn.Module()
        self.wrapper.inner = Holder()

    def forward(self, x):
        return self.wrapper.inner(x)

    def _record(self, logits, y, loss):
        heads = find_mhex(self.wrapper.inner.backbone)
        head_logits = {} if heads is None else {k: v.detach().clone() for k, v in heads.head_logits.items()}
        return {"logits": logits.detach(), "y": y, "loss": loss.detach(), "heads": head_logits}


def test_network_nested_two_levels_deep_is_found_and_model_attr_wins():
    module = Nested()
    backbone = module.wrapper.inner.backbone
    assert find_network(module) is backbone
    assert find_network(module, "wrapper.inner") is module.wrapper.inner
    ece, mhex, callbacks = _callbacks("ece+mhex")
    check = Expected(ece, mhex)
    _trainer([*callbacks, check]).fit(module, _loader())
    assert find_mhex(backbone) is mhex.heads and max(check.errors) < 1e-6

    class Unknown(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())

    with pytest.raises(
        AttributeError, match=r"found: layers \(Sequential\), layers\.0 \(Conv2d\).*model_attr="
    ):
        MultiHeadExplainer().setup(None, Unknown(), "fit")
    with pytest.raises(AttributeError, match=r"model_attr='nope'.*layers \(Sequential\)"):
        MultiHeadExplainer(model_attr="nope").setup(None, Unknown(), "fit")


def _fit_inline_on_rank(rank: int, world_size: int, which: str, root: str) -> dict:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world_size))
    module = Inline("module")
    ece, mhex, callbacks = _callbacks(which)
    check = Expected(ece, mhex)
    trainer = _trainer(
        [*callbacks, check],
        devices=world_size,
        strategy="ddp",
        default_root_dir=root,
        use_distributed_sampler=True,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, _loader(16), _loader(8, seed=1))
    return {
        "errors": check.errors,
        "weighted": check.weighted,
        "sync_warnings": [str(w.message) for w in caught if "sync_dist" in str(w.message)],
        "val": [
            bool(torch.equal(r["loss"], F.cross_entropy(r["logits"], r["y"]))) for r in module.val_records
        ],
        "state": {k: v.clone() for k, v in module.state_dict().items()},
    }


@pytest.mark.timeout(600)
@pytest.mark.parametrize("which", ["ece", "mhex"])
def test_inline_module_under_two_process_ddp(ddp, tmp_path, which):
    results = ddp(_fit_inline_on_rank, which, str(tmp_path))
    for result in results:
        assert len(result["errors"]) == 2 and max(result["errors"]) < 1e-6
        assert result["val"] and all(result["val"])
        assert result["sync_warnings"] == []
        if which == "ece":
            assert all(result["weighted"])
    first, second = (r["state"] for r in results)
    assert all(torch.equal(first[k], second[k]) for k in first)  # DDP kept the replicas equal
