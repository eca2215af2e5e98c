import math
import random

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_xai.data import TokensDataModule, TokensDataset, agreement_rate


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _within_sampling_error(hits: int, n: int, p: float) -> bool:
    return abs(hits / n - p) <= 3.0 * math.sqrt(p * (1.0 - p) / n) + 1e-12


def _stack(ds, n=None):
    items = [ds[i] for i in range(len(ds) if n is None else n)]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def test_item_keys_shapes_and_dtypes():
    ds = TokensDataset(4, seq_len=24)
    item = ds[2]
    assert set(item) == {"input_ids", "attention_mask", "rationale_mask", "label", "cue", "index"}
    assert item["input_ids"].shape == (24,) and item["input_ids"].dtype == torch.int64
    assert item["attention_mask"].shape == (24,) and item["attention_mask"].dtype == torch.int64
    assert item["rationale_mask"].shape == (24,) and item["rationale_mask"].dtype == torch.bool
    for key in ("label", "cue", "index"):
        assert item[key].shape == () and item[key].dtype == torch.int64
    assert int(item["index"]) == 2
    assert (ds.pad_token_id, ds.cls_token_id, ds.sep_token_id, ds.mask_token_id) == (0, 1, 2, 3)


def test_layout_cls_content_sep_padding():
    ds = TokensDataset(400, seq_len=32, min_length=8, seed=1)
    batch = _stack(ds)
    ids, attention = batch["input_ids"], batch["attention_mask"]
    lengths = attention.sum(dim=1)
    assert int(lengths.min()) == 8 and int(lengths.max()) == 32  # both ends of the range occur
    positions = torch.arange(32)
    assert torch.equal(attention.bool(), positions < lengths[:, None])  # ones, then zeros
    assert torch.equal(attention.bool(), ids != ds.pad_token_id)
    assert (ids[:, 0] == ds.cls_token_id).all()
    assert torch.equal(ids.gather(1, (lengths - 1)[:, None])[:, 0], torch.full((400,), ds.sep_token_id))
    content = (positions > 0) & (positions < lengths[:, None] - 1)
    assert (ids[content] > ds.mask_token_id).all()  # no special token inside the content
    assert (ids < ds.vocab_size).all()


def test_rationale_tokens_decide_the_label_and_the_mask_marks_exactly_them():
    ds = TokensDataset(500, num_classes=5, max_rationale=3, seed=2)
    batch = _stack(ds)
    ids, labels = batch["input_ids"], batch["label"]
    owner = {int(t): c for c in range(5) for t in ds.rationale_token_ids[c]}
    predicted = []
    for row, rationale in zip(ids.tolist(), batch["rationale_mask"], strict=True):
        found = [owner[t] for t in row if t in owner]
        assert 1 <= len(found) <= 3 and len(set(found)) == 1  # only the label's class appears
        assert rationale.tolist() == [t in owner for t in row]
        predicted.append(found[0])
    assert predicted == labels.tolist()
    assert torch.equal(ds.predict_by_rule(ids), labels)
    assert int(ds.predict_by_rule(ids[0])) == int(labels[0])
    counts = batch["rationale_mask"].sum(dim=1)
    assert set(counts.tolist()) == {1, 2, 3}


def test_predict_by_rule_without_rationale_tokens():
    ds = TokensDataset(20, seed=3)
    batch = _stack(ds)
    ids = batch["input_ids"].masked_fill(batch["rationale_mask"], ds.mask_token_id)
    assert (ds.predict_by_rule(ids) == -1).all()
    with pytest.raises(TypeError, match="`input_ids`"):
        ds.predict_by_rule(ids.float())
    with pytest.raises(ValueError, match="`input_ids`"):
        ds.predict_by_rule(ids[None])


def test_one_cue_token_per_sequence_naming_the_cue_class():
    ds = TokensDataset(300, bias=0.5, seed=4)
    batch = _stack(ds)
    ids = batch["input_ids"]
    is_cue = (ids[..., None] == ds.cue_token_ids).any(dim=-1)
    assert (is_cue.sum(dim=1) == 1).all()
    assert not (is_cue & batch["rationale_mask"]).any()
    assert torch.equal(ids[is_cue], ds.cue_token_ids[batch["cue"]])


@pytest.mark.parametrize("bias", [None, 0.0, 0.4, 0.9, 1.0])
def test_cue_agrees_with_label_at_the_documented_rate(bias):
    n = 2000
    ds = TokensDataset(n, seq_len=16, bias=bias, seed=5)
    batch = _stack(ds)
    p = agreement_rate(bias, 4)
    assert ds.agreement_rate == p
    assert _within_sampling_error(int((batch["cue"] == batch["label"]).sum()), n, p)
    for c in range(4):
        assert _within_sampling_error(int((batch["label"] == c).sum()), n, 0.25)


@pytest.mark.parametrize("bias", [0.0, 1.0])
def test_test_split_is_always_bias_conflicting(bias):
    ds = TokensDataset(1000, seq_len=16, bias=bias, split="test")
    batch = _stack(ds)
    assert ds.agreement_rate == 0.0
    assert not (batch["cue"] == batch["label"]).any()
    for c in range(4):
        given = batch["cue"][batch["label"] == c]
        assert set(given.tolist()) == set(range(4)) - {c}


def test_determinism_and_access_order():
    a = TokensDataset(30, bias=0.5, seed=6)
    b = TokensDataset(30, bias=0.5, seed=6)
    c = TokensDataset(30, bias=0.5, seed=7)
    order = list(range(30))
    random.Random(1).shuffle(order)
    first = {i: a[i] for i in range(30)}
    for i in order:
        for key, value in b[i].items():
            assert torch.equal(value, first[i][key]), key
    assert not all(torch.equal(first[i]["input_ids"], c[i]["input_ids"]) for i in range(30))
    val = TokensDataset(30, bias=0.5, seed=6, split="val")
    assert not all(torch.equal(first[i]["input_ids"], val[i]["input_ids"]) for i in range(30))
    batch = next(iter(DataLoader(a, batch_size=30, num_workers=2)))
    assert torch.equal(batch["input_ids"], torch.stack([first[i]["input_ids"] for i in range(30)]))


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"bias": 1.1}, ValueError, "bias"),
        ({"bias": "strong"}, TypeError, "bias"),
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"seq_len": 6}, ValueError, "seq_len"),
        ({"min_length": 5, "max_rationale": 3}, ValueError, "min_length"),
        ({"vocab_size": 30}, ValueError, "vocab_size"),
        ({"rationale_per_class": 0}, ValueError, "rationale_per_class"),
        ({"max_rationale": 0}, ValueError, "max_rationale"),
        ({"split": "validation"}, ValueError, "split"),
        ({"seed": "0"}, TypeError, "seed"),
        ({"num_samples": 2.5}, TypeError, "num_samples"),
    ],
)
def test_dataset_rejects_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=f"`{name}`"):
        TokensDataset(**kwargs)


def test_vocabulary_layout():
    ds = TokensDataset(1, num_classes=3, rationale_per_class=2, vocab_size=100)
    assert ds.vocab_size == 100
    assert ds.cue_token_ids.tolist() == [4, 5, 6]
    assert ds.rationale_token_ids.tolist() == [[7, 8], [9, 10], [11, 12]]
    assert ds.noise_start == 13


def test_datamodule_batches_and_errors():
    dm = TokensDataModule(batch_size=4, seq_len=20, bias=0.8, train_size=8, val_size=4, test_size=8)
    dm.setup("fit")
    assert (dm.vocab_size, dm.num_classes, dm.seq_len, dm.pad_token_id) == (256, 4, 20, 0)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        batch = next(iter(loader))
        assert batch["input_ids"].shape == (4, 20) and batch["input_ids"].dtype == torch.int64
        assert batch["attention_mask"].shape == (4, 20) and batch["attention_mask"].dtype == torch.int64
        assert batch["rationale_mask"].shape == (4, 20) and batch["rationale_mask"].dtype == torch.bool
        for key in ("label", "cue", "index"):
            assert batch[key].shape == (4,) and batch[key].dtype == torch.int64
    for batch in dm.test_dataloader():
        assert not (batch["cue"] == batch["label"]).any()
    with pytest.raises(ValueError, match="`batch_size`"):
        TokensDataModule(batch_size=0)
    with pytest.raises(ValueError, match="`test_size`"):
        TokensDataModule(test_size=-3)
    with pytest.raises(ValueError, match="`bias`"):
        TokensDataModule(bias=-1.0)


def test_tiny_bert_learns_from_the_rationale_tokens():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    dm = TokensDataModule(batch_size=64, train_size=2000, test_size=500, bias=None)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    test = _stack(dm.datasets["test"])
    config = transformers.BertConfig(
        vocab_size=dm.vocab_size,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=dm.seq_len,
        num_labels=dm.num_classes,
        pad_token_id=dm.pad_token_id,
    )
    model = transformers.BertForSequenceClassification(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        model.train()
        for batch in train:
            out = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["label"]
            )
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=test["input_ids"], attention_mask=test["attention_mask"]).logits
    assert logits.shape == (500, dm.num_classes)
    assert (logits.argmax(dim=1) == test["label"]).float().mean().item() >= 0.9
