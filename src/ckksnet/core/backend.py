"""The backend interface: what a CKKS library gives ckksnet, declared once and found by name.

A backend has two halves:

* the **evaluator** (:class:`ckksnet.core.evaluator.Evaluator`): what kernels call on values;
  the server's side of a key set, holding no secret key;
* the **key half** (:class:`Backend`, below): making a key set for a client, key files and
  evaluation-key bundles, ciphertext bytes, and a :class:`KeySet` view of what an evaluator's
  keys hold, which the runtime checks a plan against.

A backend is one file, ``ckksnet/backend/ops_<name>.py`` (tinygrad's ``runtime/ops_<device>.py``),
that subclasses :class:`Backend` and registers an instance with :func:`register_backend`.
:func:`get_backend` imports that file the first time its name is asked for, so nothing else names a
backend's module: plans record their backend's name (``Plan.backend``), and the runtime, the
compiler and the deployment code reach the backend through this door. A backend outside the
package registers itself on import (``import my_backend`` before ``get_backend("mine")``).

Shipped: ``openfhe`` (:mod:`ckksnet.backend.ops_openfhe`, the real one) and ``cleartext``
(:mod:`ckksnet.backend.ops_cleartext`: numpy slots, no encryption; the reference every other
backend is tested against, and the smallest example of this contract).

Folder layout every backend's :meth:`Backend.save_keys` follows (so that tools can check it
without knowing the backend): ``KEYDIR/secret_key.ckks`` (owner-only) and ``KEYDIR/eval/``, the
evaluation-key bundle shipped to a server (never a secret key).
"""
from __future__ import annotations

import importlib
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, runtime_checkable

import numpy as np

from ckksnet.core.envelope import header_field, register_kind, unpack
from ckksnet.core.evaluator import Evaluator
from ckksnet.core.preset import Preset
from ckksnet.errors import BackendError, UnknownBackendError

SECRET_KEY_FILE = "secret_key.ckks"  #: the secret key's file in a key folder, mode 0o600
EVAL_DIR = "eval"  #: the evaluation-key bundle's folder in a key folder

Ciphertext = Any  #: a ciphertext as the backend represents it
#: the envelope kind of every backend's ciphertext files (header field ``context_id``: the key set)
CIPHERTEXT_KIND = register_kind("ciphertext")


@runtime_checkable
class KeySet(Protocol):
    """What an evaluator's evaluation keys hold: the view :class:`ckksnet.runtime.Server` checks a
    plan against. ``rotations``: rotation indices (mod slots) whose keys are present;
    ``bootstrap``: bootstrapping keys present."""

    preset: Preset
    context_id: str
    rotations: frozenset
    bootstrap: bool

    def check_ciphertext(self, ct: Ciphertext) -> None:
        """Raise :class:`ckksnet.errors.WrongTypeError` (not this backend's ciphertext) or
        :class:`ckksnet.errors.ContextMismatchError` (another key set's)."""


@dataclass(frozen=True)
class KeySetView:
    """A :class:`KeySet` made of its facts and a ciphertext check (what a backend's
    :meth:`Backend.key_set` may return)."""

    preset: Preset
    context_id: str
    rotations: frozenset
    bootstrap: bool
    check: Any = None  #: ct -> None, raising as :meth:`KeySet.check_ciphertext`

    def check_ciphertext(self, ct: Ciphertext) -> None:
        if self.check is not None:
            self.check(ct)


@runtime_checkable
class SecretKeys(Protocol):
    """The client's side of a key set: holds the secret key; encrypts and decrypts.
    ``backend``: its backend's name; ``key_memory_gb``: what making the keys cost, where measured
    (else {})."""

    backend: str
    preset: Preset
    context_id: str
    key_memory_gb: dict

    def levels_left(self, ct: Ciphertext) -> int:
        """Levels ``ct`` can still spend (the client tells an encrypted input from a run's output)."""

    def encrypt(self, values: np.ndarray, levels_left: int) -> Ciphertext:
        """``slots`` float64 values -> a ciphertext with ``levels_left`` levels."""

    def decrypt(self, ct: Ciphertext) -> np.ndarray:
        """A ciphertext -> its ``slots`` float64 values."""

    def evaluator(self) -> Evaluator:
        """The server's view of these keys in this process: evaluation keys only."""


@dataclass(frozen=True)
class BundleInfo:
    """What an evaluation-key bundle holds, learnt from its headers and checksums without
    loading a key: key set id, preset, rotation indices (mod slots), whether it can bootstrap,
    and file name -> bytes."""

    context_id: str
    preset: Preset
    rotations: tuple = ()
    bootstrap: bool = False
    files: dict = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(self.files.values())


class Backend(ABC):
    """The key half of a backend (the evaluator half is :class:`Evaluator`). One instance per
    backend, registered under :attr:`name`. Every method raises :class:`ckksnet.CkksnetError`
    kinds for bad input (files: ``SerializationError``, ``CorruptDataError``,
    ``ContextMismatchError``, ``MissingKeyError``), never a bare exception."""

    #: the name plans record and :func:`get_backend` finds
    name: str = ""

    # ------------------------------------------------------------ planning (no keys)
    @abstractmethod
    def bootstrap_rotations(self, preset: Preset) -> frozenset:
        """Rotation indices (mod slots) whose keys bootstrapping key generation makes anyway, so
        the compiler plans the kernels' rotations around them (empty: none, or no bootstrapping)."""

    def bootstrap_key_count(self, preset: Preset) -> int:
        """Key-switching keys bootstrapping makes beyond relinearization (for ``ckksnet plan``'s
        key memory); 0 if unknown."""
        return 0

    def key_memory_gib(self, preset: Preset, rotation_keys: int, bootstrap: bool) -> float | None:
        """GiB that making a key set takes at its peak (``rotation_keys`` of the plan's own
        beyond bootstrapping's), checked before key generation; None where unknown."""
        return None

    # ------------------------------------------------------------ the machine
    def set_threads(self, n: int) -> None:
        """Compute with ``n`` threads in this process from now on (an OpenMP library: its thread
        count; a library not loaded yet: what it will read when it loads). By default nothing:
        a backend without threads of its own. :mod:`ckksnet.core.threads` chooses ``n``."""

    def thread_report(self) -> dict:
        """What the backend's threading library says it uses, for reports (e.g. OpenMP's thread
        count); {} where nothing is loaded or known."""
        return {}

    # ------------------------------------------------------------ a key set
    @abstractmethod
    def make_keys(self, preset: Preset, rotations: Iterable[int], bootstrap: bool) -> SecretKeys:
        """A fresh key set: secret, public, relinearization keys, rotation keys for ``rotations``
        (mod slots) and, with ``bootstrap``, bootstrapping keys."""

    @abstractmethod
    def key_set(self, evaluator: Evaluator) -> KeySet:
        """The :class:`KeySet` view of an evaluator of this backend (``WrongTypeError`` for an
        object that is not one; a secret-key holder is refused the same way)."""

    # ------------------------------------------------------------ files
    @abstractmethod
    def save_keys(self, keys: SecretKeys, folder: str | os.PathLike) -> Path:
        """Write the whole key set to ``folder`` (the secret key owner-only, the bundle in
        ``folder/eval``). Returns ``folder``."""

    @abstractmethod
    def load_secret_keys(self, folder: str | os.PathLike) -> SecretKeys:
        """The client's keys back from ``folder`` (written by :meth:`save_keys`)."""

    @abstractmethod
    def check_evaluation_keys(self, folder: str | os.PathLike) -> BundleInfo:
        """Validate a bundle without loading a key (an upload handler may not)."""

    @abstractmethod
    def bundle_file_allowed(self, name: str) -> bool:
        """Whether ``name`` may be a member of an uploaded bundle."""

    @abstractmethod
    def load_evaluation_keys(self, folder: str | os.PathLike, rotations: Iterable[int] = (),
                             bootstrap: bool = False, memory_check: bool = True) -> Evaluator:
        """An evaluator with the bundle's keys; :class:`MissingKeyError` (from the headers, before
        a key is read) if it lacks a rotation in ``rotations`` or, with ``bootstrap``,
        bootstrapping keys. Never opens a secret key."""

    def bundle_identity(self, folder: str | os.PathLike) -> tuple[str, Preset, int]:
        """(key set id, preset, bytes on disk) of a bundle, as cheaply as the backend can (a
        dispatcher that never loads keys uses it); by default :meth:`check_evaluation_keys`."""
        info = self.check_evaluation_keys(folder)
        return info.context_id, info.preset, info.bytes

    def load_memory_gib(self, bundle_bytes: int) -> float:
        """GiB a process needs to load a bundle of ``bundle_bytes`` and run with it."""
        return round(bundle_bytes / 2**30 + 0.5, 2)

    # ------------------------------------------------------------ ciphertexts
    @abstractmethod
    def ciphertext_to_bytes(self, keys: SecretKeys | Evaluator, ct: Ciphertext, role: str | None = None) -> bytes:
        """A ciphertext, or the :class:`~ckksnet.core.tiles.Tiles` of one tensor over several, as
        an envelope of kind :data:`CIPHERTEXT_KIND` whose header holds ``context_id`` (the key
        set) and ``role``: "input" (a client's encryption) or "output" (a server's run). Readers
        check both; a file without ``role`` is read as one written before roles existed, so a
        backend must write it."""

    @abstractmethod
    def ciphertext_from_bytes(self, keys: SecretKeys | Evaluator, data: bytes) -> Ciphertext:
        """The inverse of :meth:`ciphertext_to_bytes`, for ``keys``' key set only."""


def ciphertext_role(data: bytes) -> str | None:
    """What a ciphertext envelope says it is: "input", "output", or None (a file written before
    ciphertexts recorded it). Raises the envelope's errors."""
    _, header = unpack(data, CIPHERTEXT_KIND)
    return header_field(header, "role", str, "ciphertext header") if "role" in header else None


def ciphertext_keyset(data: bytes) -> str:
    """The key set id (``context_id``) of a ciphertext envelope of any backend, after the
    envelope's checks (kind, lengths, SHA-256); raises their :class:`ckksnet.errors.SerializationError`
    kinds. No backend is loaded."""
    _, header = unpack(data, CIPHERTEXT_KIND)
    return header_field(header, "context_id", str, "ciphertext header")


# ---------------------------------------------------------------- the registry
_BACKENDS: dict[str, Backend] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def valid_backend_name(name: object) -> bool:
    """Whether ``name`` is a well-formed backend name (a lower-case word), registered or not."""
    return isinstance(name, str) and _NAME.match(name) is not None


ROLES = ("input", "output")  #: what a ciphertext file may say it is


def register_backend(backend: Backend) -> Backend:
    """Register ``backend`` under ``backend.name``. Raises :class:`BackendError` for anything but a
    :class:`Backend` with a lower-case name, and for a second backend of a name already taken
    (re-registering the same class, as a reloaded module does, replaces it)."""
    if not isinstance(backend, Backend) or not _NAME.match(backend.name or ""):
        raise BackendError(f"register_backend takes a Backend instance with a lower-case name, got {backend!r}")
    present = _BACKENDS.get(backend.name)
    if present is not None and type(present).__qualname__ != type(backend).__qualname__:
        raise BackendError(f"a backend named {backend.name!r} is registered already ({type(present).__module__}."
                           f"{type(present).__qualname__}); give yours another name")
    _BACKENDS[backend.name] = backend
    return backend


#: modules to import (comma-separated) when a backend name is not found: how a backend outside
#: ckksnet reaches the command line, ``ckksnet serve`` and Ray workers (which inherit it)
MODULES_ENV = "CKKSNET_BACKEND_MODULES"


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``, importing ``ckksnet.backend.ops_<name>`` on first use,
    then the modules named in ``$CKKSNET_BACKEND_MODULES``. Raises :class:`UnknownBackendError`
    naming the backends there are."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise UnknownBackendError(f"a backend name is a lower-case word, got {name!r}")
    if name not in _BACKENDS:
        try:
            importlib.import_module(f"ckksnet.backend.ops_{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"ckksnet.backend.ops_{name}":
                raise
    for module in filter(None, os.environ.get(MODULES_ENV, "").split(",")) if name not in _BACKENDS else ():
        try:
            importlib.import_module(module.strip())
        except ImportError as exc:
            raise UnknownBackendError(f"${MODULES_ENV} names {module.strip()!r}, which cannot be imported: {exc}") from exc
    if name not in _BACKENDS:
        raise UnknownBackendError(f"no backend {name!r}; there are: {', '.join(backend_names())} (a backend outside "
                                  f"ckksnet registers itself when its module is imported: import it first, or name "
                                  f"the module in ${MODULES_ENV} for the command line, ckksnet serve and Ray)")
    return _BACKENDS[name]


def loaded_backends() -> list[Backend]:
    """The backends registered so far in this process (those whose module was imported)."""
    return list(_BACKENDS.values())


def backend_names() -> list[str]:
    """Every backend registered or shipped (``ckksnet/backend/ops_*.py``), sorted."""
    shipped = {p.stem[4:] for p in (Path(__file__).parents[1] / "backend").glob("ops_*.py")}
    return sorted(shipped | set(_BACKENDS))
