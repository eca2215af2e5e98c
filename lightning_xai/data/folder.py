"""A folder of image files as a dataset whose items carry their index and file name."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

#: PIL modes of 8-bit channels that PIL's own ``convert("RGB")`` turns into RGB right (grey and palette
#: replicated, CMYK, YCbCr, CIELab and HSV converted, alpha dropped).
_EIGHT_BIT_MODES = frozenset(
    {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)
#: Premultiplied alpha: un-premultiplied first, so that a half-transparent pixel keeps its colour.
_PREMULTIPLIED_MODES = {"La": "LA", "RGBa": "RGBA"}


class UnsupportedImageError(ValueError):
    """An image that decodes, but whose pixel values cannot be mapped to [0, 1] (:func:`pil_to_rgb`)."""


def image_problem(image: Image.Image) -> str | None:
    """Why :func:`pil_to_rgb` refuses ``image`` (its mode, or values outside its mode's range), or None."""
    mode = image.mode
    if mode in _EIGHT_BIT_MODES or mode in _PREMULTIPLIED_MODES or mode.startswith("I;16"):
        return None
    if mode == "I":
        low, high = image.getextrema()
        if low < 0 or high > 65535:
            return (
                f"32-bit integer image (PIL mode 'I') with values from {low} to {high}: only 0..65535 (a 16-bit "
                "image) has a known range; save it as 8- or 16-bit"
            )
        return None
    if mode == "F":
        values = np.asarray(image)
        if not np.isfinite(values).all():
            return "floating-point image (PIL mode 'F') with NaN or infinite values"
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            return (
                f"floating-point image (PIL mode 'F') with values from {low:g} to {high:g}: only values in "
                "[0, 1] have a known range; scale it to [0, 1] or save it as 8- or 16-bit"
            )
        return None
    return f"PIL mode {mode!r} is not supported"


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """``image`` as a (H, W, 3) float32 array in [0, 1], scaled by the range of its PIL mode.

    - 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and those with
      alpha, ``LA``, ``PA``, ``RGBA``): PIL's conversion to RGB, divided by 255.
    - 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): divided by 65535, replicated to three channels.
    - 32-bit integer grey (``I``, which is how PIL gives 16-bit PNGs in some versions and 16-bit PGM files):
      divided by 65535 when every value lies in 0..65535; otherwise it has no known range and is refused.
    - floating-point grey (``F``): taken as it is when every value lies in [0, 1]; otherwise (or with NaN or
      infinite values) refused. No image is stretched by its own minimum and maximum: that would change what
      the model sees from one image to the next.

    **Alpha is dropped** (as ``convert("RGB")`` does, and so torchvision's ``ImageFolder``, with which most
    models were trained): the colour channels are used as stored, whatever their transparency; premultiplied
    modes (``La``, ``RGBa``) are un-premultiplied first. Composite an image yourself when what lies under its
    transparent pixels matters.

    Raises :class:`UnsupportedImageError` (a ValueError) that says why, for any other mode or range.

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> grey16 = Image.fromarray(np.array([[0, 32768, 65535]], np.uint16))
        >>> grey16.mode, pil_to_rgb(grey16)[0, :, 0].round(3).tolist()
        ('I;16', [0.0, 0.5, 1.0])
    """
    reason = image_problem(image)
    if reason is not None:
        raise UnsupportedImageError(reason)
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(image).astype(np.float32) / 65535.0
    elif mode == "F":
        grey = np.asarray(image, dtype=np.float32)
    else:
        if mode in _PREMULTIPLIED_MODES:
            image = image.convert(_PREMULTIPLIED_MODES[mode])
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return np.repeat(grey[:, :, None], 3, axis=2)


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be decoded as an image (empty, truncated, not an image, a mode or range
    :func:`pil_to_rgb` refuses), or None when it can."""
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with Image.open(path) as image:
            image.load()
            return image_problem(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"


def scan_image_folder(
    root: str | Path, follow_links: bool = False
) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files under ``root`` (sorted by relative path) and ``(relative path, reason)`` of what is
    skipped, by the rules of :class:`ImageFolderDataset` for symbolic links.

    The walk is by hand (``os.scandir``), not ``Path.rglob``, whose handling of links to folders differs between
    Python versions and which can walk a folder-link cycle or count a file twice."""
    root_real = os.path.realpath(root)
    # (relative path, path under root, real path, reached through a link)
    found: list[tuple[str, Path, str, bool]] = []
    skipped: list[tuple[str, str]] = []
    walked = {root_real}
    stack: list[tuple[Path, str, bool]] = [(Path(root), "", False)]
    while stack:
        folder, prefix, via_link = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as error:
            reason = f"folder cannot be listed: {type(error).__name__}: {error}"
            skipped.append((prefix.rstrip("/") or ".", reason))
            continue
        folders: list[tuple[Path, str, bool]] = []
        for entry in entries:
            name, path = prefix + entry.name, Path(entry.path)
            is_image = path.suffix.lower() in IMAGE_SUFFIXES
            link = entry.is_symlink()
            try:
                info = os.stat(path)  # follows links
            except OSError as error:
                if link:
                    skipped.append((name, _broken_link(name, os.readlink(path), error)))
                elif is_image:
                    skipped.append((name, f"{type(error).__name__}: {error}"))
                continue
            real, is_folder = os.path.realpath(path), stat.S_ISDIR(info.st_mode)
            if not (is_folder or is_image):
                continue  # not an image file: ignored, through a link or not
            reason = _link_rule(real, root_real, is_folder, follow_links) if link else None
            if reason is None and is_folder and real in walked:
                reason = (
                    f"the folder {real!r} is already read (through another symbolic link): not walked again"
                )
            if reason is not None:
                skipped.append((name, reason))
            elif is_folder:
                walked.add(real)
                folders.append((path, name + "/", via_link or link))
            elif stat.S_ISREG(info.st_mode):
                found.append((name, path, real, via_link or link))
            else:
                skipped.append((name, "not a regular file (a pipe, socket or device): not read"))
        stack.extend(reversed(folders))
    # each file once: under its own name when it is inside the folder, else under its shortest linked name
    first: dict[str, str] = {}
    for name, _, real, _ in sorted(found, key=lambda f: (f[3], f[0].count("/"), f[0].split("/"))):
        first.setdefault(real, name)
    files = []
    for name, path, real, _ in found:
        if first[real] == name:
            files.append((name, path))
        else:
            skipped.append(
                (name, f"the same file as {first[real]!r} (through a symbolic link), read under that name")
            )
    files.sort(key=lambda f: f[0].split("/"))
    return [path for _, path in files], skipped


def _broken_link(name: str, target: str, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return f"symbolic link loop: {name} -> {target} leads back to itself"
    if error.errno == errno.ENOENT:
        return f"broken symbolic link: its target {target!r} does not exist"
    return f"symbolic link to {target!r} cannot be followed: {type(error).__name__}: {error}"


def _link_rule(real: str, root_real: str, is_folder: bool, follow_links: bool) -> str | None:
    """Why a symbolic link to ``real`` is not followed, or None when it is."""
    inside = real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)
    if not inside and not follow_links:
        return (
            f"symbolic link to the {'folder' if is_folder else 'file'} {real!r}, outside the image folder: not "
            "read; pass follow_links=True (lightning-xai explain --follow_links true) to read it"
        )
    if inside and is_folder:
        return (
            f"symbolic link to the folder {os.path.relpath(real, root_real)!r} inside the image folder: not "
            "followed, its files are read under their own names"
        )
    return None


class ImageFolderDataset(Dataset):
    """Every image file under ``root`` (recursively, sorted by relative path), as
    ``{"image": (3, size, size) float tensor, "index": i, "name": relative path}``.

    Images of any size down to 1×1 are scaled to [0, 1] by the range of their PIL mode (8-bit, 16-bit, the
    first frame of an animation; see :func:`pil_to_rgb`: grey is replicated to three channels, alpha is
    dropped), resized to ``image_size`` (bilinear) and, with ``mean`` and ``std``, normalised per channel.
    Files that do not decode or whose values have no known range (a 32-bit integer image beyond 0..65535, a
    floating-point image beyond [0, 1]) are skipped and listed in :attr:`unreadable` with the reason.

    Symbolic links:

    - a link that loops, or whose target does not exist, is listed in :attr:`unreadable` with the reason;
    - a link that leads outside ``root`` (to a file or a folder) is read only with ``follow_links=True``;
      otherwise it is listed in :attr:`unreadable` with a reason that names the flag;
    - a link to a file inside ``root`` does not make it count twice: each file is read once, under its own name
      (the link is listed in :attr:`unreadable` as a duplicate); a link inside ``root`` to a folder inside
      ``root`` is not followed, its files being read under their own names (so no folder-link cycle is walked),
      and the link is listed likewise;
    - with ``follow_links=True``, a folder outside ``root`` is walked once, however many links lead to it, and
      a file reached through several links is read once, under the first name in sorted order.

    Links to anything but image files and folders are ignored, as such files are.

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
        follow_links: bool = False,
    ) -> None:
        """``follow_links``: read the files and folders that symbolic links under ``root`` lead to outside
        ``root`` (False: list such links in :attr:`unreadable`)."""
        if not isinstance(follow_links, bool):
            raise TypeError(f"`follow_links` must be True or False, got {follow_links!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist or is not a folder")
        self.follow_links = follow_links
        candidates, skipped = scan_image_folder(self.root, follow_links)
        if not candidates and not skipped:
            raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {str(self.root)!r}")
        #: The image files that decode, and ``(relative path, reason)`` of those that do not (empty, truncated,
        #: not an image, a pixel range that is not known, a link that is broken, loops or leads outside): each
        #: is decoded once here, so a bad file is reported by name and skipped, never met half-way through a run.
        self.files: list[Path] = []
        self.unreadable: list[tuple[str, str]] = list(skipped)
        for path in candidates:
            reason = _unreadable(path)
            if reason is None:
                self.files.append(path)
            else:
                self.unreadable.append((path.relative_to(self.root).as_posix(), reason))
        self.unreadable.sort(key=lambda u: u[0].split("/"))
        if not self.files:
            listed = "; ".join(f"{name}: {reason}" for name, reason in self.unreadable[:5])
            raise ValueError(
                f"none of the {len(self.unreadable)} image files under {str(self.root)!r} can be read ({listed})"
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
        name = path.relative_to(self.root).as_posix()
        with Image.open(path) as image:
            try:
                array = pil_to_rgb(image)
            except UnsupportedImageError as error:  # the file changed since it was checked
                raise UnsupportedImageError(f"{name}: {error}") from None
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        if self.image_size is not None:
            size = (int(self.image_size), int(self.image_size))
            tensor = F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False)[0]
        if self.mean is not None:
            tensor = (tensor - self.mean) / self.std
        return {"image": tensor, "index": index, "name": name}
