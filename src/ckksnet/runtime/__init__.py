"""Running a compiled plan: the client (keys, encryption) and the server (encrypted inference).

    net = ckksnet.compile(model, calibration=train_images, preset="secure")
    client = ckksnet.Client(net.client_spec())         # keys; the secret key stays here
    server = ckksnet.Server(net, client.evaluation_keys())
    logits = client.decrypt(server.run(client.encrypt(image), progress=True))
    server.report.to_dict()                            # per-step time, levels, bootstraps, RSS

Both only read the plan: its schedule (compile time) says where bootstraps fall, each map's baby
step and the input's level. The client needs only the weight-free :class:`ClientSpec`.
"""
from __future__ import annotations

import numpy as np
import psutil
from tqdm.auto import tqdm

import ckksnet.kernels  # noqa: F401  (registers the built-in kernel types plans name)
from ckksnet.backend import CkksClient, CkksServer
from ckksnet.core import artifact
from ckksnet.core.costs import cost_model
from ckksnet.core.evaluator import Evaluator
from ckksnet.core.memory import check_memory, peak_rss_gb, rss_gb  # noqa: F401  (re-exported)
from ckksnet.core.plan import ClientSpec, Plan
from ckksnet.core.tiles import join, split_packed, tiles_of, width
from ckksnet.core.walker import RunReport, ScheduledRefresh, StepReport, walk  # noqa: F401
from ckksnet.errors import ContextMismatchError, LevelError, MissingKeyError, ShapeError, WrongTypeError


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
    convenience, a whole :class:`Plan` (only its client half is kept)."""

    def __init__(self, spec: ClientSpec | Plan, keys: CkksClient | None = None, bootstrap_keys: bool = True,
                 memory_check: bool = True):
        if isinstance(spec, Plan):
            spec = spec.client_spec()
        if not isinstance(spec, ClientSpec):
            raise WrongTypeError(f"Client needs a ClientSpec or a Plan, got {type(spec).__name__}")
        self.spec = spec
        if keys is not None:
            if not isinstance(keys, CkksClient):
                raise WrongTypeError(f"keys must be a CkksClient (the secret-key holder), got {type(keys).__name__}")
            if keys.preset != spec.preset:
                raise ContextMismatchError(f"keys are for preset {keys.preset.name!r}, the plan for {spec.preset.name!r}")
            self.ckks, self.key_memory_gb = keys, {}
            return
        check_memory(key_memory_estimate_gib(spec, bootstrap_keys),
                      f"generating the keys of preset {spec.preset.name!r}", override=not memory_check)
        self.ckks, self.key_memory_gb = _generate_keys(spec, bootstrap_keys)

    def encrypt(self, image: np.ndarray):
        """One image (uint8 HWC or float CHW in [0, 1]) -> a ciphertext of the packed input at the
        plan's input level (its schedule lowers it below the preset's depth where the first
        layers do not need every level: a smaller ciphertext, cheaper first layers)."""
        packed = self.spec.preprocess(image)
        if packed.ndim != 1:
            raise ShapeError("encrypt takes one image; call it once per image of a batch")
        parts = split_packed(packed, self.spec.preset.slots)  # an input over several ciphertexts: Tiles
        return join([self.ckks.encrypt(p, levels_left=self.spec.input_level) for p in parts])

    def decrypt(self, ct) -> np.ndarray:
        """The output ciphertext(s) -> logits (float64). Raises :class:`ShapeError` for a number of
        ciphertexts the plan's output does not have (e.g. an image's input ciphertexts)."""
        want = getattr(self.spec.output_layout, "ciphertexts", 1)
        if width(ct) != want:
            raise ShapeError(f"the ciphertext holds {width(ct)} ciphertext(s); the plan's output is {want}: decrypt "
                             "what the server's run returns (an input ciphertext holds no logits)")
        return self.spec.postprocess(np.concatenate([self.ckks.decrypt(c) for c in tiles_of(ct)]))

    def evaluation_keys(self) -> CkksServer:
        """The server's view of the keys: public and evaluation keys only (no secret key)."""
        return self.ckks.server()


#: measured at the secure preset (2026-12-04): a context 0.32 GiB; 20 rotation keys 7.34 GiB resident
#: and 9.04 GiB at the peak of their generation, so a key in memory is about 3 x its serialized
#: size (``one_key_gib``) and generation peaks 1.25 x above the resident keys
KEY_RESIDENT_FACTOR = 3.0
KEYGEN_PEAK_FACTOR = 1.25
CONTEXT_GIB = 0.4


def key_memory_estimate_gib(spec: ClientSpec, bootstrap_keys: bool = True) -> float | None:
    """GiB that generating ``spec``'s keys takes at its peak, from the preset's measured constants
    (``core/costs.json``: the whole key set of a bootstrapping plan, one key-switching key's size)
    and the factors above; None where the preset has no measured constants."""
    costs = cost_model(spec.preset.name)
    memory = costs.memory if costs else {}
    if "one_key_gib" not in memory:
        return None
    per_key = float(memory["one_key_gib"]) * KEY_RESIDENT_FACTOR * KEYGEN_PEAK_FACTOR
    own = len(spec.rotation_keys) * per_key  # the plan's rotation keys beyond bootstrapping's
    if bootstrap_keys and spec.bootstrap and "keys_gib" in memory:
        return round(float(memory["keys_gib"]) + own, 2)
    return round(CONTEXT_GIB + per_key + own, 2)  # the context, relinearization and rotation keys


def _generate_keys(spec: ClientSpec, bootstrap_keys: bool) -> tuple[CkksClient, dict]:
    rss = lambda: psutil.Process().memory_info().rss / 2**30  # noqa: E731
    start = rss()
    ckks = CkksClient(spec.preset)
    if bootstrap_keys and spec.bootstrap:
        ckks.gen_bootstrap_keys()  # first: later rotation keys then merge without copies
    mid = rss()
    reused = len(ckks.rotations)  # bootstrapping's rotation keys, shared by the kernels
    ckks.gen_rotation_keys(spec.rotation_keys)
    one_key = ckks.key_switching_key_bytes() / 2**30
    present = ckks.automorphism_key_count()
    #: resident memory added by key generation, GiB (bootstrapping includes its precomputations),
    #: and the rotation keys present (bootstrapping's, reused, and the kernels' own): their
    #: count and their size, count x one key-switching key. Differences of resident memory, so memory the
    #: process frees meanwhile (a compile's matrices) lowers them: never below 0
    return ckks, {"bootstrap_and_relinearization": max(0.0, round(mid - start, 2)),
                  "rotation": max(0.0, round(rss() - mid, 2)),
                  "rotation_keys": len(spec.rotation_keys), "bootstrap_rotation_keys_reused": reused,
                  "automorphism_keys_present": present, "one_key": round(one_key, 4),
                  "automorphism_keys": round(present * one_key, 2)}


def rotation_key_text(key_memory_gb: dict | None) -> str:
    """'rotation keys X GiB (N automorphism keys present)' from :attr:`Client.key_memory_gb`;
    empty for reports made before it held the rotation keys' size."""
    keys = key_memory_gb or {}
    if "automorphism_keys" not in keys:
        return ""
    return f"rotation keys {keys['automorphism_keys']:.2f} GiB ({keys['automorphism_keys_present']} automorphism keys present)"


class Server:
    """Runs a plan on any evaluator (:class:`ckksnet.core.evaluator.Evaluator`): OpenFHE's
    :class:`CkksServer`, or another backend's. Holds no secret key. Raises
    :class:`MissingKeyError` at construction, naming the indices, if ``keys`` lack a key the
    plan's schedule assumes; :class:`WrongTypeError` for a secret-key holder or a non-evaluator."""

    def __init__(self, plan: Plan, keys: CkksServer):
        if not isinstance(plan, Plan) or plan.schedule is None:
            raise WrongTypeError(f"Server needs a compiled Plan (ckksnet.compile or ckksnet.load_plan), "
                               f"got {type(plan).__name__}")
        if isinstance(keys, CkksClient) or not isinstance(keys, Evaluator):
            raise WrongTypeError(f"Server needs evaluation keys (a CkksServer: client.evaluation_keys() or "
                               f"ckksnet.backend.keys.load_evaluation_keys, or another backend's evaluator), "
                               f"got {type(keys).__name__}; a server never holds the secret key")
        if getattr(keys, "preset", plan.preset) != plan.preset:
            raise ContextMismatchError(f"keys are for preset {keys.preset.name!r}, the plan for {plan.preset.name!r}")
        check_keys(plan, keys)
        self.plan = plan
        self.ckks = keys
        self.report = RunReport()

    @property
    def net(self) -> Plan:
        return self.plan

    def run(self, ct, progress: bool = False, probe=None, on_step=None):
        """Encrypted inference of one ciphertext; fills :attr:`report`.

        ``on_step(i, n, name)``: called before each step (progress for services).
        ``probe(index, step, inputs, output)``, if given, sees every step's ciphertexts (the noise
        calibration decrypts them with the client's key; a real server never would).
        """
        check = getattr(self.ckks, "check_ciphertext", None)  # OpenFHE's: key set and type
        want = getattr(self.plan.input_layout, "ciphertexts", 1)
        if width(ct) != want:
            raise ShapeError(f"the input is {width(ct)} ciphertext(s); the plan reads {want} (encrypt with a "
                             "Client of this plan)")
        for c in tiles_of(ct):
            if check is not None:
                check(c)
            if self.ckks.levels_left(c) < self.plan.schedule.input_level:
                raise LevelError(f"the ciphertext has {self.ckks.levels_left(c)} levels; the plan expects "
                                 f"{self.plan.schedule.input_level} (encrypt with a Client of this plan)")
        self.report = RunReport(rotation_keys=sorted(getattr(self.ckks, "rotations", ())))
        refresh = ScheduledRefresh(self.ckks, self.plan.schedule.decisions())
        after = None if probe is None else (lambda i, step, ins, out: probe(i, step, ins, out))
        return walk(self.plan, self.ckks, ct, refresh, self.report, progress=tqdm if progress else None,
                    on_step=on_step, after_step=after, free_memory=True)


def check_keys(plan: Plan, keys: Evaluator) -> None:
    """Raise :class:`MissingKeyError` naming what ``keys`` lack of what ``plan`` assumes (an
    evaluator without a key inventory, e.g. numpy slots, lacks nothing)."""
    if not hasattr(keys, "rotations"):
        return
    sched = plan.schedule
    if sched.bootstrap_slots and not keys.has_bootstrap_keys:  # first: it also explains missing rotations
        raise MissingKeyError(f"the plan bootstraps ({sched.bootstraps} times) but the evaluation keys hold no "
                              "bootstrapping keys: make the keys with bootstrapping (ckksnet keygen does; in "
                              "Python, ckksnet.Client(plan) without bootstrap_keys=False)")
    missing = sorted(set(sched.key_rotations) - set(keys.rotations))
    if missing:
        raise MissingKeyError(f"the evaluation keys lack {len(missing)} rotation key(s) the plan needs: "
                              f"indices {missing[:20]}{' ...' if len(missing) > 20 else ''} (mod {plan.preset.slots})")
