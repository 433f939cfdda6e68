"""Running a compiled plan: the client (keys, encryption) and the server (encrypted inference).

    net = ckksnet.compile(model, calibration=train_images, preset="secure")
    client = ckksnet.Client(net.client_spec())         # keys; the secret key stays here
    server = ckksnet.Server(net, client.evaluation_keys())
    logits = client.decrypt(server.run(client.encrypt(image), progress=True))
    server.report.to_dict()                            # per-step time, levels, bootstraps, RSS

Both only read the plan: its schedule (compile time) says where bootstraps fall, each map's baby
step and the input's level. The client needs only the weight-free :class:`ClientSpec`. Keys,
key files and ciphertext bytes go through the plan's backend (:mod:`ckksnet.core.backend`,
found by the name the plan records), so nothing here knows OpenFHE.
"""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import ckksnet.kernels  # noqa: F401  (registers the built-in kernel types plans name)
from ckksnet.core import artifact
from ckksnet.core.backend import (EVAL_DIR, ROLES, SECRET_KEY_FILE, Backend, KeySet, SecretKeys, ciphertext_role,
                                  get_backend)
from ckksnet.core.envelope import load, save
from ckksnet.core.evaluator import Evaluator
from ckksnet.core.memory import check_memory, peak_rss_gb, rss_gb  # noqa: F401  (re-exported)
from ckksnet.core.plan import ClientSpec, Plan
from ckksnet.core.tiles import join, split_packed, tiles_of, width
from ckksnet.core.walker import RunReport, ScheduledRefresh, StepReport, walk  # noqa: F401
from ckksnet.errors import (BackendError, CkksnetError, ContextMismatchError, InputError, LevelError, MissingKeyError,
                            SerializationError, ShapeError, WrongTypeError)


def load_plan(path) -> Plan:
    """The server artifact at ``path`` -> :class:`Plan` (validated; built-in kernels registered).
    Raises :class:`ckksnet.errors.CorruptDataError` and the envelope's errors."""
    return artifact.load_plan(path)


def load_client_spec(path) -> ClientSpec:
    """The client artifact at ``path`` -> :class:`ClientSpec` (validated; holds no weights)."""
    return artifact.load_client_spec(path)


class Client:
    """Holds the secret key. Makes every key the plan needs (or takes a loaded key set),
    encrypts images and decrypts logits. Built from a :class:`ClientSpec` (no weights) or, for
    convenience, a whole :class:`Plan` (only its client half is kept). ``keys``: the backend's
    secret-key holder (:class:`ckksnet.core.backend.SecretKeys`)."""

    def __init__(self, spec: ClientSpec | Plan, keys: SecretKeys | None = None, bootstrap_keys: bool = True,
                 memory_check: bool = True):
        if isinstance(spec, Plan):
            spec = spec.client_spec()
        if not isinstance(spec, ClientSpec):
            raise WrongTypeError(f"Client needs a ClientSpec or a Plan, got {type(spec).__name__}")
        self.spec = spec
        self.backend: Backend = get_backend(spec.backend)
        if keys is not None:
            if not isinstance(keys, SecretKeys) or isinstance(keys, Evaluator):
                raise WrongTypeError(f"keys must be the secret-key holder of a key set (Client.load, or a "
                                     f"backend's make_keys), got {type(keys).__name__}")
            if keys.backend != spec.backend:
                raise BackendError(f"the keys are {keys.backend!r} keys; the plan is compiled for the {spec.backend!r} "
                                   "backend (make the keys with a Client of this plan)")
            if keys.preset != spec.preset:
                raise ContextMismatchError(f"keys are for preset {keys.preset.name!r}, the plan for {spec.preset.name!r}")
            self.keys = keys
            return
        bootstrap = bootstrap_keys and spec.bootstrap
        check_memory(self.backend.key_memory_gib(spec.preset, len(spec.rotation_keys), bootstrap),
                     f"generating the keys of preset {spec.preset.name!r}", override=not memory_check)
        self.keys = self.backend.make_keys(spec.preset, spec.rotation_keys, bootstrap)

    @classmethod
    def load(cls, spec: ClientSpec | Plan, folder: str | os.PathLike) -> "Client":
        """The client of a key folder written by :meth:`save_keys` (nothing is generated)."""
        spec = spec.client_spec() if isinstance(spec, Plan) else spec
        if not isinstance(spec, ClientSpec):
            raise WrongTypeError(f"Client.load needs a ClientSpec or a Plan, got {type(spec).__name__}")
        return cls(spec, keys=get_backend(spec.backend).load_secret_keys(folder))

    @property
    def key_memory_gb(self) -> dict:
        """What making the keys cost (GiB and key counts; {} for loaded keys)."""
        return self.keys.key_memory_gb or {}

    @property
    def context_id(self) -> str:
        """The key set's id (every ciphertext and key file of it carries it)."""
        return self.keys.context_id

    def save_keys(self, folder: str | os.PathLike) -> Path:
        """Write the key set to ``folder``: the secret key (owner-only) and the evaluation-key
        bundle ``folder/eval`` to ship to a server. Returns ``folder``.

        Complete or absent: the keys are written into a hidden sibling folder that is renamed
        to ``folder`` once whole, so an interrupted write (Ctrl-C, a full disk, out of memory)
        leaves no half key set where readers look. An existing ``folder`` is replaced only if it
        is empty or holds a key set (``SerializationError`` otherwise: it is not ours to delete)."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise SerializationError(f"{folder} is a file: give a folder for the keys")
        if folder.exists() and any(folder.iterdir()) and not (folder / SECRET_KEY_FILE).exists() \
                and not (folder / EVAL_DIR).exists():
            raise SerializationError(f"{folder} holds other files: write the keys to a folder of their own")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tag = secrets.token_hex(4)
        partial = folder.parent / f".{folder.name}.partial-{tag}"
        try:
            self.backend.save_keys(self.keys, partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{tag}"
            os.rename(folder, old)
            os.rename(partial, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(partial, folder)
        os.chmod(folder, 0o700)
        return folder

    def encrypt(self, image: np.ndarray):
        """One image (uint8 HWC or float CHW in [0, 1]) -> a ciphertext of the packed input at the
        plan's input level (its schedule lowers it below the preset's depth where the first
        layers do not need every level: a smaller ciphertext, cheaper first layers)."""
        packed = self.spec.preprocess(image)
        if packed.ndim != 1:
            raise ShapeError("encrypt takes one image; call it once per image of a batch")
        parts = split_packed(packed, self.spec.preset.slots)  # an input over several ciphertexts: Tiles
        return join([self.keys.encrypt(p, levels_left=self.spec.input_level) for p in parts])

    def decrypt(self, ct) -> np.ndarray:
        """The output ciphertext(s) -> logits (float64). Raises :class:`ShapeError` for a number of
        ciphertexts the plan's output does not have (e.g. an image's input ciphertexts)."""
        want = getattr(self.spec.output_layout, "ciphertexts", 1)
        if width(ct) != want:
            raise ShapeError(f"the ciphertext holds {width(ct)} ciphertext(s); the plan's output is {want}: decrypt "
                             "what the server's run returns (an input ciphertext holds no logits)")
        slots = [self.keys.decrypt(c) for c in tiles_of(ct)]  # first: it names what is not a ciphertext
        spec = self.spec
        levels = {self.keys.levels_left(c) for c in tiles_of(ct)}
        if spec.output_level >= 0 and spec.input_level != spec.output_level and levels == {spec.input_level}:
            raise InputError(f"the ciphertext has the {spec.input_level} levels of an encrypted input (the run's "
                             f"output has {spec.output_level}): decrypt what the server's run returns")
        return spec.postprocess(np.concatenate(slots))

    def evaluation_keys(self) -> Evaluator:
        """The server's view of the keys in this process: public and evaluation keys only."""
        return self.keys.evaluator()

    def ciphertext_to_bytes(self, ct, role: str = "input") -> bytes:
        """A ciphertext envelope naming the key set and ``role`` (what the client sends: "input")."""
        if role not in ROLES:
            raise InputError(f"a ciphertext's role is one of {', '.join(ROLES)}, not {role!r}")
        return self.backend.ciphertext_to_bytes(self.keys, ct, role)

    def ciphertext_from_bytes(self, data: bytes, expect: str | None = None):
        """The ciphertext of an envelope of this key set (:class:`ContextMismatchError` for
        another's); ``expect`` ("output" before decrypting logits): :class:`InputError` where the
        envelope records another role."""
        _check_role(data, expect)
        return self.backend.ciphertext_from_bytes(self.keys, data)

    def save_ciphertext(self, ct, path: str | os.PathLike, role: str = "input") -> Path:
        """Write a ciphertext file (an envelope naming the key set and the role)."""
        return save(self.ciphertext_to_bytes(ct, role), path)

    def load_ciphertext(self, path: str | os.PathLike, expect: str | None = None):
        """Read a ciphertext file of this key set (see :meth:`ciphertext_from_bytes`); errors
        name the file."""
        return _naming(path, lambda: self.ciphertext_from_bytes(load(path), expect))


def rotation_key_text(key_memory_gb: dict | None) -> str:
    """'rotation keys X GiB (N automorphism keys present)' from :attr:`Client.key_memory_gb`;
    empty for reports made before it held the rotation keys' size."""
    keys = key_memory_gb or {}
    if "automorphism_keys" not in keys:
        return ""
    return f"rotation keys {keys['automorphism_keys']:.2f} GiB ({keys['automorphism_keys_present']} automorphism keys present)"


class Server:
    """Runs a plan on its backend's evaluator (:class:`ckksnet.core.evaluator.Evaluator`).
    Holds no secret key. Raises :class:`MissingKeyError` at construction, naming the indices, if
    the keys lack a key the plan's schedule assumes; :class:`WrongTypeError` for a secret-key
    holder or another backend's evaluator. ``evaluator``: the keys it computes with."""

    def __init__(self, plan: Plan, keys: Evaluator):
        if not isinstance(plan, Plan) or plan.schedule is None:
            raise WrongTypeError(f"Server needs a compiled Plan (ckksnet.compile or ckksnet.load_plan), "
                                 f"got {type(plan).__name__}")
        self.backend: Backend = get_backend(plan.backend)
        if isinstance(keys, SecretKeys):
            raise WrongTypeError(f"Server needs evaluation keys (client.evaluation_keys() or Server.load), got "
                                 f"{type(keys).__name__}; a server never holds the secret key")
        self.key_set: KeySet = self.backend.key_set(keys)  # WrongTypeError naming the backend's evaluator
        if self.key_set.preset != plan.preset:
            raise ContextMismatchError(f"keys are for preset {self.key_set.preset.name!r}, the plan for "
                                       f"{plan.preset.name!r}")
        check_keys(plan, self.key_set)
        self.plan = plan
        self.evaluator = keys
        self.report = RunReport()

    @classmethod
    def load(cls, plan: Plan, folder: str | os.PathLike, memory_check: bool = True) -> "Server":
        """A server with the evaluation keys of ``folder`` (``KEYDIR/eval``), loading what the
        plan's schedule needs (:class:`MissingKeyError` from the bundle's headers first)."""
        if not isinstance(plan, Plan) or plan.schedule is None:
            raise WrongTypeError(f"Server.load needs a compiled Plan, got {type(plan).__name__}")
        sched = plan.schedule
        keys = get_backend(plan.backend).load_evaluation_keys(folder, rotations=sched.key_rotations,
                                                             bootstrap=bool(sched.bootstrap_slots),
                                                             memory_check=memory_check)
        return cls(plan, keys)

    def ciphertext_to_bytes(self, ct) -> bytes:
        """A run's result as a ciphertext envelope (role "output")."""
        return self.backend.ciphertext_to_bytes(self.evaluator, ct, "output")

    def ciphertext_from_bytes(self, data: bytes):
        """A client's input ciphertext (:class:`InputError` for one a run already wrote)."""
        _check_role(data, "input")
        return self.backend.ciphertext_from_bytes(self.evaluator, data)

    def save_ciphertext(self, ct, path: str | os.PathLike) -> Path:
        return save(self.ciphertext_to_bytes(ct), path)

    def load_ciphertext(self, path: str | os.PathLike):
        """Read a client's input ciphertext file; errors name the file."""
        return _naming(path, lambda: self.ciphertext_from_bytes(load(path)))

    def run(self, ct, progress: bool = False, probe=None, on_step=None):
        """Encrypted inference of one ciphertext; fills :attr:`report`.

        ``on_step(i, n, name)``: called before each step (progress for services).
        ``probe(index, step, inputs, output)``, if given, sees every step's ciphertexts (the noise
        calibration decrypts them with the client's key; a real server never would).
        """
        want = getattr(self.plan.input_layout, "ciphertexts", 1)
        if width(ct) != want:
            raise ShapeError(f"the input is {width(ct)} ciphertext(s); the plan reads {want} (encrypt with a "
                             "Client of this plan)")
        ev = self.evaluator
        for c in tiles_of(ct):
            self.key_set.check_ciphertext(c)
            if ev.levels_left(c) < self.plan.schedule.input_level:
                raise LevelError(f"the ciphertext has {ev.levels_left(c)} levels; the plan expects "
                                 f"{self.plan.schedule.input_level} (encrypt with a Client of this plan)")
        self.report = RunReport(rotation_keys=sorted(self.key_set.rotations))
        refresh = ScheduledRefresh(ev, self.plan.schedule.decisions())
        after = None if probe is None else (lambda i, step, ins, out: probe(i, step, ins, out))
        return walk(self.plan, ev, ct, refresh, self.report, progress=tqdm if progress else None,
                    on_step=on_step, after_step=after, free_memory=True)


_ROLE_ADVICE = {"input": "it is an encrypted input (what encrypt writes), not a server's output: run it through the "
                         "plan first (ckksnet run) and decrypt what the run writes",
                "output": "it is already the output of a run: send the encrypted input (what encrypt writes)"}


def _naming(path, read):
    """``read()``, its :class:`CkksnetError` prefixed with ``path`` (same class) where it does not name it."""
    try:
        return read()
    except CkksnetError as exc:
        if str(path) in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from exc


def _check_role(data: bytes, expect: str | None) -> None:
    """:class:`InputError` where the envelope records a role other than ``expect`` (files
    written before ciphertexts recorded their role pass)."""
    if expect is not None and expect not in ROLES:
        raise InputError(f"expect is one of {', '.join(ROLES)} or None, not {expect!r}")
    role = ciphertext_role(data) if expect else None
    if role is not None and role != expect:
        raise InputError(_ROLE_ADVICE.get(role, f"its role is {role!r}, expected {expect!r}"))


def check_keys(plan: Plan, keys: KeySet) -> None:
    """Raise :class:`MissingKeyError` naming what ``keys`` lack of what ``plan`` assumes."""
    sched = plan.schedule
    if sched.bootstrap_slots and not keys.bootstrap:  # first: it also explains missing rotations
        raise MissingKeyError(f"the plan bootstraps ({sched.bootstraps} times) but the evaluation keys hold no "
                              "bootstrapping keys: make the keys with bootstrapping (ckksnet keygen does; in "
                              "Python, ckksnet.Client(plan) without bootstrap_keys=False)")
    missing = sorted(set(sched.key_rotations) - set(keys.rotations))
    if missing:
        raise MissingKeyError(f"the evaluation keys lack {len(missing)} rotation key(s) the plan needs: "
                              f"indices {missing[:20]}{' ...' if len(missing) > 20 else ''} (mod {plan.preset.slots})")
