"""Serialization of contexts, keys and ciphertexts, to bytes and to files, validated on load.

Every object is wrapped in an envelope::

    b"CKKSNET\\n" | uint32 header length | JSON header | payload (OpenFHE BINARY)

The header names the kind of object, the context id of the key set it belongs to, and the
payload's length and SHA-256. Loading checks all four before OpenFHE sees a byte, so a file
of another kind raises :class:`WrongFileTypeError`, truncated or altered data
:class:`CorruptDataError`, and an object of another key set :class:`ContextMismatchError`.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import asdict
from pathlib import Path

import openfhe as ofhe

from ckksnet.backend.context import CkksClient, CkksContext, CkksServer, Ciphertext
from ckksnet.backend.presets import Preset
from ckksnet.errors import ContextMismatchError, CorruptDataError, SerializationError, WrongFileTypeError

MAGIC = b"CKKSNET\n"
FORMAT = 1
KINDS = ("context", "public_key", "mult_keys", "rotation_keys", "bootstrap_keys", "ciphertext")


# ---------------------------------------------------------------- envelope
def pack(kind: str, payload: bytes, context_id: str, extra: dict | None = None) -> bytes:
    """Wrap ``payload`` in a validated envelope."""
    if kind not in KINDS:
        raise SerializationError(f"unknown object kind {kind!r}")
    header = {"format": FORMAT, "kind": kind, "context_id": context_id, "length": len(payload),
              "sha256": hashlib.sha256(payload).hexdigest(), "extra": extra or {}}
    raw = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<I", len(raw)) + raw + payload


def unpack(data: bytes, kind: str, context_id: str | None = None) -> tuple[bytes, dict]:
    """Check an envelope and return (payload, header). ``context_id=None`` skips that check."""
    if not isinstance(data, (bytes, bytearray)):
        raise WrongFileTypeError(f"expected bytes, got {type(data).__name__}")
    if not data.startswith(MAGIC):
        raise WrongFileTypeError("not a ckksnet object (bad magic bytes)")
    if len(data) < len(MAGIC) + 4:
        raise CorruptDataError("data truncated inside the header")
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(bytes(data[start:start + n]))
        payload = bytes(data[start + n:])
        got_kind, length, digest = header["kind"], header["length"], header["sha256"]
        got_context = header["context_id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptDataError(f"unreadable ckksnet header ({exc})") from exc
    if header.get("format") != FORMAT:
        raise WrongFileTypeError(f"unsupported ckksnet format {header.get('format')!r}")
    if got_kind != kind:
        raise WrongFileTypeError(f"expected a {kind}, found a {got_kind}")
    if len(payload) != length:
        raise CorruptDataError(f"{kind} truncated: {len(payload)} of {length} payload bytes")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CorruptDataError(f"{kind} is corrupt: checksum mismatch")
    if context_id is not None and got_context != context_id:
        raise ContextMismatchError(f"{kind} belongs to another context "
                                   f"({str(got_context)[:12]}..., expected {context_id[:12]}...)")
    return payload, header


def _via_file(write) -> bytes:
    """Run an OpenFHE file writer into a temporary file and return its bytes."""
    fd, name = tempfile.mkstemp(suffix=".bin")
    os.close(fd)
    try:
        if write(name) is False:
            raise SerializationError("OpenFHE failed to write the object")
        return Path(name).read_bytes()
    finally:
        os.unlink(name)


def _openfhe_load(kind: str, fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # OpenFHE raises RuntimeError with cereal's message
        raise CorruptDataError(f"OpenFHE could not read the {kind}: {exc}") from exc


# ---------------------------------------------------------------- per object
def context_to_bytes(ctx: CkksContext) -> bytes:
    """The crypto context and its preset (no keys)."""
    extra = {"preset": asdict(ctx.preset), "key_tag": ctx.key_tag}
    return pack("context", ofhe.Serialize(ctx.cc, ofhe.BINARY), ctx.context_id, extra)


def public_key_to_bytes(ctx: CkksContext) -> bytes:
    return pack("public_key", ofhe.Serialize(ctx.public_key, ofhe.BINARY), ctx.context_id)


def mult_keys_to_bytes(ctx: CkksContext) -> bytes:
    return pack("mult_keys", ofhe.SerializeEvalMultKeyString(ofhe.BINARY, ctx.key_tag), ctx.context_id)


def rotation_keys_to_bytes(client: CkksClient) -> bytes:
    """The rotation keys the client generated (not the bootstrapping ones), in their groups."""
    blobs = [ofhe.Serialize(keymap, ofhe.BINARY) for _, keymap in client.rotation_key_maps]
    groups = [{"indices": list(idx), "length": len(b)}
              for (idx, _), b in zip(client.rotation_key_maps, blobs)]
    return pack("rotation_keys", b"".join(blobs), client.context_id, {"groups": groups})


def bootstrap_keys_to_bytes(ctx: CkksContext) -> bytes:
    if not ctx.has_bootstrap_keys:
        raise SerializationError("this context has no bootstrapping keys to serialize")
    payload = _via_file(lambda f: ofhe.SerializeEvalBootstrapKey(f, ofhe.BINARY, ctx.cc, ctx.key_tag,
                                                                  ctx.slots))
    return pack("bootstrap_keys", payload, ctx.context_id, {"slots": ctx.slots})


def ciphertext_to_bytes(ctx: CkksContext, ct: Ciphertext) -> bytes:
    ctx.check_ciphertext(ct)
    return pack("ciphertext", ofhe.Serialize(ct, ofhe.BINARY), ctx.context_id)


def ciphertext_from_bytes(ctx: CkksContext, data: bytes) -> Ciphertext:
    """Load a ciphertext of ``ctx``'s key set."""
    payload, _ = unpack(data, "ciphertext", ctx.context_id)
    ct = _openfhe_load("ciphertext", ofhe.DeserializeCiphertextString, payload, ofhe.BINARY)
    return ctx.check_ciphertext(ct)


def server_from_bytes(context: bytes, public_key: bytes, mult_keys: bytes | None = None,
                      rotation_keys: bytes | None = None, bootstrap_keys: bytes | None = None) -> CkksServer:
    """Rebuild a server-side context (no secret key) from serialized parts."""
    payload, header = unpack(context, "context")
    cid = header["context_id"]
    fields = dict(header["extra"]["preset"])
    fields["level_budget"] = tuple(fields["level_budget"])
    preset = Preset(**fields)
    cc = _openfhe_load("context", ofhe.DeserializeCryptoContextString, payload, ofhe.BINARY)
    pk_payload, _ = unpack(public_key, "public_key", cid)
    pk = _openfhe_load("public key", ofhe.DeserializePublicKeyString, pk_payload, ofhe.BINARY)
    server = CkksServer(preset, cc, pk)
    if server.context_id != cid:
        raise ContextMismatchError("public key does not belong to the serialized context")
    if mult_keys is not None:
        load_mult_keys(server, mult_keys)
    if rotation_keys is not None:
        load_rotation_keys(server, rotation_keys)
    if bootstrap_keys is not None:
        load_bootstrap_keys(server, bootstrap_keys)
    return server


def _has_mult_key(ctx: CkksContext) -> bool:
    try:
        return len(ctx.cc.GetEvalMultKeyVector(ctx.key_tag)) > 0
    except RuntimeError:
        return False


def load_mult_keys(ctx: CkksContext, data: bytes) -> None:
    payload, _ = unpack(data, "mult_keys", ctx.context_id)
    if _has_mult_key(ctx):
        return  # the same key set is already in this process's key store (checksum verified)
    _openfhe_load("relinearization key", ofhe.DeserializeEvalMultKeyString, payload, ofhe.BINARY)


def load_rotation_keys(ctx: CkksContext, data: bytes) -> None:
    """Install serialized rotation keys into OpenFHE's key store (merging with present ones)."""
    payload, header = unpack(data, "rotation_keys", ctx.context_id)
    offset = 0
    for group in header["extra"]["groups"]:
        blob = payload[offset:offset + group["length"]]
        offset += group["length"]
        keymap = _openfhe_load("rotation keys", ofhe.DeserializeEvalKeyMapString, blob, ofhe.BINARY)
        ofhe.CryptoContext.InsertEvalAutomorphismKey(keymap, ctx.key_tag)
        ctx.rotations.update(group["indices"])


def load_bootstrap_keys(ctx: CkksContext, data: bytes) -> None:
    payload, _ = unpack(data, "bootstrap_keys", ctx.context_id)
    fd, name = tempfile.mkstemp(suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        ok = _openfhe_load("bootstrapping keys", ofhe.DeserializeEvalBootstrapKey, name, ofhe.BINARY,
                           ctx.cc, ctx.key_tag, ctx.slots)
    finally:
        os.unlink(name)
    if ok is False:
        raise CorruptDataError("OpenFHE could not read the bootstrapping keys")
    ctx.keys.bootstrap = True
    ctx.adopt_bootstrap_rotations()


# ---------------------------------------------------------------- files
def save(data: bytes, path: str | os.PathLike) -> Path:
    """Write serialized bytes atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def load(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise SerializationError(f"{path}: no such file")
    return path.read_bytes()


_PARTS = {"context": context_to_bytes, "public_key": public_key_to_bytes,
          "mult_keys": mult_keys_to_bytes, "rotation_keys": rotation_keys_to_bytes,
          "bootstrap_keys": bootstrap_keys_to_bytes}


def save_server_keys(client: CkksClient, folder: str | os.PathLike) -> Path:
    """Write everything a server needs (never the secret key) as ``<kind>.ckks`` files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for kind, to_bytes in _PARTS.items():
        if kind == "bootstrap_keys" and not client.has_bootstrap_keys:
            continue
        save(to_bytes(client), folder / f"{kind}.ckks")
    return folder


def load_server_keys(folder: str | os.PathLike) -> CkksServer:
    """Rebuild a :class:`CkksServer` from a folder written by :func:`save_server_keys`."""
    folder = Path(folder)
    parts = {kind: load(folder / f"{kind}.ckks") if (folder / f"{kind}.ckks").exists() else None
             for kind in _PARTS}
    if parts["context"] is None or parts["public_key"] is None:
        raise SerializationError(f"{folder}: context.ckks and public_key.ckks are required")
    return server_from_bytes(**parts)
