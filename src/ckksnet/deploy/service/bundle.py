"""Evaluation-key bundles on the wire: an uncompressed tar of one flat folder, streamed.

The client side (:func:`tar_stream`, :func:`tar_length`) yields the tar in chunks read from the
files, so a bundle of any size (about 11 GiB at the secure preset) is never held in memory.
Headers are written by :mod:`tarfile` in GNU format (sizes above 8 GiB use its base-256 field).

The server side (:class:`TarReceiver`) is a strict streaming reader: it accepts regular files
only, with flat names that the caller's ``allowed(name)`` predicate admits, no name twice, at
most ``max_members`` of them, and writes each member's bytes straight to disk as they arrive.
Headers are parsed (and their checksums checked) by ``tarfile.TarInfo.frombuf``. Links,
folders, paths, device files, pax or GNU long-name headers are refused with
:class:`BadUploadError`, and a stream that ends before the end-of-archive blocks is truncated.
"""
from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ckksnet.deploy.errors import BadUploadError

BLOCK = 512
CHUNK = 1 << 20  # bytes read from a file per yielded chunk
END = b"\0" * (2 * BLOCK)  # the end-of-archive marker: two zero blocks
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")  # flat, no '..', no '/'


def _members(folder: Path) -> list[Path]:
    """The regular files of ``folder`` (not recursive), sorted; ``BadUploadError`` if none."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink())
    if not files:
        raise BadUploadError(f"{folder}: no files to upload")
    for p in files:
        if not NAME.match(p.name) or ".." in p.name:
            raise BadUploadError(f"{p}: file name not allowed in a key bundle")
    return files


def _header(path: Path, size: int) -> bytes:
    info = tarfile.TarInfo(path.name)
    info.size, info.mode, info.mtime = size, 0o644, int(path.stat().st_mtime)
    return info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def tar_length(folder: str | os.PathLike) -> int:
    """Length in bytes of the tar :func:`tar_stream` yields for ``folder``."""
    files = _members(Path(folder))
    return sum(len(_header(p, p.stat().st_size)) + p.stat().st_size + len(_padding(p.stat().st_size))
               for p in files) + len(END)


def tar_stream(folder: str | os.PathLike, on_bytes: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """Yield an uncompressed tar of the regular files in ``folder``, chunk by chunk
    (at most :data:`CHUNK` bytes of file data at a time). ``on_bytes(n)`` is told each chunk's
    length (for a progress bar). Raises :class:`BadUploadError` if a file changes size while read."""
    for path in _members(Path(folder)):
        size = path.stat().st_size
        yield from _counted(_header(path, size), on_bytes)
        sent = 0
        with path.open("rb") as fh:
            while chunk := fh.read(min(CHUNK, size - sent)):
                sent += len(chunk)
                yield from _counted(chunk, on_bytes)
        if sent != size:
            raise BadUploadError(f"{path}: size changed while it was uploaded ({sent} of {size} bytes)")
        yield from _counted(_padding(size), on_bytes)
    yield from _counted(END, on_bytes)


def _counted(data: bytes, on_bytes: Callable[[int], None] | None) -> Iterator[bytes]:
    if data:
        if on_bytes is not None:
            on_bytes(len(data))
        yield data


class TarReceiver:
    """Extract a streamed tar into ``folder`` as its chunks arrive (see the module docstring).

    ``feed(chunk)`` for every chunk, then ``finish()``; both raise :class:`BadUploadError`.
    Files are created exclusively in ``folder``, which must exist and be empty; on error the
    caller removes the folder. ``members``: name -> size in bytes of the files written.
    """

    def __init__(self, folder: Path, allowed: Callable[[str], bool], max_members: int = 32):
        self.folder, self.allowed, self.max_members = folder, allowed, max_members
        self.members: dict[str, int] = {}
        self._head = bytearray()  # a partial header block
        self._file = None  # the open member file
        self._left = 0  # bytes of the current member still to come
        self._skip = 0  # padding bytes still to skip
        self._zeros = 0  # end-of-archive zero blocks seen

    def feed(self, chunk: bytes) -> None:
        view, pos = memoryview(chunk), 0
        while pos < len(view):
            if self._left:
                pos = self._write(view, pos)
            elif self._skip:
                n = min(self._skip, len(view) - pos)
                if any(view[pos:pos + n]):
                    raise BadUploadError("non-zero tar padding")
                self._skip -= n
                pos += n
            else:
                pos = self._read_header(view, pos)

    def _write(self, view: memoryview, pos: int) -> int:
        n = min(self._left, len(view) - pos)
        self._file.write(view[pos:pos + n])
        self._left -= n
        if not self._left:
            self._close_member()
        return pos + n

    def _close_member(self) -> None:
        self._file.close()
        self._file = None

    def _read_header(self, view: memoryview, pos: int) -> int:
        n = min(BLOCK - len(self._head), len(view) - pos)
        self._head += view[pos:pos + n]
        if len(self._head) == BLOCK:
            block, self._head = bytes(self._head), bytearray()
            self._on_block(block)
        return pos + n

    def _on_block(self, block: bytes) -> None:
        if not any(block):
            self._zeros += 1
            return
        if self._zeros:
            raise BadUploadError("data after the tar's end-of-archive marker")
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except (tarfile.HeaderError, UnicodeDecodeError) as exc:
            raise BadUploadError(f"not a valid tar header ({exc})") from exc
        self._open_member(info)

    def _open_member(self, info: tarfile.TarInfo) -> None:
        name = info.name
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise BadUploadError(f"tar member {name!r}: only regular files are accepted")
        if not NAME.match(name) or ".." in name or not self.allowed(name):
            raise BadUploadError(f"tar member {name!r}: not a file of an evaluation-key bundle")
        if name in self.members:
            raise BadUploadError(f"tar member {name!r} appears twice")
        if len(self.members) >= self.max_members:
            raise BadUploadError(f"more than {self.max_members} files in the bundle")
        self.members[name] = info.size
        self._file = (self.folder / name).open("xb")
        self._left, self._skip = info.size, -info.size % BLOCK
        if not self._left:
            self._close_member()

    def finish(self) -> dict[str, int]:
        """Check that the stream ended cleanly; return ``members``."""
        if self._file is not None or self._left or self._head or self._zeros < 2 or self._skip:
            self.close()
            raise BadUploadError("the upload is truncated (the tar stream ended early)")
        if not self.members:
            raise BadUploadError("the bundle is empty")
        return dict(self.members)

    def close(self) -> None:
        """Close a member file left open by an interrupted stream."""
        if self._file is not None:
            self._close_member()
