"""The one plan walker, and the bootstrapping policies it runs with.

:func:`walk` runs a plan's steps in order on any evaluator: OpenFHE ciphertexts (the server),
levels only (the compiler's schedule) or numpy slots (the twin). Kernels call ``refresh(value,
levels)`` before each stage that spends levels (that callable is a
:data:`ckksnet.kernels.Refresh`); the walker's :class:`BootstrapPolicy` behind it decides whether
that value is bootstrapped first:

* :class:`GreedyRefresh` (the compiler's first dry run): bootstrap unless the value has
  ``levels + 1`` left (one kept: OpenFHE cannot bootstrap a spent ciphertext);
* :class:`ScheduledRefresh` (every run of a compiled plan): follow the plan's schedule, call by
  call: bootstrap where it says and lower the result to the level it says; a call the schedule
  does not bootstrap must find its levels, else :class:`ckksnet.LevelError`.

A refreshed value replaces the original for every later reader (a block's shortcut and
residual addition use the copy its first convolution bootstrapped).
"""
from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from ckksnet.core.memory import peak_rss_gb, rss_gb, trim
from ckksnet.core.tiles import Tiles, tiled
from ckksnet.errors import LevelError


@dataclass
class StepReport:
    """One step of a run. Times in seconds, levels = levels left, memory in GiB
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


class BootstrapPolicy:
    """When to bootstrap: called as ``policy(value, levels)`` (a :data:`ckksnet.kernels.Refresh`),
    it returns the value with at least ``levels`` levels left. Counts bootstraps (one per ciphertext: a value over k ciphertexts takes k) and their
    seconds; subclasses decide when to bootstrap. A decision covers all of a value's tiles."""

    def __init__(self, ev):
        self.ev = tiled(ev)
        self.count, self.seconds = 0, 0.0

    def _bootstrap(self, ct, levels_left: int | None):
        if isinstance(ct, Tiles):
            return Tiles(self._bootstrap(c, levels_left) for c in ct)
        t = time.time()
        fresh = self.ev.bootstrap(ct)
        if levels_left is not None and levels_left < self.ev.levels_left(fresh):
            fresh = self.ev.drop_levels(fresh, levels_left)
        self.count += 1
        self.seconds += time.time() - t
        return fresh


class GreedyRefresh(BootstrapPolicy):
    """Bootstrap when fewer than ``levels + 1`` are left; records each call's decision: the
    number of ciphertexts it bootstrapped (0: none)."""

    def __init__(self, ev):
        super().__init__(ev)
        self.decisions: list[int] = []

    def __call__(self, ct, levels: int):
        keep = self.ev.levels_left(ct) >= levels + 1
        self.decisions.append(0 if keep else len(ct) if isinstance(ct, Tiles) else 1)
        if keep:
            self.ev.require_levels(ct, levels + 1, "a stage")  # the dry run records this margin
            return ct
        return self._bootstrap(ct, None)


class ScheduledRefresh(BootstrapPolicy):
    """Follows ``decisions``: per refresh call in run order, None (no bootstrap: the value must
    have ``levels + 1`` left) or the levels to lower the bootstrapped value to."""

    def __init__(self, ev, decisions: list[int | None]):
        super().__init__(ev)
        self.decisions = list(decisions)
        self.calls = 0

    def __call__(self, ct, levels: int):
        if self.calls >= len(self.decisions):
            raise LevelError("the run asked for more refresh points than the plan's schedule holds "
                             "(the plan and its schedule disagree)")
        decision = self.decisions[self.calls]
        self.calls += 1
        if decision is None:
            self.ev.require_levels(ct, levels + 1, "a stage the schedule does not bootstrap")
            return ct
        return self._bootstrap(ct, decision)


def walk(plan, ev, x, refresh: BootstrapPolicy, report: RunReport | None = None, *, progress: Callable | None = None,
         on_step: Callable | None = None, after_step: Callable | None = None,
         free_memory: bool = False):
    """Run ``plan``'s steps on ``x`` (the packed input as ``ev`` represents it) through ``ev``.

    ``report``: one StepReport per step is appended. ``progress``: a bar factory called as
    ``progress(steps, desc=..., unit="step")`` (``tqdm``; the runtime passes it), or None.
    ``on_step(i, n, name)``: called before each
    step (progress for services). ``after_step(i, step, inputs, output)``: may return a
    replacement output (the twin's noise model) or None. ``free_memory``: collect and trim after
    each step (ciphertexts are large; numpy slots and traced levels are not).
    """
    ev = tiled(ev)  # values over several ciphertexts run tile by tile
    vals = {plan.input: x}
    last = plan.last_use()
    n = len(plan.steps)
    bar = progress(plan.steps, desc="encrypted inference", unit="step") if progress else None
    for i, (step, ins, out) in enumerate(bar if bar is not None else plan.steps):
        if bar is not None:
            bar.set_postfix_str(step.name)
        if on_step is not None:
            on_step(i, n, step.name)
        boots, boot_s = refresh.count, refresh.seconds

        def step_refresh(c, levels):
            fresh = refresh(c, levels)
            if fresh is not c:
                for v in ins:  # later readers of this value get the refreshed copy too
                    if vals.get(v) is c:
                        vals[v] = fresh
            return fresh

        level_in = min(ev.levels_left(vals[v]) for v in ins)
        switches = sum(ev.key_switches.values())
        t0 = time.time()
        inputs = [vals[v] for v in ins]
        result = step.evaluate(ev, inputs, step_refresh)
        if after_step is not None:
            replaced = after_step(i, step, inputs, result)
            result = result if replaced is None else replaced
        vals[out] = result
        del inputs
        if report is not None:
            report.steps.append(StepReport(
                step.name, step.kind, time.time() - t0, level_in, ev.levels_left(result),
                refresh.count - boots, refresh.seconds - boot_s, len(step.rotations()),
                peak_rss_gb() if free_memory else 0.0,
                key_switches=sum(ev.key_switches.values()) - switches))
        for v in ins:
            if last.get(v) == i and v != plan.output:
                vals.pop(v, None)  # free values no later step reads
        if free_memory:
            gc.collect()  # a cycle anywhere (a kernel's closure) would keep ciphertexts alive
            trim()
            if report is not None:
                report.steps[-1].rss_gb = rss_gb()
    return vals[plan.output]
