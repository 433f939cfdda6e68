"""The file envelope every ckksnet file is written in: validated bytes, atomic files.

Layout (format 2)::

    offset    bytes  field
    0         8      magic b"CKKSNET\\n"
    8         2      format version, uint16 little-endian (``FORMAT``)
    10        4      header length H, uint32 LE (at most ``MAX_HEADER``)
    14        8      payload length P, uint64 LE
    22        H      header: a JSON object (UTF-8) with "kind" and the kind's own fields
    22+H      P      payload
    22+H+P    32     SHA-256 of every byte before it: magic, version, lengths, header, payload

:func:`unpack` checks, in this order, before anything parses the payload: the magic (data cut
inside it: :class:`CorruptDataError`; anything else: :class:`WrongFileTypeError`), the version
(a newer or retired one: :class:`UnsupportedFormatError`), the lengths against the data (cut
anywhere: "truncated"), the checksum (any altered byte of header or payload), the header's JSON
and its fields (a missing, renamed or mistyped field: :class:`CorruptDataError` naming it), the
kind (:class:`WrongFileTypeError`) and the key set (:class:`ContextMismatchError`).

**Kinds** are names registered in :data:`KINDS`; code that writes files of its own (plans, the
service's records) registers its kinds once with :func:`register_kind` and then uses
:func:`pack` / :func:`unpack` / :func:`save` / :func:`load` as they are. Pure Python: plans,
the service store and batch records use it without importing OpenFHE; the OpenFHE objects'
own kinds live in :mod:`ckksnet.backend.serialize`.

**Big payloads** are never held as bytes: an envelope's payload may be empty and its ``files``
field list raw payload files next to it (name, length, SHA-256): :func:`describe_file` writes an
entry, :func:`check_attached` validates one.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ckksnet.errors import (ContextMismatchError, CorruptDataError, SerializationError, UnsupportedFormatError,
                            WrongFileTypeError)

MAGIC = b"CKKSNET\n"
FORMAT = 2
MAX_HEADER = 4 << 20  # bytes; a larger length field is damage (it also tells format 1 apart)
_FIXED = struct.Struct("<8sHIQ")  # magic, version, header length, payload length
_DIGEST = 32  # bytes of the SHA-256 trailer
_CHUNK = 16 << 20  # bytes read at a time when hashing files
#: registered envelope kinds; extend with :func:`register_kind`
KINDS: set[str] = set()


# ---------------------------------------------------------------- envelope
def register_kind(kind: str) -> str:
    """Allow ``kind`` (lower-case letters, digits, ``_``) in envelopes; idempotent; returns it.
    Raises :class:`SerializationError` for a malformed name."""
    if not isinstance(kind, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", kind):
        raise SerializationError(f"envelope kind {kind!r} must be lower-case letters, digits and _")
    KINDS.add(kind)
    return kind


def _known_kind(kind: str) -> str:
    if kind not in KINDS:
        raise SerializationError(f"unknown object kind {kind!r}; register it first (register_kind)")
    return kind


def pack(kind: str, payload: bytes, header_fields: dict | None = None) -> bytes:
    """Wrap ``payload`` in an envelope whose header holds ``kind`` and ``header_fields`` (JSON
    values). Raises :class:`SerializationError` for an unregistered kind or unwritable fields."""
    fields = dict(header_fields or {})
    if "kind" in fields:
        raise SerializationError("the header field 'kind' is set by pack itself")
    try:
        raw = json.dumps({"kind": _known_kind(kind), **fields}, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{kind} header fields are not plain JSON: {exc}") from exc
    if len(raw) > MAX_HEADER:
        raise SerializationError(f"{kind} header of {len(raw)} bytes exceeds {MAX_HEADER}")
    head = _FIXED.pack(MAGIC, FORMAT, len(raw), len(payload)) + raw
    digest = hashlib.sha256(head)
    digest.update(payload)
    return b"".join((head, payload, digest.digest()))


def unpack(data: bytes, kind: str, context_id: str | None = None) -> tuple[bytes, dict]:
    """Check an envelope of ``kind``; return (payload, header). ``context_id``: also require the
    header's key set to be this one (:class:`ContextMismatchError`). Raises
    :class:`WrongFileTypeError`, :class:`UnsupportedFormatError` or :class:`CorruptDataError`
    (see the module docstring for which, when)."""
    _known_kind(kind)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WrongFileTypeError(f"expected the bytes of a {kind}, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    hlen, plen = _fixed_fields(view, kind)
    end = _FIXED.size + hlen + plen
    if len(view) < end + _DIGEST:
        raise CorruptDataError(f"{kind} truncated: its header declares {end + _DIGEST} bytes, "
                               f"{len(view)} present")
    if len(view) > end + _DIGEST:
        raise CorruptDataError(f"{kind} is corrupt: {len(view) - end - _DIGEST} bytes beyond the end "
                               "its header declares")
    if hashlib.sha256(view[:end]).digest() != bytes(view[end:]):
        raise CorruptDataError(f"{kind} is corrupt: the checksum over header and payload does not match")
    header = _parse_header(view[_FIXED.size:_FIXED.size + hlen], kind)
    found = header_field(header, "kind", str, f"{kind} header")
    if found != kind:
        raise WrongFileTypeError(f"expected a {kind}, found a {found}")
    if context_id is not None and header_field(header, "context_id", str, f"{kind} header") != context_id:
        raise ContextMismatchError(f"{kind} belongs to another key set "
                                   f"({header['context_id'][:12]}..., expected {context_id[:12]}...)")
    return bytes(view[_FIXED.size + hlen:end]), header


def _fixed_fields(view: memoryview, kind: str) -> tuple[int, int]:
    """Magic, version and the two lengths; returns (header length, payload length)."""
    if bytes(view[:len(MAGIC)]) != MAGIC:
        if len(view) < len(MAGIC) and MAGIC.startswith(bytes(view)):
            raise CorruptDataError(f"{kind} truncated inside its magic bytes ({len(view)} bytes)")
        raise WrongFileTypeError(f"not a ckksnet object (bad magic bytes; expected a {kind})")
    if len(view) < len(MAGIC) + 2:
        raise CorruptDataError(f"{kind} truncated inside its format version")
    (version,) = struct.unpack_from("<H", view, len(MAGIC))
    if version != FORMAT:
        _unsupported(view, version, kind)
    if len(view) < _FIXED.size:
        raise CorruptDataError(f"{kind} truncated inside its header lengths")
    _, _, hlen, plen = _FIXED.unpack_from(view)
    if hlen > MAX_HEADER:
        raise CorruptDataError(f"{kind} header length field ({hlen} bytes) exceeds {MAX_HEADER}")
    return hlen, plen


def _unsupported(view: memoryview, version: int, kind: str) -> None:
    # format 1 had a uint32 header length where format 2 has the version, then the JSON header
    if len(view) > 12 and view[12] == ord("{"):
        raise UnsupportedFormatError(f"{kind} is in format 1 (an older ckksnet); write it again")
    if version > FORMAT:
        raise UnsupportedFormatError(f"{kind} is in format {version}, newer than this ckksnet reads "
                                     f"({FORMAT}); upgrade ckksnet")
    raise CorruptDataError(f"{kind} has an invalid format version field ({version})")


def _parse_header(raw: memoryview, kind: str) -> dict:
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise CorruptDataError(f"{kind} header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CorruptDataError(f"{kind} header is not a JSON object")
    return header


def header_field(header: dict, name: str, types: type | tuple[type, ...], what: str = "header"):
    """``header[name]``, checked to be of ``types`` (bool is not an int here). Raises
    :class:`CorruptDataError` naming the field if it is missing or of another type."""
    if not isinstance(header, dict) or name not in header:
        raise CorruptDataError(f"{what} lacks the field {name!r}")
    value = header[name]
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join(t.__name__ for t in allowed)
        raise CorruptDataError(f"{what} field {name!r} must be a {names}, not {type(value).__name__}")
    return value


# ---------------------------------------------------------------- files
def temporary_path(path: str | os.PathLike) -> Path:
    """A name beside ``path`` no other writer uses (``<name>.<pid>.<random>.tmp``): two processes
    writing the same file at once never share a temporary file; the last rename wins whole."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new contents to; renamed over ``path`` when the
    block ends normally, removed when it raises (a crash never leaves half a file)."""
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save(data: bytes, path: str | os.PathLike, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically (a temporary file, then a rename). The file is
    created with permission bits ``mode`` (less the umask), so 0o600 is never readable by others,
    not even for a moment. Raises :class:`SerializationError` if it cannot be written."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
    except OSError as exc:
        raise SerializationError(f"{path}: cannot write ({exc})") from exc
    return path


def load(path: str | os.PathLike) -> bytes:
    """The bytes of the file at ``path``; :class:`SerializationError` if there is none."""
    path = Path(path)
    if not path.is_file():
        raise SerializationError(f"{path}: no such file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SerializationError(f"{path}: cannot read ({exc})") from exc


def file_digest(path: str | os.PathLike) -> tuple[str, int]:
    """(SHA-256 hex, length in bytes) of a file, read in 16 MiB blocks (constant memory)."""
    digest, length = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
            length += len(block)
    return digest.hexdigest(), length


def describe_file(path: str | os.PathLike) -> dict:
    """The entry for a raw payload file in an envelope's ``files`` field: name, length, SHA-256."""
    sha, length = file_digest(path)
    return {"name": Path(path).name, "length": length, "sha256": sha}


def check_attached(folder: Path, entry: object, what: str) -> Path:
    """Validate one ``files`` entry of ``what``'s header against the file in ``folder``: a plain
    ``.bin`` name (never a path, so a header cannot point the reader at another file), a regular
    file (no symlink), the length and the SHA-256. Returns its path. Raises
    :class:`CorruptDataError` (missing, truncated, altered, malformed entry)."""
    name = header_field(entry, "name", str, f"{what} file entry")
    length = header_field(entry, "length", int, f"{what} file entry")
    sha = header_field(entry, "sha256", str, f"{what} file entry")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.bin", name) or ".." in name:
        raise CorruptDataError(f"{what}: payload file name {name!r} is not a plain .bin file name")
    path = folder / name
    st = regular_file(path, f"{what}: its payload file {name}")
    if st.st_size < length:
        raise CorruptDataError(f"{what}: payload file {name} truncated ({st.st_size} of {length} bytes)")
    if st.st_size > length:
        raise CorruptDataError(f"{what}: payload file {name} is corrupt ({st.st_size} bytes, {length} expected)")
    if file_digest(path)[0] != sha:
        raise CorruptDataError(f"{what}: payload file {name} is corrupt (checksum mismatch)")
    return path


def regular_file(path: Path, what: str) -> os.stat_result:
    try:
        st = os.lstat(path)  # lstat: a symlink is refused, not followed
    except FileNotFoundError:
        raise CorruptDataError(f"{what} is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise CorruptDataError(f"{what} is not a regular file")
    return st
