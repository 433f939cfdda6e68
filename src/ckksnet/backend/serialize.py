"""Serialization of contexts, keys and ciphertexts, to bytes and to files, validated on load.

The envelope (format 2) every ckksnet object is written in::

    offset    bytes  field
    0         8      magic b"CKKSNET\\n"
    8         2      format version, uint16 little-endian (``FORMAT``)
    10        4      header length H, uint32 LE (at most ``MAX_HEADER``)
    14        8      payload length P, uint64 LE
    22        H      header: a JSON object (UTF-8) with "kind" and the kind's own fields
    22+H      P      payload (for OpenFHE objects: their BINARY serialization)
    22+H+P    32     SHA-256 of every byte before it: magic, version, lengths, header, payload

:func:`unpack` checks, in this order, before anything parses the payload: the magic (data cut
inside it: :class:`CorruptDataError`; anything else: :class:`WrongFileTypeError`), the version
(a newer or retired one: :class:`UnsupportedFormatError`), the lengths against the data (cut
anywhere: "truncated"), the checksum (any altered byte of header or payload), the header's JSON
and its fields (a missing, renamed or mistyped field: :class:`CorruptDataError` naming it), the
kind (:class:`WrongFileTypeError`) and the key set (:class:`ContextMismatchError`).

**Kinds** are names registered in :data:`KINDS`; code that writes files of its own (plans)
registers its kinds once with :func:`register_kind` and then uses :func:`pack` /
:func:`unpack` / :func:`save` / :func:`load` as they are.

**Key objects** (context, keys, ciphertexts) carry three more header fields: ``context_id``
(the key set), ``preset`` (its name) and ``extra`` (per kind: the preset's parameters, rotation
indices, ...). After OpenFHE has read the payload, what the header says is checked against what
was read (ring dimension, slots, depth; the rotation keys actually installed; the key tag), so a
header that disagrees with its payload is a :class:`CorruptDataError` too.

**Big payloads** (evaluation keys: ~11 GiB at the secure preset) are never held as bytes: their
envelope's payload is empty and its ``files`` field lists raw payload files next to it (name,
length, SHA-256), which OpenFHE writes and reads itself. See :mod:`ckksnet.backend.keys`, which
holds the file layout of a key set; the byte functions here (``*_to_bytes``,
``server_from_bytes``) hold whole payloads in memory and are for small presets and tests.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
import struct
import tempfile
import typing
from dataclasses import asdict
from pathlib import Path

import openfhe as ofhe

from ckksnet.backend.context import (CkksClient, CkksContext, CkksServer, Ciphertext, context_id_for,
                                     require_type, rotations_of_automorphisms)
from ckksnet.backend.presets import Preset, get_preset
from ckksnet.errors import (ContextMismatchError, CorruptDataError, PresetError, SerializationError,
                            UnsupportedFormatError, WrongFileTypeError)

MAGIC = b"CKKSNET\n"
FORMAT = 2
MAX_HEADER = 4 << 20  # bytes; a larger length field is damage (it also tells format 1 apart)
_FIXED = struct.Struct("<8sHIQ")  # magic, version, header length, payload length
_DIGEST = 32  # bytes of the SHA-256 trailer
_CHUNK = 16 << 20  # bytes read at a time when hashing files
#: registered envelope kinds; extend with :func:`register_kind`
KINDS: set[str] = {"context", "public_key", "secret_key", "mult_keys", "rotation_keys", "bootstrap_keys",
                   "ciphertext"}


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
def save(data: bytes, path: str | os.PathLike, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically (a temporary file, then a rename). The file is
    created with permission bits ``mode`` (less the umask), so 0o600 is never readable by others,
    not even for a moment. Raises :class:`SerializationError` if it cannot be written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)  # a leftover of a crash; O_EXCL below must create afresh
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
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


def openfhe_load(what: str, fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # OpenFHE raises RuntimeError with cereal's message
        raise CorruptDataError(f"OpenFHE could not read the {what}: {exc}") from exc


def openfhe_write(what: str, fn, *args) -> None:
    try:
        ok = fn(*args)
    except Exception as exc:  # OpenFHE raises RuntimeError on a missing key or a write error
        raise SerializationError(f"OpenFHE could not write the {what}: {exc}") from exc
    if ok is False:
        raise SerializationError(f"OpenFHE could not write the {what} (none present, or an I/O error)")


def _via_file(write) -> bytes:
    """Run an OpenFHE file writer into a temporary file and return its bytes."""
    fd, name = tempfile.mkstemp(suffix=".bin")
    os.close(fd)
    try:
        openfhe_write("object", write, name)
        return Path(name).read_bytes()
    finally:
        os.unlink(name)


# ---------------------------------------------------------------- key objects: headers
def key_fields(ctx: CkksContext, extra: dict | None = None, files: list[dict] | None = None) -> dict:
    """Header fields of a key object of ``ctx``'s key set (``files``: attached payload files)."""
    require_type(ctx, CkksContext, "the key set", "a CkksClient or CkksServer")
    fields = {"context_id": ctx.context_id, "preset": ctx.preset.name, "extra": extra or {}}
    if files is not None:
        fields["files"] = files
    return fields


def unpack_key(data: bytes, kind: str, context_id: str | None = None) -> tuple[bytes, dict]:
    """:func:`unpack` plus the key-object fields (context_id, preset, extra) checked."""
    payload, header = unpack(data, kind)
    what = f"{kind} header"
    cid = header_field(header, "context_id", str, what)
    header_field(header, "preset", str, what)
    header_field(header, "extra", dict, what)
    if context_id is not None and cid != context_id:
        raise ContextMismatchError(f"{kind} belongs to another key set ({cid[:12]}..., "
                                   f"expected {context_id[:12]}...)")
    return payload, header


def preset_from_header(fields: object, what: str = "context header") -> Preset:
    """A :class:`Preset` from a header's parameter dict. Any unknown, missing (without default)
    or mistyped field, or parameters that make no valid preset: :class:`CorruptDataError`
    naming the field. Insecure presets warn as :func:`get_preset` does."""
    if not isinstance(fields, dict):
        raise CorruptDataError(f"{what}: the preset parameters are not a JSON object")
    known = {f.name: f for f in dataclasses.fields(Preset)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise CorruptDataError(f"{what}: unknown preset field(s) {', '.join(map(repr, unknown))}")
    hints = typing.get_type_hints(Preset)
    values = {}
    for name, f in known.items():
        if name in fields:
            values[name] = _preset_value(fields, name, hints[name], what)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise CorruptDataError(f"{what} lacks the preset field {name!r}")
    try:
        return get_preset(Preset(**values))
    except PresetError as exc:
        raise CorruptDataError(f"{what}: {exc}") from exc


def _preset_value(fields: dict, name: str, hint, what: str):
    if typing.get_origin(hint) is tuple:  # level_budget: a JSON list of ints
        items = header_field(fields, name, (list, tuple), f"{what} preset")
        for i, item in enumerate(items):
            header_field({f"{name}[{i}]": item}, f"{name}[{i}]", int, f"{what} preset")
        return tuple(items)
    if hint is float:
        return float(header_field(fields, name, (int, float), f"{what} preset"))
    return header_field(fields, name, hint, f"{what} preset")


def check_context(preset: Preset, cc: "ofhe.CryptoContext") -> None:
    """The header's preset against the deserialized context: ring dimension, slots, depth."""
    actual = {"ring_dim": cc.GetRingDimension(), "slots": cc.GetBatchSize(),
              "depth": cc.GetMultiplicativeDepth()}
    for name, value in actual.items():
        if getattr(preset, name) != value:
            raise CorruptDataError(f"context header says {name} = {getattr(preset, name)}, "
                                   f"the serialized context has {value}")


# ---------------------------------------------------------------- key objects: to bytes
def context_to_bytes(ctx: CkksContext) -> bytes:
    """The crypto context and its preset (no keys)."""
    extra = {"preset": asdict(ctx.preset), "key_tag": ctx.key_tag}
    return pack("context", ofhe.Serialize(ctx.cc, ofhe.BINARY), key_fields(ctx, extra))


def public_key_to_bytes(ctx: CkksContext) -> bytes:
    return pack("public_key", ofhe.Serialize(ctx.public_key, ofhe.BINARY), key_fields(ctx))


def secret_key_to_bytes(client: CkksClient) -> bytes:
    """The secret key (write it with ``save(..., mode=0o600)``; never ship it)."""
    require_type(client, CkksClient, "the secret key's owner", "only a client holds a secret key")
    return pack("secret_key", client.export_secret_key(), key_fields(client))


def mult_keys_to_bytes(ctx: CkksContext) -> bytes:
    return pack("mult_keys", ofhe.SerializeEvalMultKeyString(ofhe.BINARY, ctx.key_tag), key_fields(ctx))


def rotation_keys_to_bytes(client: CkksClient) -> bytes:
    """The rotation keys the client generated (not the bootstrapping ones), in their groups."""
    require_type(client, CkksClient, "the key set", "the client that generated the keys")
    blobs = [ofhe.Serialize(keymap, ofhe.BINARY) for _, keymap in client.rotation_key_maps]
    groups = [{"indices": list(idx), "length": len(b)}
              for (idx, _), b in zip(client.rotation_key_maps, blobs)]
    return pack("rotation_keys", b"".join(blobs), key_fields(client, {"groups": groups}))


def bootstrap_extra(ctx: CkksContext) -> dict:
    """Header fields of bootstrapping keys: slots and the automorphism keys they hold."""
    if not ctx.has_bootstrap_keys:
        raise SerializationError("this context has no bootstrapping keys to serialize")
    if not ctx.keys.bootstrap_automorphisms:
        raise SerializationError("which automorphism keys bootstrapping made is unknown here")
    return {"slots": ctx.slots, "automorphisms": sorted(ctx.keys.bootstrap_automorphisms)}


def bootstrap_keys_to_bytes(ctx: CkksContext) -> bytes:
    """All bootstrapping keys as bytes (hundreds of MB at the test preset, ~10 GiB at secure:
    use :func:`ckksnet.backend.keys.save_evaluation_keys` for files)."""
    extra = bootstrap_extra(ctx)
    payload = _via_file(lambda f: ofhe.SerializeEvalBootstrapKey(f, ofhe.BINARY, ctx.cc, ctx.key_tag,
                                                                  ctx.slots))
    return pack("bootstrap_keys", payload, key_fields(ctx, extra))


def ciphertext_to_bytes(ctx: CkksContext, ct: Ciphertext) -> bytes:
    require_type(ctx, CkksContext, "the key set", "a CkksClient or CkksServer").check_ciphertext(ct)
    return pack("ciphertext", ofhe.Serialize(ct, ofhe.BINARY), key_fields(ctx))


# ---------------------------------------------------------------- key objects: from bytes
def ciphertext_from_bytes(ctx: CkksContext, data: bytes) -> Ciphertext:
    """Load a ciphertext of ``ctx``'s key set. Raises :class:`ContextMismatchError` (another
    key set's) or the envelope's errors."""
    require_type(ctx, CkksContext, "the key set", "a CkksClient or CkksServer")
    payload, _ = unpack_key(data, "ciphertext", ctx.context_id)
    ct = openfhe_load("ciphertext", ofhe.DeserializeCiphertextString, payload, ofhe.BINARY)
    if ct.GetKeyTag() != ctx.key_tag:
        raise CorruptDataError("the ciphertext's payload belongs to another key set than its header says")
    return ctx.check_ciphertext(ct)


def save_ciphertext(ctx: CkksContext, ct: Ciphertext, path: str | os.PathLike) -> Path:
    """Write one ciphertext file (a few MB at the test preset, up to ~25 MB at secure)."""
    return save(ciphertext_to_bytes(ctx, ct), path)


def load_ciphertext(ctx: CkksContext, path: str | os.PathLike) -> Ciphertext:
    """Read a ciphertext file of ``ctx``'s key set (see :func:`ciphertext_from_bytes`)."""
    return ciphertext_from_bytes(ctx, load(path))


def context_from_bytes(data: bytes) -> tuple[Preset, "ofhe.CryptoContext", str]:
    """(preset, OpenFHE context, key set id) from a context envelope, header and payload agreeing."""
    payload, header = unpack_key(data, "context")
    extra = header["extra"]
    preset = preset_from_header(header_field(extra, "preset", dict, "context header extra"))
    tag = header_field(extra, "key_tag", str, "context header extra")
    if preset.name != header["preset"]:
        raise CorruptDataError(f"context header names preset {header['preset']!r} and parameters "
                               f"of {preset.name!r}")
    if context_id_for(preset.name, tag) != header["context_id"]:
        raise CorruptDataError("context header: context_id does not match its preset and key tag")
    cc = openfhe_load("context", ofhe.DeserializeCryptoContextString, payload, ofhe.BINARY)
    check_context(preset, cc)
    return preset, cc, header["context_id"]


def public_key_from_bytes(data: bytes, preset: Preset, context_id: str) -> "ofhe.PublicKey":
    """The public key of key set ``context_id`` (:class:`ContextMismatchError` for another's)."""
    payload, _ = unpack_key(data, "public_key", context_id)
    pk = openfhe_load("public key", ofhe.DeserializePublicKeyString, payload, ofhe.BINARY)
    if context_id_for(preset.name, pk.GetKeyTag()) != context_id:
        raise CorruptDataError("the public key's payload belongs to another key set than its header says")
    return pk


def server_from_bytes(context: bytes, public_key: bytes, mult_keys: bytes | None = None,
                      rotation_keys: bytes | None = None, bootstrap_keys: bytes | None = None) -> CkksServer:
    """Rebuild a server-side context (no secret key) from serialized parts held in memory."""
    preset, cc, cid = context_from_bytes(context)
    server = CkksServer(preset, cc, public_key_from_bytes(public_key, preset, cid))
    if mult_keys is not None:
        load_mult_keys(server, mult_keys)
    if bootstrap_keys is not None:  # before rotation keys: the order a client makes them in
        load_bootstrap_keys(server, bootstrap_keys)
    if rotation_keys is not None:
        load_rotation_keys(server, rotation_keys)
    return server


def has_mult_key(ctx: CkksContext) -> bool:
    """Whether OpenFHE's store holds a relinearization key of ``ctx``'s key set."""
    try:
        return len(ctx.cc.GetEvalMultKeyVector(ctx.key_tag)) > 0
    except RuntimeError:
        return False


def load_mult_keys(ctx: CkksContext, data: bytes) -> None:
    require_type(ctx, CkksContext, "the key set", "a CkksServer")
    payload, _ = unpack_key(data, "mult_keys", ctx.context_id)
    if has_mult_key(ctx):
        return  # the same key set is already in this process's key store (checksum verified)
    openfhe_load("relinearization key", ofhe.DeserializeEvalMultKeyString, payload, ofhe.BINARY)
    require_mult_key(ctx)


def require_mult_key(ctx: CkksContext) -> None:
    if not has_mult_key(ctx):
        raise CorruptDataError("the relinearization key's payload belongs to another key set than "
                               "its header says")


def rotation_groups(header: dict) -> list[list[int]]:
    """The rotation indices of each group in a rotation-key header (validated)."""
    groups = header_field(header["extra"], "groups", list, "rotation_keys header extra")
    out = []
    for i, group in enumerate(groups):
        indices = header_field(group, "indices", list, f"rotation_keys group {i}")
        if not indices or not all(type(k) is int for k in indices):
            raise CorruptDataError(f"rotation_keys group {i}: 'indices' must be a non-empty list of ints")
        out.append(indices)
    return out


def load_rotation_keys(ctx: CkksContext, data: bytes) -> None:
    """Install serialized rotation keys into OpenFHE's key store (merging with present ones)."""
    require_type(ctx, CkksContext, "the key set", "a CkksServer")
    payload, header = unpack_key(data, "rotation_keys", ctx.context_id)
    offset = 0
    for i, indices in enumerate(rotation_groups(header)):
        length = header_field(header["extra"]["groups"][i], "length", int, f"rotation_keys group {i}")
        blob = payload[offset:offset + length]
        offset += length
        keymap = openfhe_load("rotation keys", ofhe.DeserializeEvalKeyMapString, blob, ofhe.BINARY)
        install_rotation_keys(ctx, keymap, indices)
    if offset != len(payload):
        raise CorruptDataError(f"rotation_keys: the groups cover {offset} of {len(payload)} payload bytes")


def install_rotation_keys(ctx: CkksContext, keymap: "ofhe.EvalKeyMap", indices: list[int]) -> None:
    """Insert one group's key map and check it held exactly the keys its header lists."""
    before = ctx.automorphism_indices()
    ofhe.CryptoContext.InsertEvalAutomorphismKey(keymap, ctx.key_tag)
    check_installed(ctx, "rotation keys", set(ctx.cc.FindAutomorphismIndices(indices)), before)
    ctx.rotations.update(int(k) % ctx.slots for k in indices)


def check_installed(ctx: CkksContext, what: str, declared: set[int], before: set[int]) -> None:
    """After loading keys: every automorphism key the header declares is present, and no key
    arrived that it does not declare. Raises :class:`CorruptDataError`."""
    after = ctx.automorphism_indices()
    missing, undeclared = sorted(declared - after), sorted(after - before - declared)
    if missing or undeclared:
        raise CorruptDataError(f"{what}: the header and the payload disagree (header lists automorphism "
                               f"keys {missing} the payload lacks; payload holds {undeclared} unlisted)")


def bootstrap_automorphisms(header: dict, preset: Preset) -> list[int]:
    """The automorphism indices a bootstrapping-key header declares (validated)."""
    extra = header["extra"]
    slots = header_field(extra, "slots", int, "bootstrap_keys header extra")
    if slots != preset.slots:
        raise CorruptDataError(f"bootstrap_keys are for {slots} slots, the context has {preset.slots}")
    autos = header_field(extra, "automorphisms", list, "bootstrap_keys header extra")
    if not autos or not all(type(a) is int for a in autos):
        raise CorruptDataError("bootstrap_keys header: 'automorphisms' must be a non-empty list of ints")
    return autos


def bootstrap_rotations(header: dict, preset: Preset) -> set[int]:
    """Rotation indices (mod slots) that the bootstrapping keys of ``header`` provide."""
    autos = bootstrap_automorphisms(header, preset)
    return set(rotations_of_automorphisms(autos, preset.ring_dim, preset.slots))


def install_bootstrap_keys(ctx: CkksContext, path: str, header: dict) -> None:
    """Load bootstrapping keys from an OpenFHE key file at ``path`` (already verified).

    ``EvalBootstrapSetup`` must run first: OpenFHE's reader keeps only the keys its bootstrap
    precomputation names, and without it installs 18 of the 54 at the test preset (the first
    bootstrap then aborts the process: "EvalKey for index [...] is not found").
    """
    autos = bootstrap_automorphisms(header, ctx.preset)
    ctx.prepare_bootstrap()
    before = ctx.automorphism_indices()
    ok = openfhe_load("bootstrapping keys", ofhe.DeserializeEvalBootstrapKey, path, ofhe.BINARY,
                       ctx.cc, ctx.key_tag, ctx.slots)
    if ok is False:
        raise CorruptDataError("OpenFHE could not read the bootstrapping keys")
    check_installed(ctx, "bootstrapping keys", set(autos), before)
    ctx.keys.bootstrap = True
    ctx.keys.bootstrap_automorphisms = sorted(autos)
    ctx.adopt_bootstrap_rotations()


def load_bootstrap_keys(ctx: CkksContext, data: bytes) -> None:
    """Bootstrapping keys from bytes (through a temporary file: OpenFHE reads them from files)."""
    require_type(ctx, CkksContext, "the key set", "a CkksServer")
    payload, header = unpack_key(data, "bootstrap_keys", ctx.context_id)
    fd, name = tempfile.mkstemp(suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        del payload
        install_bootstrap_keys(ctx, name, header)
    finally:
        os.unlink(name)


# ---------------------------------------------------------------- evaluation-key folders
def save_server_keys(client: CkksClient, folder: str | os.PathLike) -> Path:
    """Write everything a server needs (never the secret key); see
    :func:`ckksnet.backend.keys.save_evaluation_keys`, which this is."""
    from ckksnet.backend.keys import save_evaluation_keys

    return save_evaluation_keys(client, folder)


def load_server_keys(folder: str | os.PathLike) -> CkksServer:
    """A :class:`CkksServer` from a folder written by :func:`save_server_keys`; see
    :func:`ckksnet.backend.keys.load_evaluation_keys`, which this is (no key required)."""
    from ckksnet.backend.keys import load_evaluation_keys

    return load_evaluation_keys(folder)
