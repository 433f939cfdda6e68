"""The deployment area's only contact with plans, keys and ciphertexts (the HTTP service and its
workers, and the Ray workers).

Everything the service needs from the rest of ckksnet goes through these few functions, so
that a change of the plan-artifact or key-bundle format touches this file alone:

- :func:`describe_plan`, :func:`load_plan`: the server plan artifact;
- :func:`bundle_file_allowed`, :func:`validate_bundle`: an uploaded evaluation-key folder,
  checked by its envelope headers and SHA-256 checksums without loading a key (the HTTP
  process never loads keys);
- :func:`ciphertext_keyset`: the key set a ciphertext envelope belongs to (checked on upload);
- :func:`load_server`, :func:`run_job`: in the worker process only.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ckksnet.errors import CkksnetError
from ckksnet.deploy.errors import InvalidKeysError

#: file names an evaluation-key folder may hold (``ckksnet.backend.keys.save_evaluation_keys``):
#: the envelopes and the raw key files they describe
BUNDLE_NAME = re.compile(r"^(?:(?:context|public_key|mult_keys|rotation_keys|bootstrap_keys)\.ckks"
                         r"|(?:mult_keys|bootstrap_keys|rotation_keys\.\d{1,4})\.bin)$")


@dataclass(frozen=True)
class BundleInfo:
    """What validation learned about a key bundle: its key set id (the context id every
    ciphertext of it carries), the preset name, and file name -> size in bytes."""

    keyset_id: str
    preset: str
    files: dict[str, int]


# ---------------------------------------------------------------- plans
def load_plan(path: str | os.PathLike):
    """The server plan artifact at ``path`` (``plan.save(folder)`` writes
    ``folder/server_plan.ckksnet``), validated. Raises :class:`ckksnet.SerializationError`."""
    from ckksnet.runtime import load_plan as load

    return load(path)


def describe_plan(plan) -> dict:
    """The facts about a plan the HTTP side needs: preset name and number of steps."""
    return {"preset": plan.preset.name, "steps": len(plan.steps)}


# ---------------------------------------------------------------- key bundles
def bundle_file_allowed(name: str) -> bool:
    """Whether ``name`` may be a member of an uploaded evaluation-key bundle."""
    return BUNDLE_NAME.match(name) is not None


def validate_bundle(folder: str | os.PathLike, preset: str | None = None) -> BundleInfo:
    """Check an uploaded evaluation-key folder without loading a key: every envelope, every key
    file's length and SHA-256 (read in 16 MiB blocks), one key set throughout, and (if given)
    the preset. Raises :class:`InvalidKeysError` carrying the reason."""
    from ckksnet.backend.keys import check_evaluation_keys

    try:
        info = check_evaluation_keys(folder)
    except CkksnetError as exc:
        raise InvalidKeysError(f"the key bundle is invalid: {exc}") from exc
    extra = sorted(set(p.name for p in Path(folder).iterdir()) - set(info.files))
    if extra:
        raise InvalidKeysError(f"the key bundle holds files no envelope describes: {', '.join(extra)}")
    if preset is not None and info.preset.name != preset:
        raise InvalidKeysError(f"the keys are for preset {info.preset.name!r}, this server's plan for {preset!r}")
    if not re.fullmatch(r"[0-9a-f]{16,128}", info.context_id):
        raise InvalidKeysError("the context's key set id is malformed")
    return BundleInfo(info.context_id, info.preset.name, dict(info.files))


# ---------------------------------------------------------------- ciphertexts
def ciphertext_keyset(data: bytes) -> str:
    """The key set id of a ciphertext envelope, after checking its kind, length and SHA-256.
    Raises :class:`InvalidKeysError` for anything that is not an intact ciphertext."""
    from ckksnet.backend.serialize import unpack

    try:
        _, header = unpack(data, "ciphertext")
    except CkksnetError as exc:
        raise InvalidKeysError(f"not an intact ckksnet ciphertext: {exc}") from exc
    return str(header["context_id"])


# ---------------------------------------------------------------- worker side
def load_server(plan, keys_folder: str | os.PathLike):
    """A :class:`ckksnet.Server` for ``plan`` with the evaluation keys in ``keys_folder``,
    loading exactly what the plan's schedule needs (MissingKeyError from the headers first)."""
    from ckksnet.backend.keys import load_evaluation_keys
    from ckksnet.runtime import Server

    sched = plan.schedule
    keys = load_evaluation_keys(keys_folder, rotations=sched.key_rotations, bootstrap=bool(sched.bootstrap_slots))
    return Server(plan, keys)


def run_job(server, data: bytes, on_step: Callable[[int, int, str], None]) -> bytes:
    """Encrypted inference of one ciphertext envelope; returns the output's envelope.
    ``on_step(i, n, name)`` is called as step i of n (1-based) starts."""
    from ckksnet.backend.serialize import ciphertext_from_bytes, ciphertext_to_bytes

    ct = ciphertext_from_bytes(server.ckks, data)
    out = server.run(ct, on_step=lambda i, n, name: on_step(i + 1, n, name))
    return ciphertext_to_bytes(server.ckks, out)
