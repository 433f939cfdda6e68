"""Evaluation-key bundles checked from their headers and checksums, without OpenFHE.

A bundle (``KEYDIR/eval``, written by :func:`ckksnet.backend.keys.save_evaluation_keys`) holds
small envelope files (``context.ckks``, ``public_key.ckks``, ``mult_keys.ckks``,
``rotation_keys.ckks``, ``bootstrap_keys.ckks``) and the raw key files they describe
(``*.bin``: name, length and SHA-256 in the envelope's ``files`` field). Everything here reads
only those: an upload handler or a dispatcher validates a bundle without loading the OpenFHE
module, and a loader learns from the headers what is missing before a key byte is read.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from ckksnet.backend.headers import bootstrap_key_rotations, preset_from_header, rotation_groups, unpack_key
from ckksnet.core.backend import EVAL_DIR, SECRET_KEY_FILE, BundleInfo
from ckksnet.core.envelope import check_attached, header_field, regular_file
from ckksnet.core.preset import Preset
from ckksnet.errors import CorruptDataError, MissingKeyError, SerializationError

#: the evaluation-key envelopes that may be in a bundle, in load order (bootstrapping keys
#: before rotation keys, the order a client makes them in)
OPTIONAL_PARTS = ("mult_keys", "bootstrap_keys", "rotation_keys")
REQUIRED_FILES = ("context.ckks", "public_key.ckks", "mult_keys.ckks")
#: file names a bundle may hold: the envelopes and the raw key files they describe
BUNDLE_NAME = re.compile(r"^(?:(?:context|public_key|mult_keys|rotation_keys|bootstrap_keys)\.ckks"
                         r"|(?:mult_keys|bootstrap_keys|rotation_keys\.\d{1,4})\.bin)$")


#: resident memory of a loaded key set = KEY_MEMORY_FACTOR x its files on disk + RUN_MEMORY_GIB
#: (measured at the secure preset: 7.8 GiB of files, 12.3 GiB resident once loaded, 13.1 GiB at a
#: run's peak); Ray workers declare it, loaders check it
KEY_MEMORY_FACTOR = 1.7
RUN_MEMORY_GIB = 0.5


def load_memory_gib(key_bytes: int) -> float:
    """GiB a process needs to load an evaluation-key folder of ``key_bytes`` and run with it."""
    return round(KEY_MEMORY_FACTOR * key_bytes / 2**30 + RUN_MEMORY_GIB, 2)


def read_envelope(folder: Path, name: str) -> bytes:
    """A small envelope file of a key folder (a regular file; :class:`SerializationError` if absent)."""
    path = folder / name
    if not os.path.lexists(path):
        raise SerializationError(f"{path}: no such file")
    regular_file(path, str(path))
    return path.read_bytes()


def check_evaluation_keys(folder: str | os.PathLike) -> BundleInfo:
    """Validate a bundle without loading a key (for a process that must not: an upload
    handler): every envelope, every payload file's length and SHA-256 (read in 16 MiB blocks),
    one key set throughout. Same errors as :func:`load_evaluation_keys`."""
    folder = bundle_folder(folder)
    require_files(folder)
    payload, header = unpack_key(read_envelope(folder, "context.ckks"), "context")
    preset = preset_from_header(header_field(header["extra"], "preset", dict, "context header extra"))
    cid = header["context_id"]
    unpack_key(read_envelope(folder, "public_key.ckks"), "public_key", cid)
    headers = part_headers(folder, preset, cid)
    files = {}
    for kind, head in headers.items():
        for entry in attached_entries(head, kind):
            files[check_attached(folder, entry, kind).name] = entry["length"]
    files.update({f"{kind}.ckks": (folder / f"{kind}.ckks").stat().st_size
                  for kind in ("context", "public_key", *headers)})
    return BundleInfo(cid, preset, tuple(sorted(_available_rotations(preset, headers))),
                       "bootstrap_keys" in headers, files)


def evaluation_keys_id(folder: str | os.PathLike) -> tuple[str, Preset, int]:
    """Key set id, preset and total bytes on disk of the bundle ``folder``, from its context
    envelope alone (cheap: no key file hashed or read; a driver that only dispatches work
    uses it). Same errors as :func:`check_evaluation_keys` for a missing or damaged context."""
    folder = bundle_folder(folder)
    require_files(folder)
    _, header = unpack_key(read_envelope(folder, "context.ckks"), "context")
    preset = preset_from_header(header_field(header["extra"], "preset", dict, "context header extra"))
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return header["context_id"], preset, size


def bundle_folder(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise SerializationError(f"{folder}: no such folder of evaluation keys")
    if os.path.lexists(folder / SECRET_KEY_FILE):  # lexists: a stat, never an open
        hint = f" (use {folder / EVAL_DIR})" if (folder / EVAL_DIR).is_dir() else ""
        raise SerializationError(f"{folder} holds {SECRET_KEY_FILE}: a server is given the evaluation "
                                 f"keys only{hint}")
    return folder


def require_files(folder: Path) -> None:
    missing = [name for name in REQUIRED_FILES if not os.path.lexists(folder / name)]
    if missing:
        raise SerializationError(f"{folder}: {', '.join(missing)} required (an evaluation-key "
                                 "folder written by save_evaluation_keys)")


def part_headers(folder: Path, preset: Preset, context_id: str) -> dict[str, dict]:
    """The headers of the evaluation-key envelopes present (small files; payloads not read)."""
    headers = {}
    for kind in OPTIONAL_PARTS:
        if os.path.lexists(folder / f"{kind}.ckks"):
            payload, header = unpack_key(read_envelope(folder, f"{kind}.ckks"), kind, context_id)
            if payload or header["preset"] != preset.name:
                raise CorruptDataError(f"{kind}.ckks: expected an empty payload of preset {preset.name!r}")
            headers[kind] = header
    return headers


def attached_entries(header: dict, kind: str, count: int | None = None) -> list:
    entries = header_field(header, "files", list, f"{kind} header")
    if count is not None and len(entries) != count:
        raise CorruptDataError(f"{kind} header lists {len(entries)} payload files, expected {count}")
    return entries


def _available_rotations(preset: Preset, headers: dict[str, dict]) -> set[int]:
    have = set()
    if "rotation_keys" in headers:
        have.update(k % preset.slots for group in rotation_groups(headers["rotation_keys"]) for k in group)
    if "bootstrap_keys" in headers:
        have |= bootstrap_key_rotations(headers["bootstrap_keys"], preset)
    return have - {0}


def require_keys(folder: Path, preset: Preset, headers: dict[str, dict], rotations: Iterable[int],
             bootstrap: bool) -> None:
    """MissingKeyError, from the headers alone, if the bundle lacks a key the caller needs."""
    if bootstrap and "bootstrap_keys" not in headers:
        raise MissingKeyError(f"{folder} has no bootstrapping keys (bootstrap_keys.ckks), and they are required")
    have, slots = _available_rotations(preset, headers), preset.slots
    missing = sorted({int(k) for k in rotations if int(k) % slots and int(k) % slots not in have})
    if missing:
        names = [str(k) if k == k % slots else f"{k} (= {k % slots} mod {slots})" for k in missing]
        raise MissingKeyError(f"{folder} has no rotation keys for indices {', '.join(names)}; "
                              "the client must generate and ship them")


