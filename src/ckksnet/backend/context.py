"""Client and server sides of a CKKS context, over OpenFHE.

* :class:`CkksClient` generates and owns the secret key: it encrypts, decrypts and makes the
  evaluation keys (relinearization, rotations, bootstrapping).
* :class:`CkksServer` holds the context, the public key and evaluation keys only. It computes
  on ciphertexts and has no way to decrypt.

Ciphertexts are OpenFHE ``Ciphertext`` objects. Every level figure here is "levels left": how
many more rescales (multiplications) a ciphertext can take before it must be bootstrapped.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
from ckksnet.backend.ofhe import openfhe as ofhe

from ckksnet.backend.headers import context_id_for, rotations_of_automorphisms
from ckksnet.core.evaluator import Conformance, register_evaluator
from ckksnet.core.memory import tune_allocator
from ckksnet.backend.presets import build_crypto_context
from ckksnet.core.preset import Preset, get_preset
from ckksnet.layout.rotations import compose_rotations
from ckksnet.errors import (ContextMismatchError, DecryptionError, InputError, LevelError, MissingKeyError,
                            NonFiniteError, RangeError, ShapeError, WrongTypeError)

Ciphertext = ofhe.Ciphertext


def require_type(obj, types: type | tuple[type, ...], what: str, hint: str = ""):
    """``obj`` if it is an instance of ``types``, else :class:`WrongTypeError` naming what was
    expected and what came (``hint``: what to pass instead)."""
    if not isinstance(obj, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise WrongTypeError(f"{what} must be a {names}, got {_type_name(obj)}{'; ' + hint if hint else ''}")
    return obj


def _type_name(obj) -> str:
    if isinstance(obj, np.ndarray):
        return f"a numpy array of shape {obj.shape} ({obj.dtype})"
    return f"a {type(obj).__module__}.{type(obj).__name__}" if type(obj).__module__ != "builtins" \
        else f"a {type(obj).__name__}"


def _int(value, what: str) -> int:
    """``value`` as an int if it is an integer (not a bool), else :class:`WrongTypeError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise WrongTypeError(f"{what} must be an int, got {_type_name(value)}")
    return int(value)


def _real_vector(values, what: str) -> np.ndarray:
    """``values`` as float64, or WrongTypeError (a ciphertext, strings, objects, complex)."""
    if isinstance(values, ofhe.Ciphertext):
        raise WrongTypeError(f"{what} must be real numbers, got a ciphertext")
    try:
        arr = np.asarray(values)
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"dtype {arr.dtype}")
        return arr.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        raise WrongTypeError(f"{what} must be real numbers, got {type(values).__name__} ({exc})") from exc


@dataclass
class KeyInventory:
    """Which evaluation keys are present in OpenFHE's key store for one key set.

    A client and the in-process server made from it share one inventory, as they share the store.
    """

    rotations: set[int] = field(default_factory=set)  # rotation indices, taken mod slots
    # index mod slots -> the amount OpenFHE's key is for, where they differ (bootstrapping's keys
    # are made for amounts up to N/2; with sparse slots, k and k + slots rotate alike)
    raw: dict[int, int] = field(default_factory=dict)
    bootstrap: bool = False
    bootstrap_ready: bool = False  # EvalBootstrapSetup done in this process
    # automorphism indices of the bootstrapping keys (what SerializeEvalBootstrapKey writes),
    # recorded when they are made or loaded, so that a key file can list what it holds
    bootstrap_automorphisms: list[int] = field(default_factory=list)


class CkksContext:
    """What both sides share: the preset, the OpenFHE context and the public key. No secret key."""

    def __init__(self, preset: Preset, cc: "ofhe.CryptoContext", public_key: "ofhe.PublicKey"):
        tune_allocator()
        self.preset = preset
        self.cc = cc
        self.public_key = public_key
        self.key_tag: str = public_key.GetKeyTag()
        self.keys = KeyInventory()
        #: key switches done by our kernels (bootstrapping's own are not counted): "rotations"
        #: (hoisted or chained) and "relinearizations" (ciphertext products); for profiles
        self.key_switches = {"rotations": 0, "relinearizations": 0}

    @property
    def rotations(self) -> set[int]:
        """Rotation indices (mod ``slots``) whose keys are present."""
        return self.keys.rotations

    @property
    def has_bootstrap_keys(self) -> bool:
        return self.keys.bootstrap

    @property
    def slots(self) -> int:
        return self.preset.slots

    @property
    def context_id(self) -> str:
        """Identifies this key set: the preset name plus OpenFHE's tag of the secret key."""
        return context_id_for(self.preset.name, self.key_tag)

    def automorphism_indices(self) -> set[int]:
        """Automorphism indices of every key present in OpenFHE's store for this key set."""
        return set(self.cc.GetExistingEvalAutomorphismKeyIndices(self.key_tag))

    def adopt_bootstrap_rotations(self) -> int:
        """Register the rotation keys that bootstrapping brought (OpenFHE makes ~60 of them at
        2^14 slots), so kernels reuse them instead of generating their own. Returns how many."""
        found = 0
        for idx, r in rotations_of_automorphisms(self.automorphism_indices(), self.preset.ring_dim,
                                                 self.slots).items():
            if idx not in self.rotations:
                self.rotations.add(idx)
                if r != idx:
                    self.keys.raw[idx] = r
                found += 1
        return found

    def automorphism_key_count(self) -> int:
        """Automorphism keys present for this key set: every rotation key (bootstrapping's and
        the kernels'), the conjugation key and any other automorphism bootstrapping made."""
        return len(self.cc.GetExistingEvalAutomorphismKeyIndices(self.key_tag))

    def key_switching_key_bytes(self) -> int:
        """Size of one key-switching key, bytes: the serialized relinearization key. A rotation
        key has the same shape (dnum digits over the extended modulus), so N keys take about N
        times this."""
        return len(ofhe.SerializeEvalMultKeyString(ofhe.BINARY, self.key_tag))

    def prepare_bootstrap(self) -> None:
        """Precompute the bootstrapping transforms (no keys involved; done once per process)."""
        if not self.preset.bootstrap:
            raise MissingKeyError(f"preset {self.preset.name!r} has bootstrapping off")
        if not self.keys.bootstrap_ready:
            self.cc.EvalBootstrapSetup(list(self.preset.level_budget), [0, 0], self.slots)
            self.keys.bootstrap_ready = True

    # ---------------------------------------------------------------- checks
    def check_vector(self, values: np.ndarray | Sequence[float], length: int | None = None) -> np.ndarray:
        """Validate a real vector for encoding: 1-D, at most ``slots`` long, finite, |x| <= max_abs."""
        arr = _real_vector(values, "a vector to encrypt")
        if arr.ndim != 1:
            raise ShapeError(f"expected a 1-D vector, got shape {arr.shape}")
        limit = self.slots if length is None else length
        if arr.size == 0 or arr.size > limit:
            raise ShapeError(f"vector length {arr.size} must be between 1 and {limit} slots")
        if not np.all(np.isfinite(arr)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise NonFiniteError(f"vector holds {bad} NaN or infinite value(s)")
        peak = float(np.max(np.abs(arr)))
        if peak > self.preset.max_abs:
            raise RangeError(f"max |value| {peak:.4g} exceeds the preset's safe magnitude "
                             f"{self.preset.max_abs:g}; scale the input first")
        return arr

    def check_ciphertext(self, ct: Ciphertext) -> Ciphertext:
        """Reject anything but a ciphertext (:class:`WrongTypeError`) and ciphertexts made under
        another key set (:class:`ContextMismatchError`: they would decrypt to garbage)."""
        if not isinstance(ct, ofhe.Ciphertext):
            hint = " (encrypt it first)" if isinstance(ct, (np.ndarray, list, tuple)) else ""
            raise WrongTypeError(f"expected an OpenFHE Ciphertext, got {_type_name(ct)}{hint}")
        if ct.GetKeyTag() != self.key_tag:
            raise ContextMismatchError("ciphertext was encrypted under another key set "
                                       f"(key tag {ct.GetKeyTag()[:12]}..., expected {self.key_tag[:12]}...)")
        return ct

    def levels_left(self, ct: Ciphertext) -> int:
        """Levels a ciphertext can still spend (an unrescaled product counts as having spent one)."""
        if not isinstance(ct, ofhe.Ciphertext):
            raise WrongTypeError(f"expected an OpenFHE Ciphertext, got {_type_name(ct)}")
        return self.preset.depth - ct.GetLevel() - (ct.GetNoiseScaleDeg() - 1)

    def require_levels(self, ct: Ciphertext, needed: int, what: str = "operation") -> None:
        """Raise :class:`LevelError` unless ``ct`` has at least ``needed`` levels left."""
        have = self.levels_left(ct)
        if have < needed:
            raise LevelError(f"{what} needs {needed} level(s); the ciphertext has {have} left "
                             "(bootstrap it first)")

    # ---------------------------------------------------------------- encoding
    def _plain_vector(self, values: np.ndarray | Sequence[float]) -> np.ndarray:
        """Checks for plaintext vectors: 1-D, 1..slots values, finite (they may exceed max_abs)."""
        arr = _real_vector(values, "a plaintext vector")
        if arr.ndim != 1 or not 0 < arr.size <= self.slots:
            raise ShapeError(f"plaintext must be 1-D with 1..{self.slots} values, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise NonFiniteError("plaintext holds NaN or infinite values")
        return arr

    def encode(self, values: np.ndarray | Sequence[float], levels_left: int | None = None) -> "ofhe.Plaintext":
        """Encode a real vector as a plaintext with ``levels_left`` levels (default: fresh)."""
        level = 0 if levels_left is None else self.preset.depth - _int(levels_left, "levels_left")
        return self.cc.MakeCKKSPackedPlaintext(self._plain_vector(values), 1, level, None, self.slots)

    def encode_for(self, values: np.ndarray | Sequence[float], ct: Ciphertext) -> "ofhe.Plaintext":
        """Encode a plaintext at ``ct``'s RNS level, ready to add to or multiply with it.
        (OpenFHE matches the scale. An unrescaled product has spent a level but still sits at
        its old RNS level, so a level derived from levels_left would be one too deep.)"""
        return self.cc.MakeCKKSPackedPlaintext(self._plain_vector(values), 1, ct.GetLevel(), None, self.slots)

    def encrypt(self, values: np.ndarray | Sequence[float], levels_left: int | None = None) -> Ciphertext:
        """Encrypt a real vector (public key) into ``slots`` slots, zero-padded.

        ``levels_left``: encrypt at a lower level (default: all ``preset.depth`` levels); a
        ciphertext that needs few levels is smaller and faster to compute on.
        """
        arr = self.check_vector(values)
        if levels_left is not None:
            _int(levels_left, "levels_left")
        if levels_left is not None and not 0 <= levels_left <= self.preset.depth:
            raise LevelError(f"levels_left must be within 0..{self.preset.depth}, got {levels_left}")
        return self.cc.Encrypt(self.public_key, self.encode(arr, levels_left))


def _is_scalar(b) -> bool:
    """A real number (a bool is not one); non-finite ones are refused (NonFiniteError)."""
    if isinstance(b, numbers.Real) and not isinstance(b, (bool, np.bool_)):
        if not np.isfinite(float(b)):
            raise NonFiniteError(f"scalar operand {b} is not finite")
        return True
    if np.isscalar(b):
        raise WrongTypeError(f"a scalar operand must be a real number, got {_type_name(b)}")
    return False


class CkksServer(CkksContext):
    """Evaluation on ciphertexts. Holds public and evaluation keys only; cannot decrypt.
    Implements :class:`ckksnet.core.evaluator.Evaluator`."""

    levels_only = False  # every operation computes on ciphertexts

    # ---------------------------------------------------------------- arithmetic
    def _combine(self, op, a: Ciphertext, b: Ciphertext | np.ndarray | float) -> Ciphertext:
        self.check_ciphertext(a)
        if isinstance(b, ofhe.Ciphertext):
            return op(a, self.check_ciphertext(b))
        if _is_scalar(b):
            return op(a, float(b))
        return op(a, self.encode_for(b, a))

    def add(self, a: Ciphertext, b: Ciphertext | np.ndarray | float) -> Ciphertext:
        """a + b for a ciphertext, a plaintext vector or a scalar b."""
        return self._combine(self.cc.EvalAdd, a, b)

    def sub(self, a: Ciphertext, b: Ciphertext | np.ndarray | float) -> Ciphertext:
        """a - b for a ciphertext, a plaintext vector or a scalar b."""
        return self._combine(self.cc.EvalSub, a, b)

    def add_many(self, cts: Sequence[Ciphertext]) -> Ciphertext:
        """Sum of several ciphertexts (one tree of additions)."""
        if not cts:
            raise ShapeError("add_many needs at least one ciphertext")
        for ct in cts:
            self.check_ciphertext(ct)
        return cts[0] if len(cts) == 1 else self.cc.EvalAddMany(list(cts))

    def mul(self, a: Ciphertext, b: Ciphertext | np.ndarray | float) -> Ciphertext:
        """a * b (relinearized; rescaled lazily by OpenFHE); spends one level."""
        self.check_ciphertext(a)
        self.require_levels(a, 1, "multiplication")
        if isinstance(b, ofhe.Ciphertext):
            return self.relinearize(self.mul_lazy(a, b))
        if _is_scalar(b):
            return self.cc.EvalMult(a, float(b))
        return self.cc.EvalMult(a, self.encode_for(b, a))

    def mul_lazy(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        """a * b for two ciphertexts, *not* relinearized: a 3-element ciphertext that may only be
        added to others (any level, any element count) until :meth:`relinearize`. Spends one
        level. Summing several products first pays one key switch for all of them."""
        for ct in (a, b):
            if self.check_ciphertext(ct).NumberCiphertextElements() != 2:
                raise InputError("mul_lazy needs relinearized operands (relinearize the sum first)")
            self.require_levels(ct, 1, "multiplication")
        return self.cc.EvalMultNoRelin(a, b)

    def relinearize(self, ct: Ciphertext) -> Ciphertext:
        """A 2-element ciphertext again (one key switch, after rescaling: one RNS limb fewer to
        switch); 2-element input is returned as is."""
        if self.check_ciphertext(ct).NumberCiphertextElements() == 2:
            return ct
        self.key_switches["relinearizations"] += 1
        return self.cc.Relinearize(self.rescale(ct))

    def rescale(self, ct: Ciphertext) -> Ciphertext:
        """Rescale an unrescaled product now (OpenFHE's FLEXIBLEAUTO would wait for the next
        product), so that rotations and relinearization key-switch one RNS limb fewer. Levels
        left are unchanged; a rescaled ciphertext is returned as is."""
        if self.check_ciphertext(ct).GetNoiseScaleDeg() < 2:
            return ct
        return self.cc.Compress(ct, self.levels_left(ct) + 1)  # rescales, keeps every level left

    def add_inplace(self, acc: Ciphertext, b: Ciphertext) -> Ciphertext:
        """acc += b without a new ciphertext; only for an ``acc`` the caller made and owns."""
        self.cc.EvalAddInPlace(self.check_ciphertext(acc), self.check_ciphertext(b))
        return acc

    def dot(self, pairs: Iterable[tuple[Ciphertext, np.ndarray]]) -> Ciphertext:
        """sum_i ct_i * v_i for plaintext vectors v_i (one level), accumulated in place: holds
        one product at a time, not all of them."""
        acc = None
        for ct, vec in pairs:
            term = self.mul(ct, vec)
            acc = term if acc is None else self.add_inplace(acc, term)
        if acc is None:
            raise ShapeError("dot needs at least one (ciphertext, vector) pair")
        return acc

    def square(self, a: Ciphertext) -> Ciphertext:
        """a * a; spends one level."""
        return self.mul(a, a)

    # ---------------------------------------------------------------- rotations
    def _rotation_index(self, k: int) -> int:
        """The amount to hand OpenFHE for a rotation by ``k`` (0: none needed)."""
        idx = _int(k, "a rotation index") % self.slots
        if idx and idx not in self.rotations:
            raise MissingKeyError(f"no rotation key for index {int(k)} (mod {self.slots} = {idx}); "
                                  f"generated: {len(self.rotations)} indices")
        return self.keys.raw.get(idx, idx)

    def rotate(self, ct: Ciphertext, k: int) -> Ciphertext:
        """Rotate left by ``k`` slots: slot i of the result holds slot i+k of ``ct``."""
        self.check_ciphertext(ct)
        idx = self._rotation_index(k)
        if idx == 0:
            return ct
        self.key_switches["rotations"] += 1
        return self.cc.EvalRotate(ct, idx)

    def rotate_many(self, ct: Ciphertext, ks: Iterable[int]) -> dict[int, Ciphertext]:
        """Hoisted rotations: one key-switch decomposition of ``ct`` shared by all ``ks``.

        Returns {k: rotated ciphertext} for each requested ``k`` (k = 0 maps to ``ct``).
        """
        self.check_ciphertext(ct)
        ks = list(dict.fromkeys(_int(k, "a rotation index") for k in ks))
        indices = {k: self._rotation_index(k) for k in ks}
        out: dict[int, Ciphertext] = {}
        if any(indices.values()):
            digits = self.cc.EvalFastRotationPrecompute(ct)
            m = 2 * self.preset.ring_dim  # cyclotomic order
            for k, idx in indices.items():
                if idx:
                    self.key_switches["rotations"] += 1
                    out[k] = self.cc.EvalFastRotation(ct, idx, m, digits)
        for k, idx in indices.items():
            if not idx:
                out[k] = ct
        return out

    def rotate_composed(self, ct: Ciphertext, ks: Iterable[int]) -> dict[int, Ciphertext]:
        """Rotations by any ``ks`` using only the keys present: each index is reached along a
        shortest path of available rotations (see :func:`rotation_paths`), and rotations shared
        by several paths are computed once. Raises :class:`MissingKeyError` if some index is
        unreachable with the keys present."""
        self.check_ciphertext(ct)
        ks = list(dict.fromkeys(_int(k, "a rotation index") for k in ks))
        first, further = compose_rotations(self.slots, self.rotations, ks)
        cache: dict[int, Ciphertext] = {0: ct, **self.rotate_many(ct, first)}
        for idx, prev, step in further:
            self.key_switches["rotations"] += 1
            cache[idx] = self.cc.EvalRotate(cache[prev], self._rotation_index(step))
        return {k: cache[k % self.slots] for k in ks}

    # ---------------------------------------------------------------- levels and bootstrapping
    def bootstrap(self, ct: Ciphertext) -> Ciphertext:
        """Refresh ``ct`` to ``preset.levels_after_bootstrap`` levels. Values must lie in [-1, 1],
        and ``ct`` must have at least one level left (so a computation that will be bootstrapped
        can spend ``levels_after_bootstrap - 1`` levels)."""
        self.check_ciphertext(ct)
        if not self.has_bootstrap_keys:
            raise MissingKeyError("bootstrapping keys were not generated or loaded")
        # OpenFHE drops to the last modulus itself and fails on a ciphertext already there
        self.require_levels(ct, 1, "bootstrapping")
        self.prepare_bootstrap()
        p = self.preset
        if p.bootstrap_iterations > 1:
            return self.cc.EvalBootstrap(ct, p.bootstrap_iterations, p.bootstrap_precision)
        return self.cc.EvalBootstrap(ct)

    def shortcut(self, ct: Ciphertext, fn, levels: int) -> None:
        return None  # ciphertexts take no shortcut: kernels run their algorithm

    def drop_levels(self, ct: Ciphertext, levels_left: int) -> Ciphertext:
        """Lower ``ct`` to exactly ``levels_left`` levels (no-op if it has that many already)."""
        self.check_ciphertext(ct)
        have = self.levels_left(ct)
        if _int(levels_left, "levels_left") > have:
            raise LevelError(f"cannot raise a ciphertext from {have} to {levels_left} levels")
        # LevelReduce is a no-op under FLEXIBLEAUTO; Compress rescales and drops RNS limbs.
        if levels_left < have:
            ct = self.cc.Compress(ct, levels_left + 1)
        return ct


class CkksClient(CkksContext):
    """Owns the secret key. Encrypts, decrypts and generates evaluation keys for a server."""

    backend = "openfhe"  #: its backend's name (:class:`ckksnet.core.backend.SecretKeys`)

    def __init__(self, preset: str | Preset = "secure"):
        preset = get_preset(require_type(preset, (str, Preset), "preset", "a preset name such as 'secure'"))
        cc = build_crypto_context(preset)
        keys = cc.KeyGen()
        super().__init__(preset, cc, keys.publicKey)
        self._secret_key = keys.secretKey
        self.rotation_key_maps: list[tuple[tuple[int, ...], "ofhe.EvalKeyMap"]] = []
        self.key_memory_gb: dict = {}  #: what key generation cost (GiB), filled by the backend's make_keys
        cc.EvalMultKeyGen(self._secret_key)

    @classmethod
    def from_parts(cls, preset: Preset, cc: "ofhe.CryptoContext", public_key: "ofhe.PublicKey",
                   secret_key: "ofhe.PrivateKey") -> "CkksClient":
        """A client from loaded parts (see :func:`ckksnet.backend.keys.load_client_keys`):
        it encrypts and decrypts; nothing is generated, so it holds no evaluation keys.
        Raises :class:`ContextMismatchError` if the two keys are not one key pair's."""
        if secret_key.GetKeyTag() != public_key.GetKeyTag():
            raise ContextMismatchError("the secret key and the public key belong to different key sets")
        client = cls.__new__(cls)
        CkksContext.__init__(client, preset, cc, public_key)
        client._secret_key = secret_key
        client.rotation_key_maps = []
        client.key_memory_gb = {}
        return client

    def export_secret_key(self) -> bytes:
        """The secret key, serialized (OpenFHE BINARY), for writing an owner-only key file."""
        return ofhe.Serialize(self._secret_key, ofhe.BINARY)

    # ---------------------------------------------------------------- keys
    def gen_rotation_keys(self, indices: Iterable[int]) -> list[int]:
        """Generate rotation keys for ``indices`` (taken mod ``slots``; 0 needs none).

        Returns the indices that were new. Keys land in OpenFHE's key store, which a server
        in this process shares; use :mod:`ckksnet.backend.serialize` to ship them elsewhere.
        """
        new = sorted({_int(k, "a rotation index") % self.slots for k in indices} - self.rotations - {0})
        if new:
            autos = self.cc.FindAutomorphismIndices(new)
            keymap, _ = self._isolated_keygen(lambda: self.cc.EvalAutomorphismKeyGen(self._secret_key, autos))
            self.rotation_key_maps.append((tuple(new), keymap))
            self.rotations.update(new)
        return new

    def _isolated_keygen(self, generate: Callable[[], "ofhe.EvalKeyMap"],
                         keep: bool = True) -> tuple["ofhe.EvalKeyMap", list[int]]:
        """Run ``generate`` (automorphism key generation returning the tag's map) with the key
        store emptied, install the keys, and return (their map, their automorphism indices).

        OpenFHE's key generation adds to (and returns) the one map of the key tag, which would
        make every later serialization carry all keys. Generating into an emptied store gives
        a map holding exactly these keys; the store is then restored and the keys merged in
        (shared, not copied). If the store held no map for this key set yet it would adopt the
        group's map object itself, so it gets a copy instead: generate bootstrapping keys first
        to avoid that one-off copy. ``keep=False``: the caller drops the map, so the store may
        adopt it without a copy.
        """
        store = ofhe.CryptoContext
        saved = store.GetAllEvalAutomorphismKeys()
        store.ClearEvalAutomorphismKeys()
        try:
            keymap = generate()
            made = sorted(self.automorphism_indices())  # the store holds these keys only
        finally:
            store.ClearEvalAutomorphismKeys()
            for tag, m in saved.items():
                store.InsertEvalAutomorphismKey(m, tag)
        if self.key_tag in saved or not keep:
            store.InsertEvalAutomorphismKey(keymap, self.key_tag)  # merged, or adopted
        else:
            copy = ofhe.DeserializeEvalKeyMapString(ofhe.Serialize(keymap, ofhe.BINARY), ofhe.BINARY)
            store.InsertEvalAutomorphismKey(copy, self.key_tag)
        return keymap, made

    def gen_bootstrap_keys(self) -> None:
        """Generate bootstrapping keys (at N = 2^16 this takes tens of seconds and ~9 GB)."""
        if not self.preset.bootstrap:
            raise MissingKeyError(f"preset {self.preset.name!r} has bootstrapping off")
        if not self.keys.bootstrap:
            self.prepare_bootstrap()

            def generate() -> "ofhe.EvalKeyMap":
                self.cc.EvalBootstrapKeyGen(self._secret_key, self.slots)
                return self.cc.GetEvalAutomorphismKeyMap(self.key_tag)

            # isolated, so that the key file can list exactly the bootstrapping keys
            _, self.keys.bootstrap_automorphisms = self._isolated_keygen(generate, keep=False)
            self.keys.bootstrap = True
            self.adopt_bootstrap_rotations()

    def server(self) -> CkksServer:
        """A server-side view of this context in the same process: shares the public and
        evaluation keys, never the secret key."""
        srv = CkksServer(self.preset, self.cc, self.public_key)
        srv.keys = self.keys
        return srv

    evaluator = server  #: :class:`ckksnet.core.backend.SecretKeys`' name for it

    # ---------------------------------------------------------------- decryption
    def decrypt(self, ct: Ciphertext, length: int | None = None) -> np.ndarray:
        """Decrypt to a float64 vector of ``length`` values (default: all slots).

        Raises :class:`WrongTypeError` (not a ciphertext), :class:`ContextMismatchError`
        (another key set's) and :class:`DecryptionError` when OpenFHE cannot decode the result
        ("approximation error is too high": a value grew beyond what the ciphertext holds, most
        likely an activation beyond its bound B). OpenFHE cannot always tell: a value that
        wrapped around a nearly spent modulus can decode to garbage without an error, which the
        plan's twin (``ActivationRangeWarning``) is there to catch beforehand.
        """
        self.check_ciphertext(ct)
        n = self.slots if length is None else _int(length, "length")
        if not 0 < n <= self.slots:
            raise ShapeError(f"length {n} must be between 1 and {self.slots}")
        try:
            pt = self.cc.Decrypt(self._secret_key, ct)
            pt.SetLength(n)
            values = pt.GetRealPackedValue()
        except RuntimeError as exc:
            raise DecryptionError(_decryption_advice(exc, self.levels_left(ct))) from exc
        return np.asarray(values, dtype=np.float64)[:n]


def _decryption_advice(exc: Exception, levels_left: int) -> str:
    """What a failed decryption most likely means, and what to do (OpenFHE's words appended)."""
    said = str(exc).strip().split("):", 1)[-1].strip() or type(exc).__name__
    if "approximation error" not in said:
        return f"OpenFHE could not decrypt the ciphertext ({levels_left} levels left): {said}"
    return ("the ciphertext cannot be decoded: its values grew far beyond the range the computation "
            f"was scaled for ({levels_left} levels left). Most likely an activation exceeded its bound B "
            "(a ReLU input beyond B, where the sign polynomial explodes) on an input unlike the "
            "calibration images. Run the plan's twin on the same image (plan.twin(image, strict=True)) "
            "to name the layer; then recalibrate with representative images, raise the margin "
            "(compile(..., margin=...)) or compile with relu_extension=4 (ReLU accurate up to 4 B). "
            f"OpenFHE: {said}")


@register_evaluator("openfhe")
def _conformance(preset, rotation_keys) -> Conformance:
    # a test harness: the client decrypts what the server computed (a real server never could)
    client = CkksClient(preset)
    client.gen_bootstrap_keys()
    client.gen_rotation_keys(list(rotation_keys))
    # measured at the test preset: 1.3e-13 before a bootstrap, 6.6e-8 after it (15x margin)
    return Conformance(client.server(), lambda vector, levels: client.encrypt(vector, levels), client.decrypt,
                       (1e-11, 1e-6))
