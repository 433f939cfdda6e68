"""Key files: a client's key set and the evaluation-key bundle a server loads, across processes.

Layout written by :func:`save_keys`::

    KEYDIR/                      (created 0o700)
      secret_key.ckks            the secret key; 0o600 from creation (os.open), never shipped
      context.ckks               the client's context (with its preset) and public key
      public_key.ckks
      eval/                      the bundle to ship to a server: never a secret key
        context.ckks  public_key.ckks
        mult_keys.ckks        + mult_keys.bin           relinearization key
        rotation_keys.ckks    + rotation_keys.<i>.bin   the client's rotation keys, per group
        bootstrap_keys.ckks   + bootstrap_keys.bin      bootstrapping keys (their ~54-66 rotations)

Every ``.ckks`` file is an envelope (:mod:`ckksnet.core.envelope`; header checks without OpenFHE in
:mod:`ckksnet.backend.bundle`): magic, format version,
kind, key set id (``context_id``), preset name, and a SHA-256 over header and payload.

**Memory design (big key files).** At the secure preset the bundle is ~11 GiB, the
bootstrapping keys alone ~10 GiB, so neither saving nor loading may hold a file's bytes next to
the keys. Evaluation keys therefore never pass through Python bytes:

* saving: OpenFHE's own file writers (``SerializeEvalMultKey``, ``SerializeToFile`` of each
  rotation-key map, ``SerializeEvalBootstrapKey``) stream the keys into ``<kind>.bin`` (a
  temporary name, renamed when complete); Python then hashes the file in 16 MiB blocks and
  writes a small ``<kind>.ckks`` envelope whose empty payload is backed by a ``files`` header
  field: name, length and SHA-256 of each ``.bin``. The envelope's checksum covers that field,
  hence header and payload together;
* loading: the small envelopes are read first, and every requirement (rotation indices,
  bootstrapping) is checked from their headers before a key byte is read
  (:class:`MissingKeyError` at load, naming the indices). Each ``.bin`` is then hashed in
  16 MiB blocks and handed by path to OpenFHE's file reader, which deserializes it straight
  into the key store. A ``.bin`` name in a header must be a plain ``*.bin`` name of a regular
  file in the folder (no path, no symlink), so a header cannot make a server open another file.

Measured at the test preset (N = 2^12; ``tests/test_keys.py`` asserts bounds on both): the
bundle is 386 MiB, 358 MiB of it bootstrapping keys. Loading it in a fresh process raises peak
RSS by 357 MiB for those keys (1.0x: the keys themselves) plus 140 MiB of bootstrap
precomputation; passing the same file through Python bytes costs 717 MiB (2.0x). Saving raises
peak RSS by 32 MiB (0.08x of the bundle).

The loader verifies that the keys each file installs are exactly those its header lists. It
runs ``EvalBootstrapSetup`` before reading bootstrapping keys: OpenFHE keeps only the keys its
bootstrap precomputation names, and without it a fresh process installed 18 of the 54 (the
first bootstrap then aborted the process). Between the hash and OpenFHE's read the folder must
not change: keep a bundle in a folder only its owner can write.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from ckksnet.backend.ofhe import openfhe as ofhe

from ckksnet.backend.bundle import (attached_entries, bundle_folder, load_memory_gib, part_headers, read_envelope,
                                    require_files, require_keys)
from ckksnet.backend.context import CkksClient, CkksServer, require_type
from ckksnet.backend.headers import rotation_groups, unpack_key
from ckksnet.backend.serialize import (bootstrap_extra, context_from_bytes, context_to_bytes, has_mult_key,
                                       install_bootstrap_keys, install_rotation_keys, key_fields, openfhe_load,
                                       openfhe_write, public_key_from_bytes, public_key_to_bytes, require_mult_key,
                                       secret_key_to_bytes)
from ckksnet.core.backend import EVAL_DIR, SECRET_KEY_FILE
from ckksnet.core.envelope import atomic_path, check_attached, describe_file, pack, save
from ckksnet.core.memory import check_memory
from ckksnet.errors import CorruptDataError, SerializationError


# ---------------------------------------------------------------- saving
def save_keys(client: CkksClient, folder: str | os.PathLike) -> Path:
    """Write ``client``'s key set to ``folder`` (layout in the module docstring): the secret
    key (mode 0o600), context and public key, and the evaluation-key bundle in ``folder/eval``.
    Returns ``folder``. Raises :class:`SerializationError` if a part cannot be written (a client
    loaded from files holds no evaluation keys to write)."""
    require_type(client, CkksClient, "save_keys' key set", "the client that holds the secret key")
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    save(secret_key_to_bytes(client), folder / SECRET_KEY_FILE, mode=0o600)
    save(context_to_bytes(client), folder / "context.ckks")
    save(public_key_to_bytes(client), folder / "public_key.ckks")
    save_evaluation_keys(client, folder / EVAL_DIR)
    return folder


def save_evaluation_keys(client: CkksClient, folder: str | os.PathLike) -> Path:
    """Write the shippable bundle (context, public key, relinearization, rotation and
    bootstrapping keys; never the secret key) to ``folder``, streaming each key file through
    OpenFHE's file writers. Returns ``folder``. Raises :class:`SerializationError`."""
    require_type(client, CkksClient, "the key set", "the client that generated the keys")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(folder / SECRET_KEY_FILE):
        raise SerializationError(f"{folder} holds {SECRET_KEY_FILE}: write evaluation keys to a "
                                 "folder of their own, the one shipped to a server")
    save(context_to_bytes(client), folder / "context.ckks")
    save(public_key_to_bytes(client), folder / "public_key.ckks")
    mult = _write_attached(folder, "mult_keys.bin", "relinearization key",
                           lambda p: client.cc.SerializeEvalMultKey(p, ofhe.BINARY, client.key_tag))
    save(pack("mult_keys", b"", key_fields(client, {}, [mult])), folder / "mult_keys.ckks")
    _save_rotation_keys(client, folder)
    _save_bootstrap_keys(client, folder)
    return folder


def _write_attached(folder: Path, name: str, what: str, write: Callable[[str], bool]) -> dict:
    """Let OpenFHE write a raw payload file (under a temporary name, renamed once complete)
    and return its ``files`` entry (name, length, SHA-256, hashed in blocks)."""
    with atomic_path(folder / name) as tmp:
        openfhe_write(what, write, str(tmp))
        entry = describe_file(tmp)
    return {**entry, "name": name}


def _save_rotation_keys(client: CkksClient, folder: Path) -> None:
    entries = [_write_attached(folder, f"rotation_keys.{i}.bin", "rotation keys",
                               lambda p, m=keymap: ofhe.SerializeToFile(p, m, ofhe.BINARY))
               for i, (_, keymap) in enumerate(client.rotation_key_maps)]
    groups = [{"indices": list(indices)} for indices, _ in client.rotation_key_maps]
    save(pack("rotation_keys", b"", key_fields(client, {"groups": groups}, entries)),
         folder / "rotation_keys.ckks")
    names = {e["name"] for e in entries}
    for stale in folder.glob("rotation_keys.*.bin"):  # groups of an earlier key set
        if stale.name not in names:
            stale.unlink()


def _save_bootstrap_keys(client: CkksClient, folder: Path) -> None:
    if not client.has_bootstrap_keys:
        for stale in ("bootstrap_keys.ckks", "bootstrap_keys.bin"):
            (folder / stale).unlink(missing_ok=True)
        return
    extra = bootstrap_extra(client)
    entry = _write_attached(folder, "bootstrap_keys.bin", "bootstrapping keys",
                            lambda p: ofhe.SerializeEvalBootstrapKey(p, ofhe.BINARY, client.cc,
                                                                     client.key_tag, client.slots))
    save(pack("bootstrap_keys", b"", key_fields(client, extra, [entry])), folder / "bootstrap_keys.ckks")


# ---------------------------------------------------------------- loading: the client
def load_client_keys(folder: str | os.PathLike) -> CkksClient:
    """A client (encrypts, decrypts) from the files :func:`save_keys` wrote to ``folder``;
    nothing is regenerated. Raises :class:`SerializationError` (a file missing),
    :class:`CorruptDataError`, :class:`ContextMismatchError` (files of different key sets)."""
    folder = Path(folder)
    preset, cc, cid = context_from_bytes(read_envelope(folder, "context.ckks"))
    pk = public_key_from_bytes(read_envelope(folder, "public_key.ckks"), preset, cid)
    payload, _ = unpack_key(read_envelope(folder, SECRET_KEY_FILE), "secret_key", cid)
    sk = openfhe_load("secret key", ofhe.DeserializePrivateKeyString, payload, ofhe.BINARY)
    del payload
    if sk.GetKeyTag() != pk.GetKeyTag():
        raise CorruptDataError("the secret key's payload belongs to another key set than its header says")
    return CkksClient.from_parts(preset, cc, pk, sk)


# ---------------------------------------------------------------- loading: the server
def load_evaluation_keys(folder: str | os.PathLike, rotations: Iterable[int] = (),
                         bootstrap: bool = False, memory_check: bool = True) -> CkksServer:
    """A :class:`CkksServer` with every key in the bundle ``folder`` (``KEYDIR/eval``).

    ``rotations`` (taken mod slots) and ``bootstrap`` say what the caller will need: anything
    the bundle lacks raises :class:`MissingKeyError` naming it, from the headers, before a key
    is read. Never opens a secret key: a folder holding ``secret_key.ckks`` is refused
    (:class:`SerializationError`). Other errors: :class:`CorruptDataError` (damaged, truncated,
    or a header that disagrees with its payload), :class:`ContextMismatchError` (files of
    another key set), :class:`WrongFileTypeError`, and before any key is read
    :class:`InsufficientMemoryError` if the process cannot hold them (``memory_check=False`` or
    CKKSNET_SKIP_MEMORY_CHECK=1 skips that check).
    """
    folder = bundle_folder(folder)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    check_memory(load_memory_gib(size), f"loading the evaluation keys in {folder} ({size / 2**30:.1f} GiB of files)",
                 override=not memory_check)
    server = _server_context(folder)
    headers = part_headers(folder, server.preset, server.context_id)
    require_keys(folder, server.preset, headers, rotations, bootstrap)
    _load_mult_keys(server, folder, headers["mult_keys"])
    if "bootstrap_keys" in headers:
        (entry,) = attached_entries(headers["bootstrap_keys"], "bootstrap_keys", 1)
        path = check_attached(folder, entry, "bootstrap_keys")
        install_bootstrap_keys(server, str(path), headers["bootstrap_keys"])
    if "rotation_keys" in headers:
        _load_rotation_keys(server, folder, headers["rotation_keys"])
    return server


def _server_context(folder: Path) -> CkksServer:
    require_files(folder)
    preset, cc, cid = context_from_bytes(read_envelope(folder, "context.ckks"))
    return CkksServer(preset, cc, public_key_from_bytes(read_envelope(folder, "public_key.ckks"), preset, cid))


def _load_mult_keys(server: CkksServer, folder: Path, header: dict) -> None:
    (entry,) = attached_entries(header, "mult_keys", 1)
    path = check_attached(folder, entry, "mult_keys")
    if has_mult_key(server):
        return  # this key set's key is already in the process's store (OpenFHE refuses a second)
    ok = openfhe_load("relinearization key", server.cc.DeserializeEvalMultKey, str(path), ofhe.BINARY)
    if ok is False:
        raise CorruptDataError("OpenFHE could not read the relinearization key")
    require_mult_key(server)


def _load_rotation_keys(server: CkksServer, folder: Path, header: dict) -> None:
    groups = rotation_groups(header)
    for indices, entry in zip(groups, attached_entries(header, "rotation_keys", len(groups))):
        path = check_attached(folder, entry, "rotation_keys")
        keymap, ok = openfhe_load("rotation keys", ofhe.DeserializeEvalKeyMap, str(path), ofhe.BINARY)
        if not ok:
            raise CorruptDataError(f"OpenFHE could not read the rotation keys in {path.name}")
        install_rotation_keys(server, keymap, indices)
