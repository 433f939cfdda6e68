"""CIFAR-10 data: where to find it and how to read it.

``load_cifar10(split, data=...)`` accepts

* the official ``cifar-10-python.tar.gz`` or an extracted ``cifar-10-batches-py/``;
* an image folder ``<split>/<class>/<image>`` or a tar(.gz) of one (the JPEG copy in ``../shared/data``);
* a folder holding either of those (the first match wins);
* ``"foolbox"``: the 20 bit-exact official test images shipped in the ``foolbox==3.3.4`` wheel.

Without ``data`` the location comes from ``$CKKSNET_DATA``, then ``../shared/data`` beside the
repository or the working directory. Decoded arrays are cached under ``$CKKSNET_CACHE``
(default ``~/.cache/ckksnet``) so that 60,000 JPEGs are decoded once; a cache file that is
unreadable or inconsistent is deleted and rebuilt.

Everything read is checked: tars to their end-of-archive marker and compressed streams to their
CRC, official batches for keys, pixel dtype and shape, one label per image and labels 0..9
(pickles may hold numpy arrays and plain data only), images for a readable, opaque RGB-convertible
file of one common size. Failures raise :class:`~ckksnet.errors.DataError` naming the path, or
its subclass :class:`~ckksnet.errors.ChecksumError` for a CRC mismatch.
"""
from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ckksnet.data.sources import (
    CLASSES,
    OFFICIAL_ARCHIVE,
    Split,
    download_official,
    load_folder,
    load_foolbox,
    load_official,
)
from ckksnet.core.envelope import atomic_path
from ckksnet.errors import DataError

__all__ = ["CLASSES", "Split", "load_cifar10", "find_data", "cache_dir", "check_split", "download_official"]

_REPO_ROOT = Path(__file__).resolve().parents[3]


def cache_dir() -> Path:
    """Directory for decoded arrays and downloads: ``$CKKSNET_CACHE`` or ``~/.cache/ckksnet``."""
    return Path(os.environ.get("CKKSNET_CACHE", Path.home() / ".cache" / "ckksnet"))


def find_data(data: str | os.PathLike | None = None) -> Path:
    """Resolve the data location: argument, then ``$CKKSNET_DATA``, then ``../shared/data``."""
    if data is not None:
        return Path(data)
    if os.environ.get("CKKSNET_DATA"):
        return Path(os.environ["CKKSNET_DATA"])
    candidates = [_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
                  cache_dir()]
    for c in candidates:
        if c.is_dir() and _pick_in_dir(c) is not None:
            return c
    raise DataError(
        "no CIFAR-10 data found: pass a path, set CKKSNET_DATA, or place the data at "
        + " or ".join(str(c) for c in candidates[:2])
    )


def _pick_in_dir(folder: Path) -> Path | None:
    """Inside a folder, prefer the official format, then a tar of images, then the folder itself."""
    for name in (OFFICIAL_ARCHIVE, "cifar-10-batches-py"):
        if (folder / name).exists():
            return folder / name
    tars = sorted(folder.glob("*.tar.gz")) + sorted(folder.glob("*.tar"))
    if tars:
        return tars[0]
    if (folder / "test").is_dir() or (folder / "train").is_dir():
        return folder
    return None


def _is_official(path: Path) -> bool:
    if path.is_dir():
        return (path / "data_batch_1").exists() or (path / "test_batch").exists()
    return path.name.startswith("cifar-10-python")


def _read(path: Path, split: str) -> Split:
    if path.is_dir() and not _is_official(path) and not (path / split).is_dir():
        inner = _pick_in_dir(path)
        if inner is None:
            raise DataError(f"{path}: holds no CIFAR-10 archive, batches or <split>/<class> folders")
        path = inner
    return load_official(path, split) if _is_official(path) else load_folder(path, split)


def _cache_key(path: Path, split: str) -> str:
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{split}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def check_split(split: Split, where: str) -> Split:
    """Check a split's arrays: uint8 (N, H, W, 3) images, N int64 labels indexing its classes.

    Raises DataError naming ``where`` otherwise; returns the split unchanged.
    """
    im, lab = split.images, split.labels
    if not (isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 4 and im.shape[-1] == 3):
        raise DataError(f"{where}: images must be uint8 (N, H, W, 3), got {getattr(im, 'dtype', type(im))} "
                        f"{getattr(im, 'shape', '')}")
    if not (isinstance(lab, np.ndarray) and lab.dtype == np.int64 and lab.shape == (len(im),)):
        raise DataError(f"{where}: labels must be int64 ({len(im)},), got {getattr(lab, 'dtype', type(lab))} "
                        f"{getattr(lab, 'shape', '')}")
    if len(im) == 0 or not split.classes or lab.min() < 0 or lab.max() >= len(split.classes):
        raise DataError(f"{where}: expected at least one image and labels in 0..{len(split.classes) - 1}")
    return split


def _read_cache(cached: Path) -> Split | None:
    """The split stored in ``cached``, or None (and the file removed) if it is unreadable or invalid."""
    try:
        with np.load(cached, allow_pickle=False) as z:
            split = Split(z["images"], z["labels"], tuple(str(c) for c in z["classes"].tolist()),
                          str(z["source"]))
        return check_split(split, str(cached))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, DataError):
        try:
            cached.unlink(missing_ok=True)  # a broken cache is rebuilt, never trusted
        except OSError:
            pass
        return None


def _write_cache(cached: Path, split: Split) -> None:
    """Store ``split`` atomically; a cache that cannot be written only costs a warning."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no suffix
            np.savez(fh, images=split.images, labels=split.labels,
                     classes=np.array(split.classes), source=np.array(split.source))
    except OSError as exc:
        warnings.warn(f"cannot write the data cache {cached}: {exc}", stacklevel=3)


def load_cifar10(split: str = "test", data: str | os.PathLike | None = None,
                 use_cache: bool = True) -> Split:
    """Load a CIFAR-10 split ("train" or "test") as uint8 HWC images and int64 labels.

    Every file is checked as it is read (see :mod:`ckksnet.data.checked`); a cached copy that
    is unreadable or inconsistent is rebuilt. Raises DataError (no data, a bad split name, a
    missing, malformed, truncated or damaged file, naming the path) or ChecksumError (a
    compressed archive whose CRC does not match).
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', not {split!r}")
    if str(data) == "foolbox":
        if split != "test":
            raise DataError("foolbox ships test images only")
        return load_foolbox()
    path = find_data(data)
    if not path.exists():
        raise DataError(f"{path}: data path does not exist")
    cached = cache_dir() / f"cifar10-{split}-{_cache_key(path, split)}.npz"
    if use_cache and cached.exists():
        result = _read_cache(cached)
        if result is not None:
            return result
    result = check_split(_read(path, split), str(path))
    if use_cache:
        _write_cache(cached, result)
    return result
