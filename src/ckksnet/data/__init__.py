"""CIFAR-10 data: where to find it and how to read it.

``load_cifar10(split, data=...)`` accepts

* the official ``cifar-10-python.tar.gz`` or an extracted ``cifar-10-batches-py/``;
* an image folder ``<split>/<class>/<image>`` or a tar(.gz) of one (the JPEG copy in ``../shared/data``);
* a folder holding either of those (the first match wins);
* ``"foolbox"``: the 20 bit-exact official test images shipped in the ``foolbox==3.3.4`` wheel.

Without ``data`` the location comes from ``$CKKSNET_DATA``, then ``../shared/data`` beside the
repository or the working directory. Decoded arrays are cached under ``$CKKSNET_CACHE``
(default ``~/.cache/ckksnet``) so that 60,000 JPEGs are decoded once.
"""
from __future__ import annotations

import hashlib
import os
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
from ckksnet.errors import DataError

__all__ = ["CLASSES", "Split", "load_cifar10", "find_data", "cache_dir", "download_official"]

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


def load_cifar10(split: str = "test", data: str | os.PathLike | None = None,
                 use_cache: bool = True) -> Split:
    """Load a CIFAR-10 split ("train" or "test") as uint8 HWC images and int64 labels."""
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
        try:
            with np.load(cached, allow_pickle=False) as z:
                return Split(z["images"], z["labels"], tuple(z["classes"].tolist()), str(z["source"]))
        except (OSError, ValueError, KeyError):
            cached.unlink(missing_ok=True)  # a broken cache is rebuilt, never trusted
    result = _read(path, split)
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, images=result.images, labels=result.labels,
                 classes=np.array(result.classes), source=np.array(result.source))
        tmp.replace(cached)
    return result
