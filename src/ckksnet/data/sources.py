"""CIFAR-10 readers: the official pickle format, image folders (or tars of one), foolbox's 20 images.

Every reader returns a :class:`Split`: uint8 images of shape (N, H, W, 3) in HWC order
(32 x 32 for CIFAR-10), int64 labels and the class names. Normalisation is not applied here; it
belongs to the model (see :mod:`ckksnet.models`), so that its constants live in exactly one place.

Every reader checks what it reads (see :mod:`ckksnet.data.checked`) and raises
:class:`~ckksnet.errors.DataError` naming the file and what was expected, or
:class:`~ckksnet.errors.ChecksumError` when a compressed archive's CRC does not match.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckksnet.data.checked import official_batch, read_tar, unpickle
from ckksnet.core.envelope import atomic_path
from ckksnet.errors import DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_ARCHIVE = "cifar-10-python.tar.gz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class Split:
    """One split of an image classification data set.

    images: uint8 array (N, H, W, 3); labels: int64 array (N,); source: where it came from.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int) -> "Split":
        """The first ``n`` images (in file order)."""
        return Split(self.images[:n], self.labels[:n], self.classes, self.source)

    def stratified(self, n: int) -> "Split":
        """``n`` images taken from every class in turn (class 0's first, class 1's first, ...,
        then each class's second, ...), in file order within a class: the class-sorted copies
        of CIFAR-10 give all airplanes for a plain prefix."""
        per_class = [np.flatnonzero(self.labels == c) for c in range(len(self.classes))]
        order = [idx[k] for k in range(max(map(len, per_class), default=0)) for idx in per_class if k < len(idx)]
        pick = np.sort(np.asarray(order[:n], dtype=np.int64))
        return Split(self.images[pick], self.labels[pick], self.classes, self.source)


# ---------------------------------------------------------------- official format
OFFICIAL_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def _batches_from_tar(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The checked batches found in the archive; DataError (ChecksumError) if it is damaged."""
    members = read_tar(path, lambda name: os.path.basename(name) in OFFICIAL_BATCHES)
    out = {}
    for name, data in members:
        base = os.path.basename(name)
        if base in out:
            raise DataError(f"{path}: batch {base} appears twice in the archive")
        out[base] = official_batch(unpickle(data, f"{path}:{name}"), f"{path}:{name}")
    return out


def _batches_from_dir(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The checked batches present in ``path``; DataError if one cannot be read or is malformed."""
    out = {}
    for name in OFFICIAL_BATCHES:
        file = path / name
        if file.exists():
            try:
                data = file.read_bytes()
            except OSError as exc:
                raise DataError(f"{file}: cannot read ({exc})") from exc
            out[name] = official_batch(unpickle(data, str(file)), str(file))
    return out


def _batch_to_split(batches: list[tuple[np.ndarray, np.ndarray]], source: str) -> Split:
    images = np.concatenate([data for data, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    images = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), labels, CLASSES, source)


def load_official(path: str | os.PathLike, split: str) -> Split:
    """Read the official ``cifar-10-python.tar.gz`` or an extracted ``cifar-10-batches-py/``.

    Every batch is checked (see :func:`ckksnet.data.checked.official_batch`) and an archive is
    read to its end. Raises DataError (missing, unreadable or malformed batches, a damaged
    archive) or ChecksumError (the archive's gzip CRC does not match).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found (expected {OFFICIAL_ARCHIVE} or cifar-10-batches-py/)")
    batches = _batches_from_dir(path) if path.is_dir() else _batches_from_tar(path)
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in names if n not in batches]
    if missing:
        raise DataError(f"{path}: official CIFAR-10 batches missing: {', '.join(missing)}")
    return _batch_to_split([batches[n] for n in names], f"CIFAR-10 official ({path})")


def download_official(cache_dir: str | os.PathLike) -> Path:
    """Download the official archive into ``cache_dir`` (once) and check its MD5 checksum."""
    target = Path(cache_dir) / OFFICIAL_ARCHIVE
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_path(target) as tmp:  # a name of its own: two downloads never share a file
                urllib.request.urlretrieve(OFFICIAL_URL, tmp)
        except OSError as exc:
            raise DataError(f"cannot download {OFFICIAL_URL}: {exc}") from exc
    digest = hashlib.md5(target.read_bytes()).hexdigest()
    if digest != OFFICIAL_MD5:
        raise DataError(f"{target}: MD5 {digest} does not match the official {OFFICIAL_MD5}")
    return target


# ---------------------------------------------------------------- image folders
_MODES = ("RGB", "L", "1", "P", "RGBA", "LA", "PA")  # converted to RGB exactly (alpha only if opaque)


def _decode(data: bytes, where: str) -> np.ndarray:
    """Decode one image file to uint8 (H, W, 3).

    Raises DataError naming ``where`` for an unreadable or truncated file, a mode that does not
    convert to RGB exactly (CMYK, 16-bit, float) and transparent pixels (alpha would be dropped).
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            if mode not in _MODES:
                raise DataError(f"{where}: image mode {mode}, expected RGB, grayscale or palette")
            alpha = "A" in mode or "transparency" in img.info
            arr = np.asarray(img.convert("RGBA" if alpha else "RGB"), dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL's decoders raise many types on damaged files
        raise DataError(f"{where}: not a readable image ({type(exc).__name__}: {exc})") from exc
    if alpha and (arr[..., 3] != 255).any():
        raise DataError(f"{where}: image has transparent pixels, expected an opaque RGB image")
    return np.ascontiguousarray(arr[..., :3])


def _collect(entries: list[tuple[str, str, bytes]], source: str) -> Split:
    """entries: (class name, file name, bytes). Classes sort alphabetically, files by name.

    Raises DataError naming the source: no images, an unreadable image, or images of different sizes.
    """
    if not entries:
        raise DataError(f"{source}: no images found (expected <split>/<class>/<image> files)")
    classes = tuple(sorted({c for c, _, _ in entries}))
    entries.sort(key=lambda e: (classes.index(e[0]), e[1]))
    images = [_decode(data, f"{source}:{c}/{n}") for c, n, data in entries]
    usual = Counter(im.shape for im in images).most_common(1)[0][0]
    for (c, n, _), im in zip(entries, images):
        if im.shape != usual:
            like = next(f"{c2}/{n2}" for (c2, n2, _), im2 in zip(entries, images) if im2.shape == usual)
            raise DataError(f"{source}:{c}/{n}: image of {im.shape[1]}x{im.shape[0]} pixels, "
                            f"expected {usual[1]}x{usual[0]} like {like}")
    labels = np.array([classes.index(c) for c, _, _ in entries], dtype=np.int64)
    return Split(np.stack(images), labels, classes, source)


def load_folder(path: str | os.PathLike, split: str) -> Split:
    """Read ``<path>/<split>/<class>/<image>`` from a directory or a tar(.gz) of one.

    If the directory has no ``<split>`` subfolder it is taken to be the split itself. A tar is
    read to its end (see :func:`ckksnet.data.checked.read_tar`). Raises DataError (missing path,
    unreadable or damaged file, no images, mixed sizes) or ChecksumError (gzip CRC mismatch).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found (expected a folder or tar of <split>/<class>/<image>)")
    if path.is_dir():
        root = path / split if (path / split).is_dir() else path
        return _collect(_folder_entries(root), f"image folder {root}")
    return _collect(_tar_entries(path, split), f"image tar {path}")


def _folder_entries(root: Path) -> list[tuple[str, str, bytes]]:
    """(class, file name, bytes) of the image files in ``root/<class>/``; DataError if unreadable."""
    entries = []
    for f in sorted(root.glob("*/*")):
        if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
            try:
                entries.append((f.parent.name, f.name, f.read_bytes()))
            except OSError as exc:
                raise DataError(f"{f}: cannot read ({exc})") from exc
    return entries


def _split_member(name: str, split: str) -> tuple[str, str] | None:
    """(class, file) for a tar member ``[.../]<split>/<class>/<file>`` with an image suffix."""
    parts = Path(name).parts
    parts = parts[1:] if parts and parts[0] == "." else parts
    if Path(name).suffix.lower() in IMAGE_SUFFIXES and len(parts) >= 3 and parts[-3] == split:
        return parts[-2], parts[-1]
    return None


def _tar_entries(path: Path, split: str) -> list[tuple[str, str, bytes]]:
    """(class, file name, bytes) of the split's images in a tar, read to the archive's end."""
    members = read_tar(path, lambda name: _split_member(name, split) is not None)
    return [(*_split_member(name, split), data) for name, data in members]


# ---------------------------------------------------------------- foolbox's 20 official test images
def load_foolbox() -> Split:
    """The first 20 official CIFAR-10 test images, bit-exact, from the ``foolbox`` wheel's data folder.

    Raises DataError if foolbox is missing or its files are not the 20 expected 32x32 images.
    """
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("foolbox is not installed: pip install --no-deps foolbox==3.3.4")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    found = {}
    for f in folder.glob("cifar10_*_*.png"):
        parts = f.stem.split("_")
        if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
            raise DataError(f"{f}: expected a name cifar10_NN_L.png (index NN, label L)")
        found[int(parts[1])] = (f, int(parts[2]))
    if sorted(found) != list(range(20)) or any(label > 9 for _, label in found.values()):
        raise DataError(f"{folder}: expected cifar10_NN_L.png for NN = 0..19 with labels 0..9, "
                        f"found indices {sorted(found)}")
    images = [_decode(found[i][0].read_bytes(), str(found[i][0])) for i in range(20)]
    if any(im.shape != (32, 32, 3) for im in images):
        raise DataError(f"{folder}: expected 32x32 RGB images")
    return Split(np.stack(images), np.array([found[i][1] for i in range(20)], dtype=np.int64),
                 CLASSES, "CIFAR-10 official test images 0-19 (foolbox 3.3.4)")
