"""The deployment area's only contact with plans, keys and ciphertexts (the HTTP service and its
workers, the Ray driver and workers, ``remote.py``).

Everything the deployment code needs from the rest of ckksnet goes through these few functions,
and they reach keys and ciphertexts only through the plan's backend
(:func:`ckksnet.core.backend.get_backend`, by the name the plan records), so that a new backend
or a change of a key-bundle format touches neither this file nor its callers:

- :func:`describe_plan`, :func:`load_plan`: the server plan artifact;
- :func:`bundle_file_allowed`, :func:`validate_bundle`, :func:`bundle_identity`: an uploaded
  evaluation-key folder, checked by its headers and checksums without loading a key (the HTTP
  process never loads keys, nor the OpenFHE module);
- :func:`ciphertext_keyset`: the key set a ciphertext envelope belongs to (checked on upload);
- :func:`load_server`, :func:`run_job`: in the worker process only.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ckksnet.core.backend import get_backend
from ckksnet.core.backend import ciphertext_keyset as backend_ciphertext_keyset
from ckksnet.deploy.errors import InvalidKeysError
from ckksnet.errors import CkksnetError


@dataclass(frozen=True)
class UploadedKeyset:
    """What validation learned about an uploaded key bundle: its key set id (the context id
    every ciphertext of it carries), the preset name, and file name -> size in bytes."""

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
    """The facts about a plan the HTTP side needs: preset name, backend name, number of steps.
    Raises :class:`ckksnet.errors.UnknownBackendError` for a plan whose backend this process
    lacks (a service refuses to start with it)."""
    get_backend(plan.backend)
    return {"preset": plan.preset.name, "backend": plan.backend, "steps": len(plan.steps)}


# ---------------------------------------------------------------- key bundles
def bundle_file_allowed(name: str, backend: str) -> bool:
    """Whether ``name`` may be a member of an uploaded evaluation-key bundle of ``backend``."""
    return get_backend(backend).bundle_file_allowed(name)


def validate_bundle(folder: str | os.PathLike, backend: str, preset: str | None = None) -> UploadedKeyset:
    """Check an uploaded evaluation-key folder without loading a key (every envelope, every key
    file's length and checksum, one key set throughout) and, if given, its preset. Raises
    :class:`InvalidKeysError` carrying the reason."""
    checker = get_backend(backend)  # an unknown backend is the plan's problem, not the keys'
    try:
        info = checker.check_evaluation_keys(folder)
    except CkksnetError as exc:
        raise InvalidKeysError(f"the key bundle is invalid: {exc}") from exc
    extra = sorted(set(p.name for p in Path(folder).iterdir()) - set(info.files))
    if extra:
        raise InvalidKeysError(f"the key bundle holds files no envelope describes: {', '.join(extra)}")
    if preset is not None and info.preset.name != preset:
        raise InvalidKeysError(f"the keys are for preset {info.preset.name!r}, this server's plan for {preset!r}")
    if not re.fullmatch(r"[0-9a-f]{16,128}", info.context_id):
        raise InvalidKeysError("the context's key set id is malformed")
    return UploadedKeyset(info.context_id, info.preset.name, dict(info.files))


def bundle_identity(folder: str | os.PathLike, backend: str):
    """(key set id, preset, bytes on disk) of a bundle, as cheaply as its backend can (no key
    file read): what a dispatcher needs. Raises the backend's errors for a damaged bundle."""
    return get_backend(backend).bundle_identity(folder)


def load_memory_gib(bundle_bytes: int, backend: str) -> float:
    """GiB a worker needs to load a bundle of ``bundle_bytes`` and run with it."""
    return get_backend(backend).load_memory_gib(bundle_bytes)


# ---------------------------------------------------------------- ciphertexts
def ciphertext_keyset(data: bytes, service: bool = True) -> str:
    """The key set id of a ciphertext envelope, after checking its kind, length and checksum.
    Raises :class:`InvalidKeysError` for anything that is not an intact ciphertext (the HTTP
    service's 422), or with ``service=False`` the envelope's own error (``CorruptDataError``, ...)."""
    try:
        return backend_ciphertext_keyset(data)
    except CkksnetError as exc:
        if not service:
            raise
        raise InvalidKeysError(f"not an intact ckksnet ciphertext: {exc}") from exc


# ---------------------------------------------------------------- worker side
def load_server(plan, keys_folder: str | os.PathLike):
    """A :class:`ckksnet.runtime.Server` for ``plan`` with the evaluation keys in ``keys_folder``,
    loading exactly what the plan's schedule needs (MissingKeyError from the headers first)."""
    from ckksnet.runtime import Server

    return Server.load(plan, keys_folder)


def run_job(server, data: bytes, on_step: Callable[[int, int, str], None]) -> bytes:
    """Encrypted inference of one ciphertext envelope; returns the output's envelope.
    ``on_step(i, n, name)`` is called as step i of n (1-based) starts."""
    ct = server.ciphertext_from_bytes(data)
    out = server.run(ct, on_step=lambda i, n, name: on_step(i + 1, n, name))
    return server.ciphertext_to_bytes(out)
