"""A folder of image files as a dataset whose items carry their index and file name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be decoded as an image, or None when it can."""
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    return None


class ImageFolderDataset(Dataset):
    """Every image file under ``root`` (recursively, sorted by relative path), as
    ``{"image": (3, size, size) float tensor, "index": i, "name": relative path}``.

    Images (grey, RGBA, palette, any size down to 1×1) are converted to RGB, scaled to [0, 1], resized to
    ``image_size`` (bilinear) and, with ``mean`` and ``std``, normalised per channel. Files that do not decode are
    skipped and listed in :attr:`unreadable`.

    Example:
        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> root = tempfile.mkdtemp()
        >>> Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(f"{root}/a.png")
        >>> item = ImageFolderDataset(root, image_size=8)[0]
        >>> item["image"].shape, item["index"], item["name"]
        (torch.Size([3, 8, 8]), 0, 'a.png')
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int | None = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist or is not a folder")
        candidates = sorted(
            p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not candidates:
            raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {str(self.root)!r}")
        #: The image files that decode, and ``(relative path, reason)`` of those that do not (empty, truncated,
        #: not an image): each is decoded once here, so a bad file is reported by name and skipped, never met
        #: half-way through a run.
        self.files: list[Path] = []
        self.unreadable: list[tuple[str, str]] = []
        for path in candidates:
            reason = _unreadable(path)
            if reason is None:
                self.files.append(path)
            else:
                self.unreadable.append((path.relative_to(self.root).as_posix(), reason))
        if not self.files:
            listed = "; ".join(f"{name}: {reason}" for name, reason in self.unreadable[:5])
            raise ValueError(
                f"none of the {len(candidates)} image files under {str(self.root)!r} can be read ({listed})"
            )
        if image_size is not None and (isinstance(image_size, bool) or int(image_size) < 1):
            raise ValueError(f"`image_size` must be a positive int or None, got {image_size!r}")
        if (mean is None) != (std is None):
            raise ValueError("give both `mean` and `std`, or neither")
        self.image_size = image_size
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Tensor | int | str]:
        path = self.files[index]
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        if self.image_size is not None:
            size = (int(self.image_size), int(self.image_size))
            tensor = F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False)[0]
        if self.mean is not None:
            tensor = (tensor - self.mean) / self.std
        return {"image": tensor, "index": index, "name": path.relative_to(self.root).as_posix()}
