"""Synthetic images whose class is defined by two parts: both must be present for the positive class.

Positives show part A and part B; negatives show one of the two parts, alone, twice or beside a distractor shape,
so neither part alone, nor the number of objects, nor the distractor decides the label: a network must tell the
two parts apart to classify. Each part's pixel mask is returned, so one can check where concept explanations
look (:class:`~lightning_xai.modules.XNN`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai._checks import describe
from lightning_xai.data.shapes import (
    _TEXTURE_AMPLITUDE,
    SHAPE_CLASSES,
    ShapesDataset,
    _check_probability,
    _item_generator,
    _normalize_index,
)

__all__ = [
    "DEFAULT_NEGATIVES",
    "NEGATIVE_KINDS",
    "PART_COLOURS",
    "TwoPartDataset",
    "part_split_rate",
    "points_at_parts",
]

#: Object colours of part A, part B and the distractor when ``colour_coded`` (far from every background value).
PART_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.95, 0.05, 0.05),
    (0.05, 0.05, 0.95),
    (0.05, 0.95, 0.05),
)

#: The kinds of negative image: one part (A or B, each with probability 1/2) alone, twice, or beside the
#: distractor; the distractor alone or twice (neither part).
NEGATIVE_KINDS = ("part", "part+part", "part+distractor", "distractor", "distractor+distractor")
DEFAULT_NEGATIVES = ("part", "part+part", "part+distractor")

_PARTS_STREAM = 0x5041  # separates the random stream from the other synthetic datasets
_MIN_RADIUS = 3.0
# Radii as a fraction of the side, in a narrow range: one large part never covers more pixels than two small ones,
# so the size of an object says nothing about the label.
_RADIUS = (0.14, 0.17)
_BACKGROUND = 0.5


class TwoPartDataset(ShapesDataset):
    """Images of two objects; label 1 iff both parts (shapes ``parts[0]`` and ``parts[1]``) are present.

    A positive (probability ``positive_rate``) shows part A and part B; a negative is one of ``negatives`` (each
    equally likely, see :data:`NEGATIVE_KINDS`): by default part A or part B (each with probability 1/2) alone,
    twice, or beside the ``distractor`` shape. With the doubles, counting the objects of the parts' colours does
    not decide the label: a network has to tell the two parts apart (a tiny CNN that averages its features over
    the image before a linear head reached 0.65–0.82 held-out accuracy; the same CNN with global max pooling
    reaches 1.0). Positions, sizes and small rotations are random; objects never touch. With ``colour_coded`` each shape has its own colour
    (:data:`PART_COLOURS`), which makes the task learnable by a tiny CNN in seconds; otherwise colours are random
    as in :class:`ShapesDataset`. The background is a grey texture with no cue.

    Items are dicts with ``image`` (float32 (3, H, W) in [0, 1]), ``label`` (int64: 1 = both parts),
    ``mask`` (bool (H, W): the pixels of the parts present, distractor excluded), ``part_masks`` (bool
    (2, H, W): part A and part B, all False where absent) and ``index``. Items depend only on ``(seed, split, index)``.

    Example:
        >>> ds = TwoPartDataset(8, image_size=32, seed=0)
        >>> item = ds[0]
        >>> item["image"].shape, item["part_masks"].shape
        (torch.Size([3, 32, 32]), torch.Size([2, 32, 32]))
        >>> bool(item["part_masks"].any(dim=(1, 2)).all()) == bool(item["label"])
        True
    """

    def __init__(
        self,
        num_samples: int = 1000,
        *,
        image_size: int = 32,
        parts: tuple[str, str] = ("circle", "square"),
        distractor: str = "triangle",
        positive_rate: float = 0.5,
        colour_coded: bool = True,
        negatives: Sequence[str] = DEFAULT_NEGATIVES,
        split: str = "train",
        seed: int = 0,
    ) -> None:
        super().__init__(
            num_samples, image_size=image_size, num_classes=2, num_objects=2, split=split, seed=seed
        )
        shapes = (*tuple(parts), distractor)
        if len(shapes) != 3 or len(set(shapes)) != 3 or any(s not in SHAPE_CLASSES for s in shapes):
            raise ValueError(
                f"`parts` (two shapes) and `distractor` must be three different shapes of {SHAPE_CLASSES}, "
                f"got parts={parts!r}, distractor={distractor!r}"
            )
        if not isinstance(colour_coded, bool):
            raise TypeError(f"`colour_coded` must be a bool, got {describe(colour_coded)}")
        self.shapes = shapes
        self.positive_rate = _check_probability("positive_rate", positive_rate)
        self.colour_coded = colour_coded
        self.negatives = _check_negatives(negatives)
        self.classes = ("not both", "both parts")

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        i = _normalize_index(index, self.num_samples)
        g = _item_generator(_PARTS_STREAM, self.seed, self.split, i)
        size = self.image_size
        u = torch.rand(20, generator=g, dtype=torch.float64).tolist()
        label = int(u[0] < self.positive_rate)
        # objects: shape indices into self.shapes (0 = part A, 1 = part B, 2 = distractor)
        negative = self.negatives[int(u[19] * len(self.negatives))]  # u < 1
        part = int(u[1] < 0.5)
        kinds = [0, 1] if label else [part if name == "part" else 2 for name in negative.split("+")]
        lo, hi = (max(r * size, _MIN_RADIUS) for r in _RADIUS)
        radii = [lo + (hi - lo) * x for x in u[2 : 2 + len(kinds)]]
        angles = [0.26 * (2.0 * x - 1.0) for x in u[4 : 4 + len(kinds)]]
        centres = self._place(radii, u[6:11], g)
        instance_masks = torch.stack(
            [
                self._render(self.shapes[k], c, r, a)
                for k, c, r, a in zip(kinds, centres, radii, angles, strict=True)
            ]
        )
        part_masks = torch.zeros(2, size, size, dtype=torch.bool)
        for kind, mask in zip(kinds, instance_masks, strict=True):
            if kind < 2:
                part_masks[kind] |= mask

        cells = self._texture_cells
        coarse = torch.rand((1, 1, cells, cells), generator=g, dtype=torch.float32)
        coarse = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        fine = torch.rand((size, size), generator=g, dtype=torch.float32)
        texture = (0.7 * coarse + 0.3 * fine) * 2.0 - 1.0
        image = (_BACKGROUND + _TEXTURE_AMPLITUDE * texture).expand(3, size, size).clone()
        for n, (kind, mask) in enumerate(zip(kinds, instance_masks, strict=True)):
            if self.colour_coded:
                colour = torch.tensor(PART_COLOURS[kind])
            else:
                level = torch.tensor(u[11 + 3 * n : 14 + 3 * n], dtype=torch.float32) * 2.0
                colour = torch.where(level < 1.0, level * 0.08, 1.0 - (level - 1.0) * 0.08)
            image = torch.where(mask, colour[:, None, None], image)
        return {
            "image": image,
            "label": torch.tensor(label, dtype=torch.int64),
            "mask": part_masks.any(0),
            "part_masks": part_masks,
            "index": torch.tensor(i, dtype=torch.int64),
        }


def _check_negatives(negatives: Sequence[str]) -> tuple[str, ...]:
    names = (negatives,) if isinstance(negatives, str) else tuple(negatives)
    if not names or any(name not in NEGATIVE_KINDS for name in names):
        raise ValueError(f"`negatives` must be a non-empty list of {NEGATIVE_KINDS}, got {negatives!r}")
    return names


def points_at_parts(heatmaps: Tensor, part_masks: Tensor, tolerance: int = 1) -> Tensor:
    """Which part each concept's heatmap points at: (B, k, 2) bool, ``[..., 0]`` part A and ``[..., 1]`` part B.

    A concept points at a part when its map is not all zero and its maximum lies within ``tolerance`` pixels of
    that part's mask and not of the other's (the pointing game of :func:`part_split_rate`).

    Example:
        >>> import torch
        >>> masks = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
        >>> masks[0, 0, :2, :2] = masks[0, 1, 6:, 6:] = True
        >>> maps = torch.zeros(1, 3, 8, 8)
        >>> maps[0, 0, 0, 0] = maps[0, 1, 7, 7] = 1.0
        >>> points_at_parts(maps, masks, tolerance=0)[0].tolist()
        [[True, False], [False, True], [False, False]]
    """
    if heatmaps.ndim != 4 or part_masks.ndim != 4 or part_masks.shape[1] != 2:
        raise ValueError(
            f"`heatmaps` must be (B, k, H, W) and `part_masks` (B, 2, H, W), got {describe(heatmaps)} and "
            f"{describe(part_masks)}"
        )
    if heatmaps.shape[0] != part_masks.shape[0] or heatmaps.shape[-2:] != part_masks.shape[-2:]:
        raise ValueError(
            f"`heatmaps` {tuple(heatmaps.shape)} and `part_masks` {tuple(part_masks.shape)} do not match"
        )
    masks = part_masks.float()
    if tolerance > 0:
        masks = F.max_pool2d(masks, 2 * tolerance + 1, stride=1, padding=tolerance)
    flat = heatmaps.flatten(2)
    active = flat.amax(-1) > 0  # (B, k)
    near = masks.flatten(2).gather(2, flat.argmax(-1)[:, None, :].expand(-1, 2, -1)) > 0  # (B, 2, k)
    alone = near & ~near.flip(1)  # near this part and not the other
    return (alone & active[:, None]).transpose(1, 2)


def part_split_rate(heatmaps: Tensor, part_masks: Tensor, tolerance: int = 1) -> tuple[Tensor, Tensor]:
    """How often different concepts point at different parts, and how often that happens by chance.

    For each image (with both parts present) and each concept with a non-zero heatmap, the concept *points at*
    part A or part B when its heatmap's maximum lies within ``tolerance`` pixels of that part's mask (the
    pointing game; a maximum near neither part, or near both, points at none). An image is *split* when at
    least one concept points at A and another at B. The chance level of an image whose m concepts point at a
    part is ``1 − 2^{1−m}``: the probability that m fair coins do not all agree, i.e. of a split if each
    pointing concept picked its part at random.

    Args:
        heatmaps: (B, k, H, W) concept heatmaps (zero maps are inactive concepts).
        part_masks: (B, 2, H, W) masks of part A and part B.

    Returns:
        ``(split, chance)``: two (B,) float tensors, 1/0 per image and the chance level per image.

    Example:
        >>> import torch
        >>> masks = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
        >>> masks[0, 0, :2, :2] = masks[0, 1, 6:, 6:] = True
        >>> maps = torch.zeros(1, 3, 8, 8)
        >>> maps[0, 0, 0, 0] = maps[0, 1, 7, 7] = 1.0
        >>> part_split_rate(maps, masks, tolerance=0)
        (tensor([1.]), tensor([0.5000]))
    """
    points = points_at_parts(heatmaps, part_masks, tolerance)  # (B, k, 2)
    split = points.any(1).all(-1).float()
    pointing = points.any(-1).sum(1).float()
    chance = (1 - 2 ** (1 - pointing)).clamp_min(0)
    return split, chance
