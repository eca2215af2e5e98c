"""TwoPartDataset: the label is 'both parts present', masks are exact, items are reproducible."""

from __future__ import annotations

import pytest
import torch

from lightning_xai.data import TwoPartDataset, part_split_rate
from lightning_xai.data.parts import DEFAULT_NEGATIVES, NEGATIVE_KINDS, PART_COLOURS


def test_label_is_both_parts_and_masks_are_exact():
    ds = TwoPartDataset(64, image_size=32, seed=3)
    labels = []
    for i in range(len(ds)):
        item = ds[i]
        present = item["part_masks"].flatten(1).any(1)
        assert bool(item["label"]) == bool(present.all())
        assert bool(present.any())  # a negative still shows one of the parts
        assert not bool((item["part_masks"][0] & item["part_masks"][1]).any())
        assert torch.equal(item["mask"], item["part_masks"].any(0))
        for part in range(2):  # colour-coded: the part's pixels, and only they, have its colour
            colour = torch.tensor(PART_COLOURS[part])[:, None, None]
            coloured = (item["image"] - colour).abs().amax(0) < 1e-6
            assert torch.equal(coloured, item["part_masks"][part])
        labels.append(int(item["label"]))
    assert 0.3 < sum(labels) / len(labels) < 0.7
    assert torch.equal(ds[5]["image"], TwoPartDataset(64, image_size=32, seed=3)[5]["image"])
    assert not torch.equal(ds[5]["image"], TwoPartDataset(64, image_size=32, seed=4)[5]["image"])


def _negative_contents(ds: TwoPartDataset) -> list[tuple[int, bool, int]]:
    """(parts present, distractor shown, part pixels) of each negative item."""
    distractor = torch.tensor(PART_COLOURS[2])[:, None, None]
    contents = []
    for i in range(len(ds)):
        item = ds[i]
        if item["label"] == 0:
            shown = bool(((item["image"] - distractor).abs().amax(0) < 1e-6).any())
            present = int(item["part_masks"].flatten(1).any(1).sum())
            contents.append((present, shown, int(item["part_masks"].sum())))
    return contents


def test_each_kind_of_negative_shows_what_it_says():
    single = _negative_contents(TwoPartDataset(48, negatives=["part"], seed=1))
    double = _negative_contents(TwoPartDataset(48, negatives=["part+part"], seed=1))
    beside = _negative_contents(TwoPartDataset(48, negatives=["part+distractor"], seed=1))
    neither = _negative_contents(
        TwoPartDataset(48, negatives=["distractor", "distractor+distractor"], seed=1)
    )
    assert all(present == 1 and not shown for present, shown, _ in single + double)
    assert all(present == 1 and shown for present, shown, _ in beside)
    assert all(present == 0 and shown for present, shown, _ in neither)
    # a double shows the same part twice: about twice the pixels of a part alone (radii vary by ±10 %)
    area = {name: sum(a for *_, a in c) / len(c) for name, c in (("single", single), ("double", double))}
    assert 1.6 < area["double"] / area["single"] < 2.4, area
    # the default mixes single parts, doubles and a part beside the distractor
    assert DEFAULT_NEGATIVES == ("part", "part+part", "part+distractor")
    assert set(DEFAULT_NEGATIVES) <= set(NEGATIVE_KINDS)
    default = _negative_contents(TwoPartDataset(96, seed=2))
    assert any(shown for _, shown, _ in default) and not all(shown for _, shown, _ in default)
    assert max(a for *_, a in default) > 1.6 * min(a for *_, a in default)  # doubles among them


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="three different shapes"):
        TwoPartDataset(4, parts=("circle", "circle"))
    with pytest.raises(ValueError, match="three different shapes"):
        TwoPartDataset(4, distractor="hexagon")
    with pytest.raises(ValueError, match="positive_rate"):
        TwoPartDataset(4, positive_rate=1.5)
    assert all(TwoPartDataset(8, positive_rate=1.0)[i]["label"] == 1 for i in range(8))
    for bad in ([], ["part", "hexagon"], ["part+part+part"]):
        with pytest.raises(ValueError, match="negatives"):
            TwoPartDataset(4, negatives=bad)
    assert TwoPartDataset(4, negatives="part").negatives == ("part",)


def test_part_split_rate_and_its_chance_level():
    masks = torch.zeros(2, 2, 8, 8, dtype=torch.bool)
    masks[:, 0, :2, :2] = True
    masks[:, 1, 5:, 5:] = True
    maps = torch.zeros(2, 3, 8, 8)
    maps[0, 0, 0, 0] = maps[0, 1, 7, 7] = maps[0, 2, 1, 1] = 1.0  # A, B, A: split; chance 1 - 2^-2
    maps[1, 0, 0, 0] = maps[1, 1, 1, 0] = 1.0  # A, A, inactive: not split; chance 1/2
    split, chance = part_split_rate(maps, masks, tolerance=0)
    assert split.tolist() == [1.0, 0.0]
    assert chance.tolist() == [0.75, 0.5]
    maps[1, 1] = 0
    maps[1, 1, 4, 4] = 1.0  # one pixel from part B: counts only with tolerance 1
    assert part_split_rate(maps, masks, tolerance=0)[0][1] == 0
    assert part_split_rate(maps, masks, tolerance=1)[0][1] == 1
