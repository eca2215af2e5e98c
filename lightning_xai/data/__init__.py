"""Synthetic datasets with known explanations, and a wrapper that adds item indices.

Nothing is downloaded: every item is generated on access from ``(seed, split, index)``.

- :class:`ShapesDataset` / :class:`ShapesDataModule`: images of a class-defining shape with its
  pixel mask, an optional background cue correlated with the label, a bias-conflicting test split,
  and an option for two instances per image.
- :class:`TokensDataset` / :class:`TokensDataModule`: token sequences whose label is decided by
  rationale tokens, with a rationale mask and an optional spurious cue token.
- :func:`load_photos` / :class:`PhotoDataset`: six real photos with their ImageNet class and the object's box or
  polygon mask, read from installed packages (the ``[real]`` extra).
- :class:`ImageFolderDataset`: the image files of a folder (for ``lightning-xai explain``).
- :class:`IndexedDataset`: adds the dataset index to the items of any map-style dataset.
- :func:`split_batch`: reads a user's batch (tuple or dict) into inputs, target, mask and index.
"""

from lightning_xai.data.batch import Batch, split_batch
from lightning_xai.data.folder import ImageFolderDataset
from lightning_xai.data.indexed import IndexedDataset
from lightning_xai.data.parts import TwoPartDataset, part_split_rate
from lightning_xai.data.photos import PHOTOS, Photo, PhotoDataset, load_photos
from lightning_xai.data.shapes import (
    CUE_TINTS,
    SHAPE_CLASSES,
    ShapesDataModule,
    ShapesDataset,
    agreement_rate,
)
from lightning_xai.data.tokens import TokensDataModule, TokensDataset

__all__ = [
    "CUE_TINTS",
    "PHOTOS",
    "SHAPE_CLASSES",
    "Batch",
    "ImageFolderDataset",
    "IndexedDataset",
    "Photo",
    "PhotoDataset",
    "ShapesDataModule",
    "ShapesDataset",
    "TokensDataModule",
    "TokensDataset",
    "TwoPartDataset",
    "agreement_rate",
    "load_photos",
    "part_split_rate",
    "split_batch",
]
