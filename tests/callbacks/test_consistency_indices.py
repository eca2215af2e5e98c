"""ExplanationConsistencyReweighting on data without an index: the indices come from the training sampler."""

from __future__ import annotations

import os
import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, Sampler, TensorDataset

from lightning_xai.callbacks import ExplanationConsistencyReweighting
from lightning_xai.callbacks.consistency.indices import TrainingBatchIndices
from lightning_xai.data import IndexedDataset
from lightning_xai.models import small_resnet
from lightning_xai.modules import ImageClassifier

pytestmark = [
    pytest.mark.filterwarnings("ignore:ExplanationConsistencyReweighting scores the training dataset"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
]

N = 24


def images_and_labels() -> TensorDataset:
    """(image, label, truth): ``truth`` is each sample's index as a float column, which the callback never reads
    as an index (only an integer 1-D last element is one)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(N, 3, 16, 16, generator=generator)
    return TensorDataset(images, torch.arange(N) % 4, torch.arange(N, dtype=torch.float64))


class Spy(L.Callback):
    """After the ECE callback: the true indices of each batch, what it weighted them with, and the indices that a
    second owner of the shared recorder gets for the same batch."""

    def __init__(self, ece: ExplanationConsistencyReweighting) -> None:
        self.ece, self.records = ece, []
        self.indices: TrainingBatchIndices | None = None

    def setup(self, trainer, pl_module, stage):
        self.indices, self.strategy = TrainingBatchIndices.acquire(trainer, self), trainer.strategy

    def teardown(self, trainer, pl_module, stage):
        self.indices.release(self)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        weights = self.ece.batch_weights
        self.records.append(
            {
                "epoch": trainer.current_epoch,
                "truth": batch[2].long(),
                "recorded": self.indices.for_batch(batch_idx, len(batch[0]), "Spy").clone(),
                "weights": None if weights is None else weights.clone(),
            }
        )


def fit(
    loader, max_epochs=2, ece=None, callbacks=(), ckpt_path=None, **trainer_kwargs
) -> tuple[ExplanationConsistencyReweighting, Spy]:
    """By default, score the training set (as it is) at epoch 0, before any step, into the table of the run."""
    # unclipped weights: one value per distinct score, so a batch paired with other samples' weights shows
    ece = ece or ExplanationConsistencyReweighting(warmup_epochs=0, clip=(0.0, 1e9))
    spy = Spy(ece)
    settings = {
        "max_epochs": max_epochs,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
    }
    L.seed_everything(0, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        L.Trainer(callbacks=[ece, spy, *callbacks], **{**settings, **trainer_kwargs}).fit(
            ImageClassifier(small_resnet(num_classes=4, width=4)),
            loader,
            ckpt_path=ckpt_path,
            weights_only=True,
        )
    return ece, spy


def given_table() -> ExplanationConsistencyReweighting:
    """A callback holding N distinct weights, as after a refresh at epoch 0 (the next one is at epoch 5)."""
    ece = ExplanationConsistencyReweighting(warmup_epochs=0)
    v = torch.linspace(0.05, 0.5, N, dtype=torch.float64)
    scored = torch.ones(N, dtype=torch.bool)
    ece.load_state_dict(
        {"v": v, "weights": (v / v.mean()).float(), "scored": scored, "last_refresh_epoch": 0}
    )
    return ece


def assert_weighted_by_their_own_indices_of(records: list[dict], table: torch.Tensor) -> None:
    for record in records:
        assert torch.equal(record["recorded"], record["truth"])
        assert torch.equal(record["weights"], table[record["truth"]])


def test_tensor_dataset_with_workers_gets_the_weights_of_its_indexed_twin():
    data = images_and_labels()
    loader = DataLoader(data, batch_size=5, shuffle=True, num_workers=2, prefetch_factor=3)
    original = loader.batch_sampler
    ece, spy = fit(loader)
    twin, twin_spy = fit(DataLoader(IndexedDataset(data), batch_size=5, shuffle=True, num_workers=2))
    assert [r["epoch"] for r in spy.records] == [0] * 5 + [1] * 5  # a second epoch: a new iterator
    assert torch.equal(ece.weights, twin.weights) and len(set(ece.weights.tolist())) > 12
    for mine, theirs in zip(spy.records, twin_spy.records, strict=True):
        assert torch.equal(mine["truth"], theirs["truth"])  # same seeds, same shuffling
        assert torch.equal(mine["weights"], theirs["weights"])
    assert_weighted_by_their_own_indices_of(spy.records, ece.weights)
    assert sorted(torch.cat([r["truth"] for r in spy.records[:5]]).tolist()) == list(range(N))
    assert spy.records[0]["truth"].tolist() != [0, 1, 2, 3, 4]  # shuffled
    # the user's loader and the strategy are left as they were
    assert loader.batch_sampler is original and type(original) is BatchSampler
    assert not {"process_dataloader", "_lightning_xai_batch_indices"} & set(vars(spy.strategy))


class EvensThenOdds(Sampler[list[int]]):
    """A user's batch sampler: even indices in threes, then odd indices in fours (uneven batch sizes)."""

    def __iter__(self):
        evens, odds = list(range(0, N, 2)), list(range(1, N, 2))
        yield from (evens[i : i + 3] for i in range(0, len(evens), 3))
        yield from (odds[i : i + 4] for i in range(0, len(odds), 4))

    def __len__(self):
        return 4 + 3


class Loaders(L.LightningDataModule):
    """A new loader each time Lightning asks (``reload_dataloaders_every_n_epochs``), or the same one, whose
    persistent workers start each epoch with a reset of the iterator instead of a new one."""

    def __init__(self, new_each_time: bool) -> None:
        super().__init__()
        self.new_each_time, self.made = new_each_time, []

    def train_dataloader(self):
        if self.new_each_time or not self.made:
            # Persistent workers of a loader dropped mid-epoch hold batches nobody reads: Lightning never shuts
            # them down, and the garbage collector later waits 5 s for each of them. So only for the same loader.
            persistent = not self.new_each_time
            loader = DataLoader(
                images_and_labels(),
                batch_sampler=EvensThenOdds(),
                num_workers=2,
                persistent_workers=persistent,
            )
            self.made.append(loader)
        return self.made[-1]


@pytest.mark.parametrize("new_each_time", [True, False], ids=["new-loaders", "same-loader"])
def test_user_batch_sampler_workers_reloaded_loaders_and_unfinished_epochs(new_each_time):
    data = Loaders(new_each_time)
    # 5 of 7 batches an epoch: the workers drew all 7, and the next epoch's iteration must not start with the 2 left
    ece, spy = fit(data, ece=given_table(), reload_dataloaders_every_n_epochs=1, limit_train_batches=5)
    assert [len(r["truth"]) for r in spy.records] == ([3] * 4 + [4]) * 2
    assert_weighted_by_their_own_indices_of(spy.records, ece.weights)
    assert len(data.made) == (2 if new_each_time else 1)
    assert all(type(loader.batch_sampler) is EvensThenOdds for loader in data.made)


class Resumable(DataLoader):
    """A loader that Lightning saves and restores (as torchdata's StatefulDataLoader)."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_mid_epoch_resume_pairs_the_batches_of_the_new_iterator(tmp_path):
    class StopMidEpoch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 1:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")
                raise KeyError("stop")

    def warm_ece():  # no scoring: only the pairing is under test
        return ExplanationConsistencyReweighting(warmup_epochs=9)

    data = images_and_labels()
    with pytest.raises(KeyError, match="stop"):
        fit(
            DataLoader(data, batch_size=5, shuffle=True),
            max_epochs=3,
            callbacks=[StopMidEpoch()],
            ece=warm_ece(),
        )
    # Lightning starts a fresh (re-shuffled) iterator and trains the 3 batches left in epoch 1 from its start
    _, spy = fit(
        DataLoader(data, batch_size=5, shuffle=True),
        max_epochs=2,
        ece=warm_ece(),
        ckpt_path=tmp_path / "mid.ckpt",
    )
    assert [r["epoch"] for r in spy.records] == [1, 1, 1]
    assert all(torch.equal(r["recorded"], r["truth"]) for r in spy.records)
    # a loader that restores its own position would skip batches inside its iterator: refused
    with pytest.raises(RuntimeError, match="resumed in the middle of an epoch with a stateful"):
        fit(Resumable(data, batch_size=5), max_epochs=2, ece=warm_ece(), ckpt_path=tmp_path / "mid.ckpt")


class Stream(IterableDataset):
    def __iter__(self):
        data = images_and_labels()
        return ((data[i][0], data[i][1]) for i in range(N))


@pytest.mark.parametrize(
    ("make_loader", "match"),
    [
        (lambda: DataLoader(Stream(), batch_size=6), r"an IterableDataset .*`index` key.*refresh='batch'"),
        # batches as the workers finish them, not in the order their indices were drawn
        (
            lambda: DataLoader(images_and_labels(), batch_size=6, num_workers=2, in_order=False),
            "in_order=False",
        ),
    ],
    ids=["iterable-dataset", "out-of-order-workers"],
)
def test_unrecoverable_indices_fail_at_the_first_step(make_loader, match):
    steps = []

    class Count(L.Callback):
        def on_train_batch_end(self, *args):
            steps.append(1)

    ece = ExplanationConsistencyReweighting()  # the warm-up: no table yet, the check still runs
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[ece, Count()],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = ImageClassifier(small_resnet(num_classes=4, width=4))
    criterion = module.criterion
    with pytest.raises(ValueError, match=match):
        trainer.fit(module, make_loader())
    assert not steps and "process_dataloader" not in vars(trainer.strategy)
    # the failed fit leaves the user's loss as it was (Lightning calls no teardown after an exception)
    assert module.criterion is criterion and not criterion._forward_hooks


class Reversed(BatchSampler):
    """A user's batch sampler, into which Lightning injects its DistributedSampler."""

    def __iter__(self):
        for batch in super().__iter__():
            yield batch[::-1]


def _ddp_records(rank: int, world_size: int) -> dict:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world_size), RANK=str(rank))
    kwargs = {"max_epochs": 1, "devices": world_size, "strategy": "ddp", "ece": given_table()}
    data = images_and_labels()
    ece, spy = fit(DataLoader(data, batch_size=4, shuffle=True, num_workers=2), **kwargs)
    # the DistributedSampler's order depends on its seed and the epoch only: the twin needs no workers
    _, twin = fit(
        DataLoader(IndexedDataset(data), batch_size=4, shuffle=True), **{**kwargs, "ece": given_table()}
    )
    _, user = fit(
        DataLoader(data, batch_sampler=Reversed(range(N), 5, False)), **{**kwargs, "ece": given_table()}
    )
    return {"spy": spy.records, "twin": twin.records, "user": user.records, "weights": ece.weights}


def test_ddp_ranks_record_their_own_shards(ddp):
    ranks = ddp(_ddp_records)
    for key in ("spy", "user"):  # the ranks' shards make up the training set
        assert sorted(i for rank in ranks for r in rank[key] for i in r["truth"].tolist()) == list(range(N))
    for rank in ranks:
        assert len(rank["spy"]) == 3 and [len(r["truth"]) for r in rank["user"]] == [5, 5, 2]  # 12 a rank
        for mine, theirs in zip(rank["spy"], rank["twin"], strict=True):
            assert torch.equal(mine["truth"], theirs["truth"]) and torch.equal(
                mine["weights"], theirs["weights"]
            )
        assert_weighted_by_their_own_indices_of(rank["spy"] + rank["user"], rank["weights"])
