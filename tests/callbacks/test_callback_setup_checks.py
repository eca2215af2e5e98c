"""A callback never ends the user's training (issue 32): SaliencyMapLogger and ExplanationMetrics refuse what they
cannot explain before the first training step, and what they can only see after it is one warning, not a crash."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from transformers import BertConfig, BertForSequenceClassification

from lightning_xai.callbacks import ExplanationMetrics, SaliencyMapLogger
from lightning_xai.data import Batch, ShapesDataModule
from lightning_xai.modules import ImageClassifier

REFUSAL = r"cannot explain this run: .*\(B, C, H, W\) tensors .*'gradcam'"


@pytest.fixture(autouse=True)
def _quiet():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", ".*carry no information.*")
        warnings.filterwarnings("ignore", ".*shuffling enabled.*")
        yield
    torch.set_num_threads(threads)


class Steps(L.Callback):
    """Counts the training batches whose step ran."""

    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_end(self, *args) -> None:
        self.count += 1


def trainer(tmp_path: Path, *callbacks: L.Callback, **kwargs) -> tuple[L.Trainer, Steps]:
    steps = Steps()
    settings = dict(
        max_epochs=1,
        default_root_dir=tmp_path,
        inference_mode=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(callbacks=[*callbacks, steps], **{**settings, **kwargs}), steps


def callbacks() -> list[L.Callback]:
    return [SaliencyMapLogger(num_samples=2), ExplanationMetrics(["deletion"])]


# -- a text classifier -----------------------------------------------------------------------------------------


class Tokens(Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        ids = torch.randint(5, 50, (12,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "attention_mask": torch.ones(12, dtype=torch.long), "label": i % 2}


class TextClassifier(L.LightningModule):
    """A plain LightningModule around a tiny Hugging Face BERT (``hf=True``) or an embedding bag."""

    def __init__(self, hf: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        if hf:
            config = BertConfig(
                vocab_size=50,
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
                max_position_embeddings=32,
                num_labels=2,
            )
            self.model = BertForSequenceClassification(config)
        else:
            self.embed = nn.EmbeddingBag(50, 8)
            self.head = nn.Linear(8, 2)
        self.hf = hf

    def forward(self, input_ids, attention_mask=None):
        if self.hf:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return self.head(self.embed(input_ids))

    def _loss(self, batch):
        return nn.functional.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["label"])

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tokens() -> DataLoader:
    return DataLoader(Tokens(), batch_size=4)


@pytest.mark.parametrize("callback", callbacks(), ids=lambda c: type(c).__name__)
def test_tiny_bert_is_refused_before_any_training_step(tmp_path, callback):
    run, steps = trainer(tmp_path, callback)
    with pytest.raises(ValueError, match=REFUSAL) as error:
        run.fit(TextClassifier(), tokens(), tokens())
    assert "BertForSequenceClassification is a Hugging Face model that reads `input_ids`" in str(error.value)
    assert steps.count == 0 and run.global_step == 0


@pytest.mark.parametrize(
    "settings",
    [
        {"num_sanity_val_steps": 2},  # the sanity-check batch
        {"num_sanity_val_steps": 0},  # the validation dataloader, peeked at the start of training
        {"num_sanity_val_steps": 0, "limit_val_batches": 1},
        {"num_sanity_val_steps": 0, "check_val_every_n_epoch": 2, "max_epochs": 2},  # training batch 0
    ],
    ids=["sanity", "peek", "limit_val_batches", "train_batch_0"],
)
@pytest.mark.parametrize("make", [SaliencyMapLogger, ExplanationMetrics], ids=lambda c: c.__name__)
def test_token_batches_of_a_model_setup_cannot_recognise_are_refused_before_any_step(
    tmp_path, make, settings
):
    # "saliency" takes no layer: with Grad-CAM, setup would already refuse the embedding model's missing layer
    run, steps = trainer(tmp_path, make(method="saliency"), **settings)
    with pytest.raises(ValueError, match=REFUSAL + r".*") as error:
        run.fit(TextClassifier(hf=False), tokens(), tokens())
    assert "the batch's inputs are tensor of shape (4, 12), dtype torch.int64" in str(error.value)
    assert steps.count == 0 and run.global_step == 0


# -- an image classifier ---------------------------------------------------------------------------------------


def shapes(**kwargs) -> ShapesDataModule:
    settings = dict(batch_size=8, image_size=24, train_size=16, val_size=8, test_size=8, seed=3)
    return ShapesDataModule(**{**settings, **kwargs})


def image_module() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier("small_resnet", num_classes=4)


@pytest.mark.parametrize("sanity", [0, 1])
def test_an_image_model_still_works_unchanged(tmp_path, sanity):
    saliency = SaliencyMapLogger(num_samples=2)
    metrics = ExplanationMetrics(["deletion", "pointing_game"])
    run, steps = trainer(tmp_path, saliency, metrics, num_sanity_val_steps=sanity)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*skips the rest of this run.*")
        run.fit(image_module(), shapes())
    assert steps.count == 2
    assert saliency.skip_reason is None and metrics.skip_reason is None
    assert [p.name for p in saliency.written] == ["epoch=0.png"]
    assert {"xai/deletion", "xai/pointing_game"} <= set(metrics.last_values)


class RngAtFirstStep(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.state = torch.get_rng_state()


def test_peeking_a_shuffled_validation_loader_leaves_the_training_randomness_alone(tmp_path):
    data = shapes()
    data.setup("fit")
    states = []
    for extra in ([], [SaliencyMapLogger(num_samples=2)]):
        probe = RngAtFirstStep()
        run, _ = trainer(tmp_path, probe, *extra, limit_val_batches=1)
        torch.manual_seed(1)
        val = DataLoader(data.val_dataloader().dataset, batch_size=4, shuffle=True)
        run.fit(image_module(), data.train_dataloader(), val)
        states.append(probe.state)
    assert torch.equal(states[0], states[1])


def test_unknown_layer_and_bad_method_arguments_are_refused_at_setup(tmp_path):
    run, steps = trainer(tmp_path, SaliencyMapLogger(layer="nope"))
    with pytest.raises(ValueError, match=r"the layer 'nope' of LayerGradCam"):
        run.fit(image_module(), shapes())
    run, steps = trainer(tmp_path, ExplanationMetrics(["deletion"], method_args={"n_stepz": 3}))
    with pytest.raises(ValueError, match=r"the arguments of LayerGradCam do not fit"):
        run.fit(image_module(), shapes())
    assert steps.count == 0


def test_validation_batches_without_labels_are_refused_from_the_peeked_batch(tmp_path):
    # the training batches have labels; only the validation dataloader, peeked before training, tells
    unlabelled = DataLoader(TensorDataset(torch.rand(8, 3, 24, 24)), batch_size=4)
    data = shapes()
    data.setup("fit")
    run, steps = trainer(tmp_path, SaliencyMapLogger(num_samples=2))
    with pytest.raises(ValueError, match=r"have no labels and `target='label'`"):
        run.fit(image_module(), data.train_dataloader(), unlabelled)
    assert steps.count == 0


def images_only(batch: dict) -> Batch:
    """What the callback reads: no labels, no masks (training batches check out: only their inputs are read)."""
    return Batch(inputs=batch["image"])


def images_and_labels(batch: dict) -> Batch:
    return Batch(inputs=batch["image"], target=batch["label"])


@pytest.mark.parametrize(
    "callback, problem",
    [
        (SaliencyMapLogger(num_samples=2, batch_adapter=images_only), "have no labels"),
        (ExplanationMetrics(["pointing_game"], batch_adapter=images_and_labels), "needs ground-truth masks"),
    ],
    ids=["saliency", "metrics"],
)
def test_what_only_shows_after_training_started_warns_once_and_training_completes(
    tmp_path, callback, problem
):
    # no sanity check and no validation in epoch 0: no validation batch exists before training starts
    run, steps = trainer(tmp_path, callback, max_epochs=2, check_val_every_n_epoch=2)
    with pytest.warns(UserWarning, match="skips the rest of this run") as record:
        run.fit(image_module(), shapes())
    ours = [w for w in record if "skips the rest of this run" in str(w.message)]
    assert len(ours) == 1 and problem in str(ours[0].message)
    assert steps.count == 4 and run.global_step == 4  # every training step ran
    assert problem in callback.skip_reason
    if isinstance(callback, SaliencyMapLogger):
        assert callback.written == []
