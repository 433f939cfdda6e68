"""Executing a plan: the client (keys, encryption) and the server (encrypted inference).

    net = ckksnet.compile(model, calibration=train_images, preset="secure")
    client = ckksnet.Client(net)                       # keys; the secret key stays here
    server = ckksnet.Server(net, client.evaluation_keys())
    logits = client.decrypt(server.run(client.encrypt(image), progress=True))
    server.report.to_dict()                           # per-step time, levels, bootstraps, RSS
"""
from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import psutil
from tqdm import tqdm

from ckksnet.backend import CkksClient, CkksServer
from ckksnet.backend.memory import peak_rss_gb, rss_gb, trim
from ckksnet.compiler.plan import Plan
from ckksnet.errors import ContextMismatchError
from ckksnet.runtime.levels import LevelSchedule, Refresh, trace_levels


@dataclass
class StepReport:
    """One step of an encrypted run. Times in seconds, levels = levels left, memory in GiB
    (``peak_rss_gb``: the process high-water mark so far; ``rss_gb``: resident after the step,
    once its dead ciphertexts are freed)."""

    name: str
    kind: str
    seconds: float
    level_in: int
    level_out: int
    bootstraps: int
    bootstrap_seconds: float
    rotations: int
    peak_rss_gb: float
    rss_gb: float = 0.0
    key_switches: int = 0  # rotations and relinearizations the step's kernel did (not bootstrapping's)


@dataclass
class RunReport:
    steps: list[StepReport] = field(default_factory=list)
    rotation_keys: list[int] = field(default_factory=list)  # indices (mod slots) of the keys present

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    @property
    def bootstraps(self) -> int:
        return sum(s.bootstraps for s in self.steps)

    @property
    def bootstrap_seconds(self) -> float:
        return sum(s.bootstrap_seconds for s in self.steps)

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "bootstraps": self.bootstraps,
                "bootstrap_seconds": self.bootstrap_seconds,
                "peak_rss_gb": max((s.peak_rss_gb for s in self.steps), default=0.0),
                "key_switches": sum(s.key_switches for s in self.steps),
                "rotation_keys": self.rotation_keys, "steps": [asdict(s) for s in self.steps]}


class Client:
    """Holds the secret key. Generates every key the plan needs, encrypts images, decrypts logits."""

    def __init__(self, net: Plan, bootstrap_keys: bool = True):
        self.net = net
        rss = lambda: psutil.Process().memory_info().rss / 2**30  # noqa: E731
        start = rss()
        self.ckks = CkksClient(net.preset)
        if bootstrap_keys and net.preset.bootstrap:
            self.ckks.gen_bootstrap_keys()  # first: later rotation keys then merge without copies
        mid = rss()
        reused = len(self.ckks.rotations)  # bootstrapping's rotation keys, shared by the kernels
        extra = net.key_indices(self.ckks.rotations)
        self.ckks.gen_rotation_keys(extra)
        one_key = self.ckks.key_switching_key_bytes() / 2**30
        present = self.ckks.automorphism_key_count()
        #: resident memory added by key generation, GiB (bootstrapping includes its precomputations),
        #: and the rotation keys present (bootstrapping's, reused, and the kernels' own): their
        #: count and their size, count x one key-switching key
        self.key_memory_gb = {"bootstrap_and_relinearization": round(mid - start, 2),
                              "rotation": round(rss() - mid, 2), "rotation_keys": len(extra),
                              "bootstrap_rotation_keys_reused": reused,
                              "automorphism_keys_present": present, "one_key": round(one_key, 4),
                              "automorphism_keys": round(present * one_key, 2)}

    def encrypt(self, image: np.ndarray):
        """One image (uint8 HWC or float CHW in [0, 1]) -> a ciphertext of the packed input,
        encrypted at the levels the plan uses before its first bootstrap (the level schedule's
        input slack below the preset's depth: a smaller ciphertext, cheaper first layers)."""
        levels = self.net.preset.depth - level_schedule(self.net).input_slack
        return self.ckks.encrypt(self.net.preprocess(image), levels_left=levels)

    def decrypt(self, ct) -> np.ndarray:
        """The output ciphertext -> logits (float64)."""
        out = self.net.values[self.net.output]
        return self.net.output_layout.unpack(self.ckks.decrypt(ct)) * out.scale

    def evaluation_keys(self) -> CkksServer:
        """The server's view of the keys: public and evaluation keys only (no secret key)."""
        return self.ckks.server()


def rotation_key_text(key_memory_gb: dict | None) -> str:
    """'rotation keys X GiB (N automorphism keys present)' from :attr:`Client.key_memory_gb`;
    empty for reports made before it held the rotation keys' size."""
    keys = key_memory_gb or {}
    if "automorphism_keys" not in keys:
        return ""
    return f"rotation keys {keys['automorphism_keys']:.2f} GiB ({keys['automorphism_keys_present']} automorphism keys present)"


class Server:
    """Runs a plan on ciphertexts. Holds no secret key."""

    def __init__(self, net: Plan, keys: CkksServer):
        if keys.preset != net.preset:
            raise ContextMismatchError(f"keys are for preset {keys.preset.name!r}, the plan for {net.preset.name!r}")
        self.net = net
        self.ckks = keys
        self.report = RunReport()
        net.tune_for_keys(keys.rotations)  # rotations chained from the keys this server holds

    def run(self, ct, progress: bool = False, probe=None):
        """Encrypted inference of one ciphertext; fills :attr:`report`.

        ``probe(index, step, inputs, output)``, if given, sees every step's ciphertexts (the
        noise calibration decrypts them with the client's key; a real server never would).
        """
        self.ckks.check_ciphertext(ct)
        self.report = RunReport(rotation_keys=sorted(self.ckks.rotations))
        refresh = Refresh(self.ckks, level_schedule(self.net))
        return execute(self.net, self.ckks, ct, refresh, self.report, progress, probe)


def level_schedule(net: Plan) -> LevelSchedule:
    """The plan's level schedule (a dry run, once per plan; see :mod:`ckksnet.runtime.levels`)."""
    if getattr(net, "_level_schedule", None) is None:
        net._level_schedule = trace_levels(net)
    return net._level_schedule


def execute(net: Plan, srv, ct, refresh: Refresh, report: RunReport | None = None,
            progress: bool = False, probe=None, free_memory: bool = True):
    """Run the plan's steps on ``ct`` through ``srv`` (a CkksServer, or the dry run's tracer),
    bootstrapping by ``refresh``; one StepReport per step into ``report``. ``free_memory``:
    collect and trim after each step (ciphertexts are large; the tracer's are not)."""
    report = report if report is not None else RunReport()
    vals = {net.input: ct}
    last = net.last_use()
    bar = tqdm(net.steps, desc="encrypted inference", disable=not progress, unit="step")
    for i, (step, ins, out) in enumerate(bar):
        bar.set_postfix_str(step.name)
        boots, boot_s = refresh.count, refresh.seconds

        def step_refresh(c, levels):
            fresh = refresh(c, levels)
            if fresh is not c:
                for v in ins:  # later readers of this value (a shortcut, a residual add) get the
                    if vals.get(v) is c:  # refreshed copy too: no second bootstrap, more levels
                        vals[v] = fresh
            return fresh

        level_in = min(srv.levels_left(vals[v]) for v in ins)
        switches = sum(srv.key_switches.values())
        t0 = time.time()
        vals[out] = step.encrypted(srv, [vals[v] for v in ins], step_refresh)
        report.steps.append(StepReport(
            step.name, step.kind, time.time() - t0, level_in, srv.levels_left(vals[out]),
            refresh.count - boots, refresh.seconds - boot_s, len(step.rotations()), peak_rss_gb(),
            key_switches=sum(srv.key_switches.values()) - switches))
        if probe is not None:
            probe(i, step, [vals[v] for v in ins], vals[out])
        for v in ins:
            if last.get(v) == i:
                vals.pop(v, None)  # free ciphertexts no later step reads
        if free_memory:
            gc.collect()  # a cycle anywhere (a kernel's closure) would keep ciphertexts alive
            trim()
        report.steps[-1].rss_gb = rss_gb()
    return vals[net.output]
