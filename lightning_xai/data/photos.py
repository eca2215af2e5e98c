"""Real photos with an object annotation, read at run time from installed packages (the ``[real]`` extra).

Six photos, each with the ImageNet-1k class of its object and where that object is:

=============  ======================  ===========================  =============================================
name           object (ImageNet class)  annotation                   source (licence as the package states it)
=============  ======================  ===========================  =============================================
``chelsea``    Egyptian cat (285)       box around the head          scikit-image ``data.chelsea`` (CC0)
``coffee``     espresso (967)           box: cup, saucer and spoon   scikit-image ``data.coffee`` (CC0)
``rocket``     missile (657)            box around the rocket        scikit-image ``data.rocket`` (public domain)
``motorcycle`` moped (665)              box around the motorcycle    scikit-image ``data.stereo_motorcycle``
                                                                     (Middlebury stereo 2014; see skimage's docs)
``camera``     tripod (872)             box: camera and tripod       scikit-image ``data.camera`` (CC0)
``quokka``     wallaby (104)            the package's polygon mask   imgaug ``quokka.jpg`` (imgaug is MIT)
=============  ======================  ===========================  =============================================

The boxes of the scikit-image photos were drawn for this library; the quokka's polygon and box come with imgaug
(its files are read directly; the package is never imported). Nothing is copied into this repository and nothing
is downloaded. Every photo is resized to a square (no crop, as the I-GOS reference does), and its annotation with
it. ImageNet has no quokka class: its closest relative, ``wallaby``, is the quokka's label.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["PHOTOS", "Photo", "PhotoDataset", "load_photos"]

#: name -> (ImageNet class index, class name, box (x1, y1, x2, y2) in the original pixels; None: from the file).
_ANNOTATIONS: dict[str, tuple[int, str, tuple[int, int, int, int] | None]] = {
    "chelsea": (285, "Egyptian cat", (45, 0, 390, 300)),
    "coffee": (967, "espresso", (75, 10, 475, 295)),
    "rocket": (657, "missile", (306, 128, 338, 362)),
    "motorcycle": (665, "moped", (80, 135, 690, 430)),
    "camera": (872, "tripod", (150, 140, 410, 512)),
    "quokka": (104, "wallaby", None),
}
#: The photos :func:`load_photos` knows, in its default order.
PHOTOS: tuple[str, ...] = tuple(_ANNOTATIONS)

_INSTALL = 'install them with `pip install "lightning_xai[real]"`'


@dataclass(frozen=True)
class Photo:
    """One photo at ``image_size``: ``image`` (3, S, S) in [0, 1], ``mask`` (S, S) bool (the object's polygon
    or box), ``box`` (x1, y1, x2, y2) in pixels at size S (x2, y2 exclusive), the object's ImageNet ``label``
    and ``class_name``, and ``source``."""

    name: str
    image: Tensor
    mask: Tensor
    box: tuple[int, int, int, int]
    label: int
    class_name: str
    source: str


def _package_dir(package: str, extra: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the photo {extra!r} is read from the package `{package}`; {_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def _original(name: str) -> tuple[np.ndarray, list[tuple[float, float]] | None, tuple[float, ...]]:
    """The photo as uint8 (H, W, 3), its polygon (or None) and its box, in original pixels."""
    if name == "quokka":
        from PIL import Image

        root = _package_dir("imgaug", name)
        image = np.asarray(Image.open(root / "quokka.jpg").convert("RGB"))
        notes = json.loads((root / "quokka_annotations.json").read_text())
        polygon = [(p["x"], p["y"]) for p in notes["polygons"][0]["keypoints"]]
        box = notes["bounding_boxes"][0]
        return image, polygon, (box["x1"], box["y1"], box["x2"], box["y2"])
    _package_dir("skimage", name)
    import skimage.data

    image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    box = _ANNOTATIONS[name][2]
    assert box is not None
    return image, None, box


def _photo(name: str, size: int) -> Photo:
    from PIL import Image, ImageDraw

    original, polygon, box = _original(name)
    height, width = original.shape[:2]
    sx, sy = size / width, size / height
    resized = Image.fromarray(original).resize((size, size), Image.BILINEAR)
    image = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float() / 255.0
    x1, y1 = int(np.floor(box[0] * sx)), int(np.floor(box[1] * sy))
    scaled_box = (x1, y1, max(int(np.ceil(box[2] * sx)), x1 + 1), max(int(np.ceil(box[3] * sy)), y1 + 1))
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[scaled_box[1] : scaled_box[3], scaled_box[0] : scaled_box[2]] = True
    if polygon is not None:  # the polygon, kept inside its annotated box
        canvas = Image.new("L", (size, size), 0)
        ImageDraw.Draw(canvas).polygon([(x * sx, y * sy) for x, y in polygon], fill=1)
        mask &= torch.from_numpy(np.array(canvas) > 0)
    label, class_name, _ = _ANNOTATIONS[name]
    source = "imgaug/quokka.jpg" if name == "quokka" else f"skimage.data.{name}"
    return Photo(name, image, mask, scaled_box, label, class_name, source)


def load_photos(names: list[str] | tuple[str, ...] | None = None, image_size: int = 224) -> list[Photo]:
    """The photos ``names`` (default: all of :data:`PHOTOS`) at ``image_size`` × ``image_size`` pixels.

    Raises ``ModuleNotFoundError`` naming the package to install when scikit-image (or imgaug, for the quokka)
    is missing, and ``ValueError`` for an unknown name.

    >>> photos = load_photos(["coffee"], image_size=64)  # doctest: +SKIP
    >>> photos[0].image.shape, photos[0].class_name  # doctest: +SKIP
    (torch.Size([3, 64, 64]), 'espresso')
    """
    names = PHOTOS if names is None else tuple(names)
    unknown = [n for n in names if n not in _ANNOTATIONS]
    if unknown:
        raise ValueError(f"unknown photo(s) {unknown}; known: {list(PHOTOS)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"`image_size` must be an int >= 8, got {image_size!r}")
    return [_photo(name, image_size) for name in names]


class PhotoDataset(Dataset):
    """:func:`load_photos` as a map-style dataset with the items of :class:`ShapesDataset`: ``image``,
    ``label`` (the ImageNet class), ``mask`` and ``index``; ``names`` and ``class_names`` per item."""

    def __init__(self, names: list[str] | tuple[str, ...] | None = None, image_size: int = 224) -> None:
        self.photos = load_photos(names, image_size)
        self.names = [p.name for p in self.photos]
        self.class_names = [p.class_name for p in self.photos]

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        photo = self.photos[i]
        return {
            "image": photo.image,
            "label": torch.tensor(photo.label, dtype=torch.int64),
            "mask": photo.mask,
            "index": torch.tensor(i, dtype=torch.int64),
        }
