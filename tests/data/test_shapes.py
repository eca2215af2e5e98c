import math
import random

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn
from torch.utils.data import DataLoader

import lightning_xai.data.shapes as shapes_module
from lightning_xai.data import CUE_TINTS, SHAPE_CLASSES, ShapesDataModule, ShapesDataset, agreement_rate

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _within_sampling_error(hits: int, n: int, p: float) -> bool:
    return abs(hits / n - p) <= 3.0 * math.sqrt(p * (1.0 - p) / n) + 1e-12


@pytest.mark.parametrize("num_objects", [1, 2])
def test_item_keys_shapes_and_dtypes(num_objects):
    item = ShapesDataset(4, image_size=32, num_objects=num_objects)[1]
    assert set(item) == {"image", "label", "mask", "instance_masks", "cue", "index"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.bool
    assert (
        item["instance_masks"].shape == (num_objects, 32, 32) and item["instance_masks"].dtype == torch.bool
    )
    for key in ("label", "cue", "index"):
        assert item[key].shape == () and item[key].dtype == torch.int64
    assert int(item["index"]) == 1
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0


@pytest.mark.parametrize(("image_size", "num_objects"), [(16, 1), (32, 1), (64, 1), (16, 2), (64, 2)])
def test_mask_covers_exactly_the_object_pixels(image_size, num_objects):
    ds = ShapesDataset(
        60, image_size=image_size, num_classes=len(SHAPE_CLASSES), num_objects=num_objects, seed=7
    )
    for i in range(len(ds)):
        item = ds[i]
        image, mask = item["image"], item["mask"]
        assert mask.any(), f"item {i} has an empty mask"
        inside = image[:, mask]
        colour = inside[:, :1]
        assert torch.equal(inside, colour.expand_as(inside)), "the object is not painted in one colour"
        # No background pixel takes the object's colour, nor comes close to it.
        same_colour = (image == colour[:, :, None]).all(dim=0)
        assert torch.equal(same_colour, mask)
        outside = image[:, ~mask]
        assert float((outside - colour).abs().amax(dim=0).min()) >= 0.09


def test_mask_is_the_rendered_shape():
    ds = ShapesDataset(40, image_size=64, num_classes=len(SHAPE_CLASSES), seed=3)
    for i in range(len(ds)):
        item = ds[i]
        mask = item["mask"].numpy()
        _, components = ndimage.label(mask, structure=EIGHT_CONNECTED)
        assert components == 1, f"item {i}: the object mask has {components} parts"
        # The shape is fully inside the image: it never touches the border.
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        name = SHAPE_CLASSES[int(item["label"])]
        filled = ndimage.binary_fill_holes(mask)
        # Only the ring has a hole, and it is a real one.
        assert (filled.sum() > mask.sum() + 3) == (name == "ring"), name


@pytest.mark.parametrize("image_size", [16, 64])
@pytest.mark.parametrize("placement_tries", [0, 16])
def test_two_objects_are_disjoint_instances_whose_union_is_the_mask(image_size, placement_tries, monkeypatch):
    # With no tries, every item takes the fallback placement (one object per half of the image).
    monkeypatch.setattr(shapes_module, "_PLACEMENT_TRIES", placement_tries)
    ds = ShapesDataset(60, image_size=image_size, num_objects=2, num_classes=len(SHAPE_CLASSES), seed=11)
    for i in range(len(ds)):
        item = ds[i]
        first, second = item["instance_masks"]
        assert first.any() and second.any()
        assert not (first & second).any()
        assert torch.equal(first | second, item["mask"])
        # Separate objects: growing one by a pixel in every direction never reaches the other.
        grown = ndimage.binary_dilation(first.numpy(), structure=EIGHT_CONNECTED)
        assert not (grown & second.numpy()).any()
        _, components = ndimage.label(item["mask"].numpy(), structure=EIGHT_CONNECTED)
        assert components == 2


@pytest.mark.parametrize("bias", [None, 0.0, 0.3, 0.8, 0.95, 1.0])
def test_cue_agrees_with_label_at_the_documented_rate(bias):
    n = 2000
    ds = ShapesDataset(n, image_size=16, bias=bias, seed=5)
    items = [ds[i] for i in range(n)]
    labels = torch.stack([item["label"] for item in items])
    cues = torch.stack([item["cue"] for item in items])
    p = agreement_rate(bias, 4)
    assert ds.agreement_rate == p
    assert _within_sampling_error(int((cues == labels).sum()), n, p)
    for c in range(4):  # labels are uniform over the classes
        assert _within_sampling_error(int((labels == c).sum()), n, 0.25)
    if bias is None:  # the cue is independent of the label: uniform given each label
        for c in range(4):
            given = cues[labels == c]
            for v in range(4):
                assert _within_sampling_error(int((given == v).sum()), len(given), 0.25)


@pytest.mark.parametrize("bias", [0.0, 0.5, 1.0])
def test_test_split_is_always_bias_conflicting(bias):
    ds = ShapesDataset(1200, image_size=16, bias=bias, split="test")
    assert ds.agreement_rate == 0.0
    items = [ds[i] for i in range(len(ds))]
    labels = torch.stack([item["label"] for item in items])
    cues = torch.stack([item["cue"] for item in items])
    assert not (cues == labels).any()
    for c in range(4):  # the conflicting cue is uniform over the three other classes
        given = cues[labels == c]
        for v in set(range(4)) - {c}:
            assert _within_sampling_error(int((given == v).sum()), len(given), 1 / 3)


def test_background_shows_the_cue_tint():
    ds = ShapesDataset(40, image_size=32, num_classes=len(SHAPE_CLASSES), bias=None, seed=2)
    tints = torch.tensor(CUE_TINTS)
    for i in range(len(ds)):
        item = ds[i]
        background = item["image"][:, ~item["mask"]].mean(dim=1)
        assert int((tints - background).norm(dim=1).argmin()) == int(item["cue"])


def _assert_items_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_equal_seeds_give_equal_data_and_different_seeds_differ():
    a = ShapesDataset(20, image_size=32, bias=0.5, num_objects=2, seed=4)
    b = ShapesDataset(20, image_size=32, bias=0.5, num_objects=2, seed=4)
    c = ShapesDataset(20, image_size=32, bias=0.5, num_objects=2, seed=5)
    for i in range(len(a)):
        _assert_items_equal(a[i], b[i])
    assert not all(torch.equal(a[i]["image"], c[i]["image"]) for i in range(len(a)))
    assert not all(torch.equal(a[i]["mask"], c[i]["mask"]) for i in range(len(a)))


def test_splits_differ():
    train = ShapesDataset(10, image_size=32, split="train")
    val = ShapesDataset(10, image_size=32, split="val")
    assert not any(torch.equal(train[i]["image"], val[i]["image"]) for i in range(10))


def test_item_does_not_depend_on_access_order_or_workers():
    ds = ShapesDataset(16, image_size=32, bias=0.7, seed=9)
    forward = [ds[i] for i in range(len(ds))]
    order = list(range(len(ds)))
    random.Random(0).shuffle(order)
    for i in order:
        _assert_items_equal(ds[i], forward[i])
    assert torch.equal(ds[-1]["image"], forward[-1]["image"])
    assert int(ds[-1]["index"]) == len(ds) - 1
    batch = next(iter(DataLoader(ds, batch_size=16, num_workers=2)))
    assert torch.equal(batch["image"], torch.stack([item["image"] for item in forward]))
    assert torch.equal(batch["index"], torch.arange(16))


def test_index_out_of_range():
    ds = ShapesDataset(3, image_size=16)
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(IndexError):
        ds[-4]
    with pytest.raises(TypeError, match="`index`"):
        ds[1.0]


def test_normalization():
    ds = ShapesDataset(64, image_size=32)
    mean, std = ds.normalization(num_items=64)
    images = torch.stack([ds[i]["image"] for i in range(64)])
    torch.testing.assert_close(mean, images.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(std, images.std(dim=(0, 2, 3)))
    assert ((mean > 0.2) & (mean < 0.8)).all() and (std > 0.05).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"bias": 1.5}, ValueError, "bias"),
        ({"bias": -0.1}, ValueError, "bias"),
        ({"bias": float("nan")}, ValueError, "bias"),
        ({"bias": "high"}, TypeError, "bias"),
        ({"num_classes": len(SHAPE_CLASSES) + 1}, ValueError, "num_classes"),
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"image_size": 15}, ValueError, "image_size"),
        ({"image_size": 32.0}, TypeError, "image_size"),
        ({"num_objects": 3}, ValueError, "num_objects"),
        ({"num_objects": 0}, ValueError, "num_objects"),
        ({"split": "dev"}, ValueError, "split"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"num_samples": -1}, ValueError, "num_samples"),
    ],
)
def test_dataset_rejects_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=f"`{name}`"):
        ShapesDataset(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"train_size": -1}, ValueError, "train_size"),
        ({"num_workers": -1}, ValueError, "num_workers"),
        ({"bias": 2.0}, ValueError, "bias"),
        ({"image_size": 8}, ValueError, "image_size"),
        ({"num_objects": 2.0}, TypeError, "num_objects"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=f"`{name}`"):
        ShapesDataModule(**kwargs)


@pytest.mark.parametrize("num_objects", [1, 2])
def test_datamodule_batches(num_objects):
    dm = ShapesDataModule(
        batch_size=4, image_size=32, bias=0.9, num_objects=num_objects, train_size=8, val_size=6, test_size=6
    )
    dm.setup("fit")
    dm.setup("test")
    loaders = {
        "train": dm.train_dataloader(),
        "val": dm.val_dataloader(),
        "test": dm.test_dataloader(),
        "predict": dm.predict_dataloader(),
    }
    for name, loader in loaders.items():
        batch = next(iter(loader))
        assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32, name
        assert batch["mask"].shape == (4, 32, 32) and batch["mask"].dtype == torch.bool
        assert batch["instance_masks"].shape == (4, num_objects, 32, 32)
        for key in ("label", "cue", "index"):
            assert batch[key].shape == (4,) and batch[key].dtype == torch.int64
    for batch in loaders["test"]:
        assert not (batch["cue"] == batch["label"]).any()
    assert len(dm.datasets["val"]) == 6 and dm.num_classes == 4 and dm.classes == SHAPE_CLASSES[:4]


def test_datamodule_shuffles_reproducibly():
    def order(seed):
        dm = ShapesDataModule(batch_size=5, image_size=16, train_size=20, seed=seed)
        dm.setup("fit")
        return torch.cat([batch["index"] for batch in dm.train_dataloader()])

    first = order(0)
    assert sorted(first.tolist()) == list(range(20))
    assert torch.equal(first, order(0))
    assert not torch.equal(first, torch.arange(20))


def test_datamodule_runs_in_a_trainer():
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch["image"]), batch["label"])

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", nn.functional.cross_entropy(self.net(batch["image"]), batch["label"]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = ShapesDataModule(batch_size=4, image_size=16, train_size=8, val_size=4, test_size=4)
    trainer = L.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), datamodule=dm)
    assert trainer.state.finished


def test_tiny_cnn_learns_unbiased_shapes():
    torch.manual_seed(0)
    dm = ShapesDataModule(batch_size=250, image_size=32, bias=None, train_size=2000, test_size=500)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    x_train = torch.cat([b["image"] for b in batches])
    y_train = torch.cat([b["label"] for b in batches])
    test = list(dm.test_dataloader())
    x_test = torch.cat([b["image"] for b in test])
    y_test = torch.cat([b["label"] for b in test])

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    model = nn.Sequential(
        block(3, 16),
        nn.MaxPool2d(2),
        block(16, 32),
        nn.MaxPool2d(2),
        block(32, 64),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 4),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(5):
        model.train()
        for idx in torch.randperm(len(x_train)).split(64):
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
    # The test split's cue never matches the label, so this accuracy comes from the shapes alone.
    assert accuracy >= 0.9
