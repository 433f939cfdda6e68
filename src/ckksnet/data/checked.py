"""Checked reads of data files: tar archives read to the end, restricted unpickling, batch checks.

* :func:`read_tar` reads every member of a tar or tar.gz/bz2/xz to its last byte, requires the
  end-of-archive marker (so a tar cut short, even at a member boundary, is refused) and drains
  the compressed stream, so that gzip's CRC-32 and length (bz2's and xz's checks) are verified.
* :func:`unpickle` loads a pickle that may hold only dicts, lists, numbers, bytes, strings and
  numpy arrays (never arbitrary objects: an official CIFAR-10 batch is untrusted input), and
  refuses trailing bytes after the pickle.
* :func:`official_batch` checks one official CIFAR-10 batch: keys, pixel dtype and shape, one
  label per image, labels 0..9.

Every failure is a :class:`~ckksnet.errors.DataError` naming the file and what was expected;
a checksum mismatch is a :class:`~ckksnet.errors.ChecksumError`.
"""
from __future__ import annotations

import codecs
import gzip
import io
import lzma
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from ckksnet.errors import ChecksumError, DataError

_BLOCK = 512
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
PIXELS = 3 * 32 * 32
NUM_CLASSES = 10


# ---------------------------------------------------------------- tar archives
def read_tar(path: Path, keep: Callable[[str], bool]) -> list[tuple[str, bytes]]:
    """(member name, bytes) of every regular file whose name ``keep`` accepts, in archive order.

    The whole archive is read: each kept member to its last byte, the end-of-archive marker
    (two zero blocks) required, and a compressed stream drained to its end so that its CRC and
    length are checked. Raises DataError (not a tar, cut short, bad header, duplicate member)
    and ChecksumError (gzip CRC-32 or length mismatch).
    """
    try:
        with tarfile.open(path, "r:*") as tar:
            out = _members(tar, keep, path)
            _check_end(tar, path)
            while tar.fileobj.read(1 << 20):
                pass  # to the end of the compressed stream: gzip checks its CRC-32 there
    except _READ_ERRORS as exc:
        raise _tar_error(path, exc) from exc
    return out


def _members(tar: tarfile.TarFile, keep: Callable[[str], bool], path: Path) -> list[tuple[str, bytes]]:
    """Read the kept regular files; raises DataError for a short member or a duplicate name."""
    out, seen = [], set()
    for member in tar:
        if not member.isfile() or not keep(member.name):
            continue
        if member.name in seen:
            raise DataError(f"{path}: member {member.name} appears twice in the archive")
        seen.add(member.name)
        data = tar.extractfile(member).read()
        if len(data) != member.size:
            raise DataError(f"{path}: member {member.name} holds {len(data)} of its {member.size} bytes")
        out.append((member.name, data))
    return out


def _check_end(tar: tarfile.TarFile, path: Path) -> None:
    """Require two zero blocks where the member list ended (tarfile stops silently otherwise)."""
    tar.fileobj.seek(tar.offset)
    tail = tar.fileobj.read(2 * _BLOCK)
    if tail != bytes(2 * _BLOCK):
        what = "ends" if len(tail) < 2 * _BLOCK else "has an unreadable header"
        raise DataError(f"{path}: the tar archive {what} at byte {tar.offset} before its "
                        "end-of-archive marker (cut short or damaged)")


def _tar_error(path: Path, exc: BaseException) -> DataError:
    """The DataError (ChecksumError for a CRC or length mismatch) for a failed archive read."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, DataError):
        return exc
    if isinstance(exc, gzip.BadGzipFile) and ("CRC" in text or "length" in text):
        return ChecksumError(f"{path}: gzip check failed, the archive is damaged ({text})")
    if isinstance(exc, EOFError):
        return DataError(f"{path}: the compressed archive is cut short ({text})")
    return DataError(f"{path}: cannot read as a tar archive ({type(exc).__name__}: {text})")


# ---------------------------------------------------------------- pickles
def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, latin-1 only."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as protocol-2 pickles write an empty bytes object; nothing else."""
    if args:
        raise pickle.UnpicklingError("bytes(...) with arguments is not allowed")
    return b""


_SAFE_GLOBALS = {
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _SAFE_GLOBALS[(_mod, "_reconstruct")] = np.zeros(1).__reduce__()[0]
    _SAFE_GLOBALS[(_mod, "scalar")] = np.int64(0).__reduce__()[0]


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain Python data only."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refuses to load {module}.{name}: only numpy arrays "
                                         "and plain Python data are allowed") from None


def unpickle(data: bytes, where: str) -> object:
    """Unpickle ``data`` (numpy arrays and plain data only) and require it to end with the pickle.

    Raises DataError naming ``where`` for unreadable data, a disallowed object or trailing bytes.
    """
    stream = io.BytesIO(data)
    try:
        obj = _SafeUnpickler(stream, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - a parser of untrusted bytes fails many ways
        raise DataError(f"{where}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    if stream.tell() != len(data):
        raise DataError(f"{where}: {len(data) - stream.tell()} unexpected byte(s) after the pickle")
    return obj


# ---------------------------------------------------------------- official batches
def _field(batch: dict, key: str, where: str) -> object:
    """``batch[b"key"]`` (or ``batch["key"]``); DataError naming the expected keys otherwise."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    keys = sorted(repr(k) for k in batch)
    raise DataError(f"{where}: batch has no {key!r} entry (expected keys b'data' and b'labels', "
                    f"found {', '.join(keys) or 'none'})")


def _pixels(data: object, where: str) -> np.ndarray:
    """The (N, 3072) uint8 pixel rows; DataError for another type, dtype or shape."""
    if not isinstance(data, np.ndarray):
        raise DataError(f"{where}: b'data' is a {type(data).__name__}, expected a uint8 numpy array")
    if data.dtype != np.uint8:
        raise DataError(f"{where}: b'data' has dtype {data.dtype}, expected uint8 (pixels 0..255; "
                        "other dtypes are not cast)")
    if data.ndim != 2 or data.shape[1] != PIXELS or data.shape[0] == 0:
        raise DataError(f"{where}: b'data' has shape {data.shape}, expected (N, {PIXELS}) with N >= 1")
    return data


def _labels(labels: object, count: int, where: str) -> np.ndarray:
    """``count`` integer labels in 0..9 as int64; DataError otherwise."""
    if isinstance(labels, np.ndarray):
        ok = labels.ndim == 1 and labels.dtype.kind in "iu"
    elif isinstance(labels, (list, tuple)):
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels)
    else:
        ok = False
    if not ok:
        raise DataError(f"{where}: b'labels' must be a list or 1-D array of integers, "
                        f"got {type(labels).__name__}")
    out = np.asarray(labels, dtype=np.int64) if len(labels) else np.zeros(0, np.int64)
    if len(out) != count:
        raise DataError(f"{where}: {len(out)} labels for {count} images (expected one per image)")
    bad = np.flatnonzero((out < 0) | (out >= NUM_CLASSES))
    if bad.size:
        raise DataError(f"{where}: label {out[bad[0]]} at index {bad[0]} is outside 0..{NUM_CLASSES - 1}")
    return out


def official_batch(obj: object, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Check one unpickled official batch; returns (uint8 pixel rows (N, 3072), int64 labels).

    Raises DataError naming ``where``: not a dict, a missing key, pixels not uint8 (N, 3072),
    labels not integers, not one per image, or outside 0..9.
    """
    if not isinstance(obj, dict):
        raise DataError(f"{where}: holds a {type(obj).__name__}, expected a dict with b'data' and b'labels'")
    data = _pixels(_field(obj, "data", where), where)
    return data, _labels(_field(obj, "labels", where), len(data), where)
