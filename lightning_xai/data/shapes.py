"""Synthetic images of shapes whose explanation is known: the object's pixel mask.

Each image shows one class-defining shape (or two instances of it) at a random position, scale,
rotation and colour on a textured background. The background carries a *cue*, a colour tint with
one value per class, that can be made to agree with the label (``bias``) so that a model can take a
shortcut; the test split is always bias-conflicting, so a shortcut shows up as lost accuracy there.

Items are generated on the fly from ``(seed, split, index)`` alone, so access order, shuffling and
DataLoader workers never change the data.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from lightning_xai._checks import check_in_choices, check_int, describe
from lightning_xai.data._datamodule import SyntheticDataModule

__all__ = ["CUE_TINTS", "SHAPE_CLASSES", "SPLITS", "ShapesDataModule", "ShapesDataset", "agreement_rate"]

#: Class names, in label order. ``num_classes=k`` uses the first ``k``.
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "plus", "diamond", "ring")

#: Background tint (RGB) that encodes cue value ``c``; one per class in :data:`SHAPE_CLASSES`.
CUE_TINTS: tuple[tuple[float, float, float], ...] = (
    (0.70, 0.30, 0.30),
    (0.30, 0.70, 0.30),
    (0.30, 0.30, 0.70),
    (0.70, 0.70, 0.30),
    (0.70, 0.30, 0.70),
    (0.30, 0.70, 0.70),
)

#: Split names. ``"train"`` and ``"val"`` follow ``bias``; ``"test"`` is always bias-conflicting.
SPLITS: tuple[str, ...] = ("train", "val", "test")

MIN_IMAGE_SIZE = 16

# Background channels stay within tint +- amplitude, i.e. in [0.18, 0.82]; object channels are drawn
# from [0, 0.08] or [0.92, 1]. The gap guarantees that no background pixel ever takes the object's
# colour, so "pixels equal to the object colour" and "pixels under the mask" are the same set.
_TEXTURE_AMPLITUDE = 0.12
_OBJECT_CHANNEL_SPAN = 0.08
# Radii as a fraction of the image side, for one object and for each of two objects; small images
# get at least _MIN_RADIUS pixels.
_RADIUS_ONE = (0.18, 0.32)
_RADIUS_TWO = (0.12, 0.20)
_MIN_RADIUS = 3.0
_MAX_ANGLE = math.radians(15.0)  # small, so a square never turns into a diamond
_PLACEMENT_TRIES = 16
_SHAPES_STREAM = 0x5348  # separates the random streams of the image and token datasets

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _item_generator(stream: int, seed: int, split: str, index: int) -> torch.Generator:
    """A CPU generator that depends only on ``(stream, seed, split, index)``.

    Chained splitmix64 rounds keep nearby seeds and indices from giving correlated streams.
    """
    x = _splitmix64(seed & _MASK64)
    for part in (stream, SPLITS.index(split), index):
        x = _splitmix64(x ^ part)
    return torch.Generator().manual_seed(x >> 1)


def _draw_cue(
    label: int, num_classes: int, bias: float | None, conflicting: bool, u_copy: float, u_value: float
) -> int:
    """Cue value from two uniforms in [0, 1).

    ``bias=None`` draws the cue uniformly from all classes (independent of the label). Otherwise the cue
    equals the label with probability ``bias`` and is drawn uniformly from the other classes else, so the
    bias-aligned fraction is exactly ``bias``; conflicting splits always draw from the other classes.
    """
    if bias is None and not conflicting:
        return min(int(u_value * num_classes), num_classes - 1)
    if not conflicting and u_copy < bias:
        return label
    return (label + 1 + min(int(u_value * (num_classes - 1)), num_classes - 2)) % num_classes


def agreement_rate(bias: float | None, num_classes: int) -> float:
    """Probability that the cue equals the label in a ``"train"`` or ``"val"`` split: ``bias``, or
    ``1 / num_classes`` for an independent cue (``bias=None``)."""
    return 1.0 / num_classes if bias is None else bias


def _check_bias(value: object) -> float | None:
    return None if value is None else _check_probability("bias", value)


def _check_probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a float in [0, 1], got {describe(value)}")
    if not 0.0 <= float(value) <= 1.0:  # also rejects NaN
        raise ValueError(f"`{name}` must be in [0, 1], got {value!r}")
    return float(value)


def _check_seed(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`seed` must be an int, got {describe(value)}")
    return value


def _normalize_index(index: object, length: int) -> int:
    try:
        i = operator.index(index)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"`index` must be an int, got {describe(index)}") from None
    if not -length <= i < length:
        raise IndexError(f"index {i} is out of range for a dataset of length {length}")
    return i % length


def _shape_mask(shape: str, u: Tensor, v: Tensor) -> Tensor:
    """Boolean mask of ``shape`` in object coordinates (unit radius, y pointing down).

    Every shape fits inside the unit disc, so any rotation keeps it within ``radius`` of its centre.
    """
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (u.abs() <= 0.7) & (v.abs() <= 0.7)
    if shape == "triangle":  # equilateral, inscribed in the unit circle, apex up
        return (v <= 0.5) & (u.abs() <= (v + 1.0) / math.sqrt(3.0))
    if shape == "plus":
        au, av = u.abs(), v.abs()
        return ((au <= 0.95) & (av <= 0.3)) | ((au <= 0.3) & (av <= 0.95))
    if shape == "diamond":
        return u.abs() + v.abs() <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPE_CLASSES}")


class ShapesDataset(Dataset):
    """Images of a class-defining shape with its pixel mask and a background cue.

    Args:
        num_samples: number of items.
        image_size: side of the square images in pixels (at least 16).
        num_classes: number of shape classes, the first ``num_classes`` of :data:`SHAPE_CLASSES`.
        bias: the probability that the background cue agrees with the label in the ``"train"`` and
            ``"val"`` splits (the bias-aligned fraction); a disagreeing cue is drawn uniformly from the
            other classes. ``None`` (the default) draws the cue independently of the label, uniformly
            from all classes (see :attr:`agreement_rate`).
        num_objects: 1, or 2 for two non-touching instances of the same class (several sufficient
            explanations); ``mask`` is then their union and ``instance_masks`` holds each one.
        split: ``"train"``, ``"val"`` or ``"test"``. The test split is always bias-conflicting: its
            cue never equals the label (drawn uniformly from the other classes), whatever ``bias``.
        seed: item ``i`` depends only on ``(seed, split, i)``.

    Items are dicts with ``image`` (float32 ``(3, H, W)`` in [0, 1]), ``label`` (int64 scalar),
    ``mask`` (bool ``(H, W)``: exactly the object's pixels, which all have the object's colour and
    are the only pixels that have it), ``instance_masks`` (bool ``(num_objects, H, W)``), ``cue``
    (int64 scalar: the class whose tint the background has) and ``index`` (int64 scalar).
    One 64 px item takes about 0.3 ms on one CPU thread (0.5 ms with two objects).

    Example:
        >>> ds = ShapesDataset(8, image_size=32, bias=0.9, seed=1)
        >>> item = ds[3]
        >>> item["image"].shape, item["mask"].shape, item["label"].dtype
        (torch.Size([3, 32, 32]), torch.Size([32, 32]), torch.int64)
        >>> ds.classes
        ('circle', 'square', 'triangle', 'plus')
        >>> bool((ds[3]["image"] == item["image"]).all())
        True
    """

    def __init__(
        self,
        num_samples: int = 1000,
        *,
        image_size: int = 64,
        num_classes: int = 4,
        bias: float | None = None,
        num_objects: int = 1,
        split: str = "train",
        seed: int = 0,
    ) -> None:
        self.num_samples = check_int("num_samples", num_samples, 0)
        self.image_size = check_int("image_size", image_size, MIN_IMAGE_SIZE)
        self.num_classes = check_int("num_classes", num_classes, 2, len(SHAPE_CLASSES))
        self.bias = _check_bias(bias)
        self.num_objects = check_int("num_objects", num_objects, 1, 2)
        check_in_choices("split", split, SPLITS)
        self.split = split
        self.seed = _check_seed(seed)
        self.classes: tuple[str, ...] = SHAPE_CLASSES[:num_classes]
        self.conflicting = split == "test"
        coords = torch.arange(image_size, dtype=torch.float32)
        self._ys, self._xs = torch.meshgrid(coords, coords, indexing="ij")
        self._tints = torch.tensor(CUE_TINTS, dtype=torch.float32)
        self._texture_cells = max(2, image_size // 8)

    @property
    def agreement_rate(self) -> float:
        """Probability that ``cue == label`` for an item of this split (0 for the test split)."""
        return 0.0 if self.conflicting else agreement_rate(self.bias, self.num_classes)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        i = _normalize_index(index, self.num_samples)
        g = _item_generator(_SHAPES_STREAM, self.seed, self.split, i)
        size = self.image_size
        k = self.num_classes
        u = torch.rand(16, generator=g, dtype=torch.float64).tolist()
        label = min(int(u[0] * k), k - 1)
        cue = _draw_cue(label, k, self.bias, self.conflicting, u[1], u[2])

        # Each channel near 0 or near 1, far from every background value.
        level = torch.tensor(u[3:6], dtype=torch.float32) * 2.0
        colour = torch.where(
            level < 1.0, level * _OBJECT_CHANNEL_SPAN, 1.0 - (level - 1.0) * _OBJECT_CHANNEL_SPAN
        )

        lo, hi = _RADIUS_ONE if self.num_objects == 1 else _RADIUS_TWO
        # At least _MIN_RADIUS pixels: every shape then holds a disc wide enough to contain pixels.
        lo, hi = max(lo * size, _MIN_RADIUS), max(hi * size, _MIN_RADIUS)
        radii = [lo + (hi - lo) * x for x in u[6 : 6 + self.num_objects]]
        angles = [_MAX_ANGLE * (2.0 * x - 1.0) for x in u[8 : 8 + self.num_objects]]
        centres = self._place(radii, u[10:15], g)

        shape = self.classes[label]
        instance_masks = torch.stack(
            [self._render(shape, c, r, a) for c, r, a in zip(centres, radii, angles, strict=True)]
        )
        mask = instance_masks.any(dim=0)

        cells = self._texture_cells
        coarse = torch.rand((1, 1, cells, cells), generator=g, dtype=torch.float32)
        coarse = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        fine = torch.rand((size, size), generator=g, dtype=torch.float32)
        texture = (0.7 * coarse + 0.3 * fine) * 2.0 - 1.0  # in [-1, 1]
        background = self._tints[cue][:, None, None] + _TEXTURE_AMPLITUDE * texture
        image = torch.where(mask, colour[:, None, None], background)

        return {
            "image": image,
            "label": torch.tensor(label, dtype=torch.int64),
            "mask": mask,
            "instance_masks": instance_masks,
            "cue": torch.tensor(cue, dtype=torch.int64),
            "index": torch.tensor(i, dtype=torch.int64),
        }

    def _place(self, radii: list[float], u: list[float], g: torch.Generator) -> list[tuple[float, float]]:
        """Object centres (x, y) that keep every object fully inside the image and apart from the others."""
        size = self.image_size

        def span(r: float, x: float, lo: float = 0.0, hi: float | None = None) -> float:
            lo, hi = lo + r, (size - 1 if hi is None else hi) - r
            return lo + x * (hi - lo)

        if len(radii) == 1:
            return [(span(radii[0], u[0]), span(radii[0], u[1]))]

        r1, r2 = radii
        cand = torch.rand((_PLACEMENT_TRIES, 4), generator=g, dtype=torch.float64)
        c1 = r1 + cand[:, :2] * (size - 1 - 2 * r1)
        c2 = r2 + cand[:, 2:] * (size - 1 - 2 * r2)
        # 1.5 px more than touching discs: instances never share or neighbour a pixel.
        ok = (c1 - c2).norm(dim=1) > r1 + r2 + 1.5
        if bool(ok.any()):
            j = int(ok.nonzero()[0, 0])
            (x1, y1), (x2, y2) = c1[j].tolist(), c2[j].tolist()
            return [(x1, y1), (x2, y2)]
        # Fallback, common only in small images: one object in each half of the image along a random
        # axis, with an empty pixel between the halves (fits radii up to 0.2 * size once size >= 15).
        half = size / 2.0
        a1, b1 = span(r1, u[0], hi=half - 1.5), span(r1, u[1])
        a2, b2 = span(r2, u[2], lo=half + 0.5), span(r2, u[3])
        if u[4] < 0.5:
            return [(a1, b1), (a2, b2)]
        return [(b1, a1), (b2, a2)]

    def _render(self, shape: str, centre: tuple[float, float], radius: float, angle: float) -> Tensor:
        dx = self._xs - centre[0]
        dy = self._ys - centre[1]
        cos, sin = math.cos(angle) / radius, math.sin(angle) / radius
        return _shape_mask(shape, dx * cos + dy * sin, dy * cos - dx * sin)

    def normalization(self, num_items: int = 256) -> tuple[Tensor, Tensor]:
        """Per-channel mean and standard deviation (each of shape ``(3,)``) over the first items.

        Example:
            >>> mean, std = ShapesDataset(64, image_size=32).normalization()
            >>> mean.shape, std.shape
            (torch.Size([3]), torch.Size([3]))
        """
        check_int("num_items", num_items, 1)
        n = min(num_items, self.num_samples)
        if n == 0:
            raise ValueError("`normalization` needs a non-empty dataset, got `num_samples=0`")
        images = torch.stack([self[i]["image"] for i in range(n)])
        return images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))


class ShapesDataModule(SyntheticDataModule):
    """Train, val and bias-conflicting test splits of :class:`ShapesDataset`.

    ``train`` and ``val`` follow ``bias``; ``test`` (also used for ``predict``) is always
    bias-conflicting: its cue never equals the label. With ``bias=None`` the cue carries no information
    in training, so the test split is then an ordinary held-out set. The train loader shuffles with a
    generator seeded from ``seed``, so runs repeat exactly.

    Example:
        >>> dm = ShapesDataModule(batch_size=4, image_size=32, train_size=8, val_size=4, test_size=4)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch["image"].shape, batch["mask"].shape, batch["label"].shape
        (torch.Size([4, 3, 32, 32]), torch.Size([4, 32, 32]), torch.Size([4]))
    """

    def __init__(
        self,
        batch_size: int = 32,
        image_size: int = 64,
        num_classes: int = 4,
        bias: float | None = None,
        num_objects: int = 1,
        train_size: int = 2000,
        val_size: int = 500,
        test_size: int = 500,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self._build_splits(
            ShapesDataset,
            batch_size=batch_size,
            num_workers=num_workers,
            sizes={"train": train_size, "val": val_size, "test": test_size},
            image_size=image_size,
            num_classes=num_classes,
            bias=bias,
            num_objects=num_objects,
            seed=seed,
        )
        self.save_hyperparameters()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.datasets["train"].classes

    def normalization(self, num_items: int = 256) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std of the training split (see :meth:`ShapesDataset.normalization`)."""
        return self.datasets["train"].normalization(num_items)
