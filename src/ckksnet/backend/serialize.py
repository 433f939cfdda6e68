"""Serialization of OpenFHE objects (contexts, keys, ciphertexts), to bytes and to files,
validated on load.

Every file is an envelope of :mod:`ckksnet.core.envelope` (magic, format version, lengths, a JSON
header, the payload, a SHA-256 over all of it; see there for the checks :func:`unpack` makes and
in which order); this module registers the OpenFHE objects' kinds. What a header says is read
without OpenFHE in :mod:`ckksnet.backend.headers`.

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

import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from ckksnet.backend.ofhe import openfhe as ofhe

from ckksnet.backend.context import CkksClient, CkksContext, CkksServer, Ciphertext, require_type
from ckksnet.backend.headers import (bootstrap_automorphisms, context_id_for, openfhe_version, preset_from_header,
                                     rotation_groups, unpack_key)
from ckksnet.core.envelope import header_field, load, pack, save
from ckksnet.core.preset import Preset
from ckksnet.core.tiles import Tiles, join, tiles_of
from ckksnet.errors import CorruptDataError, SerializationError



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
    """Header fields of a key object of ``ctx``'s key set (``files``: attached payload files),
    with the OpenFHE version that wrote it."""
    require_type(ctx, CkksContext, "the key set", "a CkksClient or CkksServer")
    fields = {"context_id": ctx.context_id, "preset": ctx.preset.name, "extra": extra or {},
              "openfhe": openfhe_version()}
    if files is not None:
        fields["files"] = files
    return fields


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


#: the most ciphertexts one file holds (a tensor over several ciphertexts: :mod:`ckksnet.core.tiles`)
MAX_TILES = 4096


def ciphertext_to_bytes(ctx: CkksContext, ct: Ciphertext, role: str | None = None) -> bytes:
    """One ciphertext, or the :class:`~ckksnet.core.tiles.Tiles` of a tensor over several (their
    payloads one after another, each one's length in the header's ``tiles`` list). ``role``
    ("input", "output"), if given, goes in the header (a reader checks it)."""
    require_type(ctx, CkksContext, "the key set", "a CkksClient or CkksServer")
    parts = tiles_of(ct)
    for c in parts:
        ctx.check_ciphertext(c)
    payloads = [ofhe.Serialize(c, ofhe.BINARY) for c in parts]
    extra = {"tiles": [len(p) for p in payloads]} if isinstance(ct, Tiles) else None
    return pack("ciphertext", b"".join(payloads), key_fields(ctx) | (extra or {}) | ({"role": role} if role else {}))


# ---------------------------------------------------------------- key objects: from bytes
def ciphertext_from_bytes(ctx: CkksContext, data: bytes) -> Ciphertext:
    """Load a ciphertext of ``ctx``'s key set. Raises :class:`ContextMismatchError` (another
    key set's) or the envelope's errors."""
    require_type(ctx, CkksContext, "the key set", "a CkksClient or CkksServer")
    payload, header = unpack_key(data, "ciphertext", ctx.context_id)
    if "tiles" not in header:
        return _one_ciphertext(ctx, payload)
    sizes = header_field(header, "tiles", list, "ciphertext header")
    ok = 1 <= len(sizes) <= MAX_TILES and all(type(n) is int and n > 0 for n in sizes)
    if not ok or sum(sizes) != len(payload):
        raise CorruptDataError(f"the ciphertext header's tiles ({len(sizes)} entries) do not describe its "
                               f"{len(payload)}-byte payload")
    ends = [sum(sizes[:i + 1]) for i in range(len(sizes))]
    return join([_one_ciphertext(ctx, payload[e - n:e]) for n, e in zip(sizes, ends)])


def _one_ciphertext(ctx: CkksContext, payload: bytes) -> Ciphertext:
    ct = openfhe_load("ciphertext", ofhe.DeserializeCiphertextString, payload, ofhe.BINARY)
    if ct.GetKeyTag() != ctx.key_tag:
        raise CorruptDataError("the ciphertext's payload belongs to another key set than its header says")
    return ctx.check_ciphertext(ct)


def save_ciphertext(ctx: CkksContext, ct: Ciphertext, path: str | os.PathLike) -> Path:
    """Write one ciphertext file (a few MB at the test preset, up to ~25 MB at secure), or the
    tiles of a tensor over several ciphertexts in one file."""
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
