"""CIFAR-10 readers: the official pickle format, image folders (or tars of one), foolbox's 20 images.

Every reader returns a :class:`Split`: uint8 images of shape (N, 32, 32, 3) in HWC order,
int64 labels and the class names. Normalisation is not applied here; it belongs to the model
(see :mod:`ckksnet.models`), so that its constants live in exactly one place.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


# ---------------------------------------------------------------- official format
def _batches_from_tar(path: Path) -> dict[str, dict]:
    try:
        with tarfile.open(path, "r:*") as tar:
            out = {}
            for member in tar.getmembers():
                name = os.path.basename(member.name)
                if name.startswith("data_batch_") or name == "test_batch":
                    out[name] = pickle.load(tar.extractfile(member), encoding="bytes")
            return out
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise DataError(f"{path}: cannot read as the official CIFAR-10 archive ({exc})") from exc


def _batches_from_dir(path: Path) -> dict[str, dict]:
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        file = path / name
        if file.exists():
            try:
                with open(file, "rb") as fh:
                    out[name] = pickle.load(fh, encoding="bytes")
            except (EOFError, OSError, pickle.UnpicklingError) as exc:
                raise DataError(f"{file}: corrupt CIFAR-10 batch ({exc})") from exc
    return out


def _batch_to_split(batches: list[dict], source: str) -> Split:
    images = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
    labels = np.concatenate([np.asarray(b[b"labels"], dtype=np.int64) for b in batches])
    images = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), labels, CLASSES, source)


def load_official(path: str | os.PathLike, split: str) -> Split:
    """Read the official ``cifar-10-python.tar.gz`` or an extracted ``cifar-10-batches-py/``."""
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
        tmp = target.with_suffix(".part")
        try:
            urllib.request.urlretrieve(OFFICIAL_URL, tmp)
        except OSError as exc:
            raise DataError(f"cannot download {OFFICIAL_URL}: {exc}") from exc
        tmp.rename(target)
    digest = hashlib.md5(target.read_bytes()).hexdigest()
    if digest != OFFICIAL_MD5:
        raise DataError(f"{target}: MD5 {digest} does not match the official {OFFICIAL_MD5}")
    return target


# ---------------------------------------------------------------- image folders
def _decode(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{where}: not a readable image ({exc})") from exc
    return arr


def _collect(entries: list[tuple[str, str, bytes]], source: str) -> Split:
    """entries: (class name, file name, bytes). Classes sort alphabetically, files by name."""
    if not entries:
        raise DataError(f"{source}: no images found (expected <split>/<class>/<image> files)")
    classes = tuple(sorted({c for c, _, _ in entries}))
    entries.sort(key=lambda e: (classes.index(e[0]), e[1]))
    images = [_decode(data, f"{source}:{c}/{n}") for c, n, data in entries]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(f"{source}: images have different sizes {sorted(shapes)}")
    labels = np.array([classes.index(c) for c, _, _ in entries], dtype=np.int64)
    return Split(np.stack(images), labels, classes, source)


def load_folder(path: str | os.PathLike, split: str) -> Split:
    """Read ``<path>/<split>/<class>/<image>`` from a directory or a tar(.gz) of one.

    If the directory has no ``<split>`` subfolder it is taken to be the split itself.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found (expected a folder or tar of <split>/<class>/<image>)")
    if path.is_dir():
        root = path / split if (path / split).is_dir() else path
        entries = [
            (f.parent.name, f.name, f.read_bytes())
            for f in sorted(root.glob("*/*"))
            if f.suffix.lower() in IMAGE_SUFFIXES
        ]
        return _collect(entries, f"image folder {root}")
    return _collect(_tar_entries(path, split), f"image tar {path}")


def _tar_entries(path: Path, split: str) -> list[tuple[str, str, bytes]]:
    entries = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = Path(member.name).parts
                parts = parts[1:] if parts and parts[0] == "." else parts
                if not member.isfile() or Path(member.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if len(parts) >= 3 and parts[-3] == split:
                    entries.append((parts[-2], parts[-1], tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{path}: cannot read as a tar of images ({exc})") from exc
    return entries


# ---------------------------------------------------------------- foolbox's 20 official test images
def load_foolbox() -> Split:
    """The first 20 official CIFAR-10 test images, bit-exact, from the ``foolbox`` wheel's data folder."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("foolbox is not installed: pip install --no-deps foolbox==3.3.4")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = sorted(folder.glob("cifar10_*_*.png"))
    if len(files) != 20:
        raise DataError(f"{folder}: expected 20 cifar10_NN_L.png files, found {len(files)}")
    images, labels = [], []
    for f in files:
        _, index, label = f.stem.split("_")
        images.append(_decode(f.read_bytes(), str(f)))
        labels.append(int(label))
    order = np.argsort([int(f.stem.split("_")[1]) for f in files])
    return Split(np.stack(images)[order], np.array(labels, dtype=np.int64)[order], CLASSES,
                 "CIFAR-10 official test images 0-19 (foolbox 3.3.4)")
