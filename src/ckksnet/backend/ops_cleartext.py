"""The cleartext backend (``cleartext``): numpy slots, **no encryption**; the reference backend.

tinygrad keeps a Python device as the living definition of what a device does; this is ckksnet's.
It implements the whole :class:`ckksnet.core.backend.Backend` contract in one file: its
evaluator is the numpy slot evaluator (:class:`ckksnet.core.slots.SlotEvaluator`, which checks
every level decision as a ciphertext would), its "keys" are a key set id and the list of rotation
indices asked for (so a plan that needs a missing key is refused, as with OpenFHE), its files are
ckksnet envelopes. Nothing is secret and nothing is encrypted: every key set it makes warns
(:class:`CleartextWarning`). Use it to test a pipeline (compile -> keys -> encrypt -> run ->
decrypt, the HTTP service, Ray) fast, and as the model of a new backend's file (a GPU library's).
"""
from __future__ import annotations

import io
import os
import secrets
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ckksnet.backend.headers import preset_from_header
from ckksnet.core.backend import EVAL_DIR, SECRET_KEY_FILE, Backend, BundleInfo, KeySetView, register_backend
from ckksnet.core.envelope import header_field, load, pack, register_kind, save, unpack
from ckksnet.core.preset import Preset
from ckksnet.core.slots import SlotEvaluator, SlotVector
from ckksnet.core.tiles import join, tiles_of
from ckksnet.errors import (ContextMismatchError, CorruptDataError, MissingKeyError, SerializationError,
                            WrongTypeError)

KEYS_KIND = register_kind("cleartext_keys")
register_kind("ciphertext")
BUNDLE_FILE = "keys.ckks"


class CleartextWarning(UserWarning):
    """A cleartext key set: nothing is encrypted."""


@dataclass
class SealedVector(SlotVector):
    """A cleartext "ciphertext" as a client makes it: slots, levels and the key set's id (the
    server refuses another key set's, as with real ciphertexts)."""

    context_id: str = ""


class CleartextKeys:
    """The client's side: a key set id, the preset and the rotation indices made (no secret)."""

    backend = "cleartext"

    def __init__(self, preset: Preset, rotations: Iterable[int], bootstrap: bool, context_id: str | None = None):
        self.preset = preset
        self.context_id = context_id or secrets.token_hex(16)
        self.rotations = frozenset(int(k) % preset.slots for k in rotations) - {0}
        self.bootstrap = bool(bootstrap and preset.bootstrap)
        self.key_memory_gb: dict = {}

    def encrypt(self, values: np.ndarray, levels_left: int) -> SealedVector:
        return SealedVector(np.array(values, dtype=np.float64), int(levels_left), context_id=self.context_id)

    def decrypt(self, ct) -> np.ndarray:
        _check(ct, self.preset)
        return np.array(ct.data, dtype=np.float64)

    def levels_left(self, ct) -> int:
        _check(ct, self.preset)
        return int(ct.level)

    def evaluator(self) -> "CleartextEvaluator":
        return CleartextEvaluator(self.preset, self.context_id, self.rotations, self.bootstrap)


class CleartextEvaluator(SlotEvaluator):
    """The server's side: the slot evaluator (algorithms as written, no shortcuts) with the key
    set's facts."""

    def __init__(self, preset: Preset, context_id: str, rotations: frozenset, bootstrap: bool):
        super().__init__(preset.slots, preset.levels_after_bootstrap, fast=False)
        self.preset, self.context_id = preset, context_id
        self.rotations, self.has_bootstrap_keys = frozenset(rotations), bootstrap


def _check(ct, preset: Preset, context_id: str | None = None) -> None:
    if not isinstance(ct, SlotVector) or np.shape(ct.data) != (preset.slots,):
        raise WrongTypeError(f"not a cleartext ciphertext of {preset.slots} slots: {type(ct).__name__}")
    if context_id is not None and not (isinstance(ct, SealedVector) and ct.context_id == context_id):
        raise ContextMismatchError("the ciphertext belongs to another key set (or was not made by a client)")


def _fields(keys, bundle: bool) -> dict:
    return {"context_id": keys.context_id, "preset": keys.preset.name,
            "extra": {"preset": asdict(keys.preset),
                      "rotations": sorted(keys.rotations), "bootstrap": keys.bootstrap, "bundle": bundle}}


class Cleartext(Backend):
    """See the module docstring."""

    name = "cleartext"

    def bootstrap_rotations(self, preset: Preset) -> frozenset:
        return frozenset()  # bootstrapping needs no rotation keys here

    def make_keys(self, preset: Preset, rotations: Iterable[int], bootstrap: bool) -> CleartextKeys:
        warnings.warn("the cleartext backend encrypts nothing: use it to test a pipeline, never for data",
                      CleartextWarning, stacklevel=3)
        return CleartextKeys(preset, rotations, bootstrap)

    def key_set(self, evaluator) -> KeySetView:
        if not isinstance(evaluator, CleartextEvaluator):
            raise WrongTypeError(f"the cleartext backend's evaluation keys are a CleartextEvaluator, got "
                                 f"{type(evaluator).__name__}")
        preset = evaluator.preset
        return KeySetView(preset, evaluator.context_id, evaluator.rotations, evaluator.has_bootstrap_keys,
                          lambda ct: _check(ct, preset, evaluator.context_id))

    # ------------------------------------------------------------ files
    def save_keys(self, keys: CleartextKeys, folder: str | os.PathLike) -> Path:
        if not isinstance(keys, CleartextKeys):
            raise WrongTypeError(f"save_keys needs CleartextKeys, got {type(keys).__name__}")
        folder = Path(folder)
        (folder / EVAL_DIR).mkdir(parents=True, exist_ok=True)
        save(pack(KEYS_KIND, b"", _fields(keys, False)), folder / SECRET_KEY_FILE, mode=0o600)
        save(pack(KEYS_KIND, b"", _fields(keys, True)), folder / EVAL_DIR / BUNDLE_FILE)
        return folder

    def _read(self, path: Path, bundle: bool) -> CleartextKeys:
        if not path.is_file():
            raise SerializationError(f"{path}: no such file (a key folder written by ckksnet keygen)")
        _, header = unpack(load(path), KEYS_KIND)
        extra = header_field(header, "extra", dict, "cleartext keys header")
        if header_field(extra, "bundle", bool, "cleartext keys header") != bundle:
            raise CorruptDataError(f"{path}: a {'secret key' if bundle else 'bundle'} file in the wrong place")
        preset = preset_from_header(header_field(extra, "preset", dict, "cleartext keys header"))
        rotations = header_field(extra, "rotations", list, "cleartext keys header")
        if not all(type(k) is int for k in rotations):
            raise CorruptDataError(f"{path}: rotations must be integers")
        return CleartextKeys(preset, rotations, header_field(extra, "bootstrap", bool, "cleartext keys header"),
                             header_field(header, "context_id", str, "cleartext keys header"))

    def load_secret_keys(self, folder: str | os.PathLike) -> CleartextKeys:
        return self._read(Path(folder) / SECRET_KEY_FILE, bundle=False)

    def check_evaluation_keys(self, folder: str | os.PathLike) -> BundleInfo:
        folder = Path(folder)
        if (folder / SECRET_KEY_FILE).exists():
            raise SerializationError(f"{folder} holds {SECRET_KEY_FILE}: a server is given the evaluation keys only")
        keys = self._read(folder / BUNDLE_FILE, bundle=True)
        return BundleInfo(keys.context_id, keys.preset, tuple(sorted(keys.rotations)), keys.bootstrap,
                          {BUNDLE_FILE: (folder / BUNDLE_FILE).stat().st_size})

    def bundle_file_allowed(self, name: str) -> bool:
        return name == BUNDLE_FILE

    def load_evaluation_keys(self, folder: str | os.PathLike, rotations: Iterable[int] = (),
                             bootstrap: bool = False, memory_check: bool = True) -> CleartextEvaluator:
        info = self.check_evaluation_keys(folder)
        if bootstrap and not info.bootstrap:
            raise MissingKeyError(f"{folder} has no bootstrapping keys, and they are required")
        missing = sorted({int(k) % info.preset.slots for k in rotations} - set(info.rotations) - {0})
        if missing:
            raise MissingKeyError(f"{folder} has no rotation keys for indices {missing[:20]}")
        return CleartextEvaluator(info.preset, info.context_id, frozenset(info.rotations), info.bootstrap)

    # ------------------------------------------------------------ ciphertexts
    def ciphertext_to_bytes(self, keys, ct, role: str | None = None) -> bytes:
        parts = tiles_of(ct)
        for c in parts:
            _check(c, keys.preset)
        buf = io.BytesIO()
        np.save(buf, np.stack([c.data for c in parts]), allow_pickle=False)
        header = {"context_id": keys.context_id, "preset": keys.preset.name,
                  "extra": {"levels": [int(c.level) for c in parts]}} | ({"role": role} if role else {})
        return pack("ciphertext", buf.getvalue(), header)

    def ciphertext_from_bytes(self, keys, data: bytes):
        payload, header = unpack(data, "ciphertext")
        if header_field(header, "context_id", str, "ciphertext header") != keys.context_id:
            raise ContextMismatchError("the ciphertext belongs to another key set")
        extra = header_field(header, "extra", dict, "ciphertext header")
        levels = header_field(extra, "levels", list, "ciphertext header")
        try:
            arrays = np.load(io.BytesIO(payload), allow_pickle=False)
        except ValueError as exc:
            raise CorruptDataError(f"unreadable cleartext ciphertext: {exc}") from exc
        if arrays.shape != (len(levels), keys.preset.slots) or not all(type(v) is int for v in levels):
            raise CorruptDataError(f"the ciphertext holds {arrays.shape}, its header {len(levels)} tiles")
        parts = [SealedVector(a.astype(np.float64), lv, context_id=keys.context_id) for a, lv in zip(arrays, levels)]
        return join(parts)


register_backend(Cleartext())
