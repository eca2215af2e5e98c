import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from lightning_xai.data import IndexedDataset, ShapesDataset


class _Items(Dataset):
    def __init__(self, items):
        self.items = items
        self.note = "kept"

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _is_index(value, i):
    return (
        isinstance(value, torch.Tensor)
        and value.dtype == torch.int64
        and value.shape == ()
        and int(value) == i
    )


def test_tuple_items_get_the_index_appended():
    x, y = torch.randn(5, 3), torch.arange(5) * 10
    ds = IndexedDataset(TensorDataset(x, y))
    assert len(ds) == 5
    item = ds[3]
    assert isinstance(item, tuple) and len(item) == 3
    assert torch.equal(item[0], x[3]) and int(item[1]) == 30 and _is_index(item[2], 3)


def test_dict_items_get_an_index_key():
    ds = IndexedDataset(_Items([{"image": torch.zeros(2), "label": 1}] * 4))
    item = ds[2]
    assert set(item) == {"image", "label", "index"} and _is_index(item["index"], 2)
    assert item["label"] == 1


def test_dict_with_the_same_index_is_kept_and_a_different_one_is_an_error():
    same = IndexedDataset(_Items([{"x": 0, "index": i} for i in range(3)]))
    assert _is_index(same[1]["index"], 1)
    shapes = IndexedDataset(ShapesDataset(3, image_size=16))
    assert _is_index(shapes[2]["index"], 2)
    different = IndexedDataset(_Items([{"x": 0, "index": torch.tensor(7)}] * 3))
    with pytest.raises(ValueError, match="`index`"):
        different[1]


def test_tensor_and_other_items_become_pairs():
    data = torch.arange(12.0).view(4, 3)
    tensor_ds = IndexedDataset(_Items(list(data)))
    value, index = tensor_ds[1]
    assert torch.equal(value, data[1]) and _is_index(index, 1)
    scalar_ds = IndexedDataset(_Items(["a", "b"]))
    assert scalar_ds[0][0] == "a" and _is_index(scalar_ds[0][1], 0)


def test_list_items_stay_lists():
    ds = IndexedDataset(_Items([[torch.zeros(1), 5]] * 2))
    item = ds[1]
    assert isinstance(item, list) and item[1] == 5 and _is_index(item[2], 1)


@given(length=st.integers(1, 50), data=st.data())
def test_negative_indices_report_their_positive_position(length, data):
    ds = IndexedDataset(_Items(list(range(length))))
    i = data.draw(st.integers(-length, length - 1))
    value, index = ds[i]
    assert value == i % length and int(index) == i % length


def test_out_of_range_index():
    ds = IndexedDataset(_Items([0, 1]))
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(TypeError, match="`index`"):
        ds["0"]


def test_batches_carry_the_sampled_indices():
    x = torch.arange(20.0)[:, None]
    loader = DataLoader(IndexedDataset(TensorDataset(x)), batch_size=6, shuffle=True)
    seen = []
    for values, index in loader:
        assert index.dtype == torch.int64
        assert torch.equal(values[:, 0].long(), index)
        seen += index.tolist()
    assert sorted(seen) == list(range(20))


def test_attributes_and_pickling():
    ds = IndexedDataset(_Items([1, 2, 3]))
    assert ds.note == "kept"
    with pytest.raises(AttributeError):
        _ = ds.missing
    restored = pickle.loads(pickle.dumps(ds))
    assert restored[2][0] == 3 and int(restored[2][1]) == 2


def test_rejects_datasets_without_indices():
    class Stream(IterableDataset):
        def __iter__(self):
            yield 0

    with pytest.raises(TypeError, match="`dataset`"):
        IndexedDataset(Stream())
    with pytest.raises(TypeError, match="`dataset`"):
        IndexedDataset(object())
