"""The level schedule: how many levels each fresh ciphertext can drop without changing anything.

A bootstrap returns ``levels_after_bootstrap`` levels, and a fresh encryption ``depth``, but the
computation that follows often needs fewer before the next bootstrap (ResNet-20: the second ReLU
component uses 4 of 7, since the third needs a bootstrap of its own anyway). Every unused level is
an RNS limb that each product, rotation and key switch on that ciphertext pays for, so the
runtime lowers a fresh ciphertext by its *slack* right away (the second component runs about a
third faster), and the client encrypts the input that much lower.

The slack comes from a dry run: the plan's own kernels run on :class:`LevelTracer`, a server
whose "ciphertexts" carry only levels. Levels combine by min (a sum sits at its lower operand's
level) and fall by one per product, so a ciphertext's level is min over the fresh ciphertexts o
it derives from (bootstrap number, or -1 for the input) of L_o - drop_o, where L_o is what o's
path alone would leave; the tracer carries L_o per origin. Each check a real run makes (a
kernel's required levels, a stage passing the bootstrapping policy without a bootstrap, a
bootstrap's one level in reserve, no level below zero) bounds drop_o <= L_o - needed for every
origin, so lowering each fresh ciphertext by its slack keeps every decision of the real run,
bootstraps included.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Iterable

from ckksnet.errors import LevelError

INPUT = -1  #: origin of the client's ciphertext; bootstraps are numbered 0, 1, ... in run order


@dataclass
class TracedCt:
    """A ciphertext as the tracer sees it: {origin: L_o} (its level is the least L_o) and 3
    elements for an unrelinearized product."""

    levels: dict
    elements: int = 2

    @property
    def left(self) -> int:
        return min(self.levels.values())

    def copy(self) -> "TracedCt":
        return TracedCt(dict(self.levels), self.elements)


@dataclass
class LevelSchedule:
    """``input_slack``: levels the input ciphertext can be encrypted below ``depth``;
    ``drops[i]``: levels bootstrap number i (in run order) can drop right away."""

    input_slack: int
    drops: list[int] = field(default_factory=list)

    @property
    def bootstraps(self) -> int:
        return len(self.drops)


class LevelTracer:
    """Duck-types :class:`ckksnet.backend.CkksServer` for a dry run: levels only, no CKKS."""

    def __init__(self, preset, rotations: Iterable[int] = ()):
        self.preset = preset
        self.slots = preset.slots
        self.rotations = set(rotations)
        self.key_switches = {"rotations": 0, "relinearizations": 0}
        self.slack: dict[int, int] = {}
        self._boots = itertools.count()

    # -------------------------------------------------------------- bookkeeping
    def _bound(self, ct: TracedCt, needed: int) -> None:
        """The real run checks that ``ct`` has ``needed`` levels: drop_o <= L_o - needed."""
        for o, level in ct.levels.items():
            self.slack[o] = min(self.slack.get(o, level - needed), level - needed)

    def _new(self, cts: list[TracedCt], spent: int = 0, elements: int = 2) -> TracedCt:
        levels: dict = {}
        for c in cts:
            for o, level in c.levels.items():
                levels[o] = min(levels.get(o, level - spent), level - spent)
        out = TracedCt(levels, elements)
        if out.left < 0:
            raise LevelError("dry run: a ciphertext ran out of levels")
        self._bound(out, 0)
        return out

    @staticmethod
    def _cts(*args) -> list[TracedCt]:
        return [a for a in args if isinstance(a, TracedCt)]

    def fresh(self, levels_left: int) -> TracedCt:
        """The client's ciphertext with ``levels_left`` levels."""
        return TracedCt({INPUT: levels_left})

    def schedule(self) -> LevelSchedule:
        boots = max((o for o in self.slack if o != INPUT), default=-1) + 1
        return LevelSchedule(self.slack.get(INPUT, 0), [self.slack.get(i, 0) for i in range(boots)])

    # -------------------------------------------------------------- the server interface
    def check_ciphertext(self, ct: TracedCt) -> TracedCt:
        return ct

    def levels_left(self, ct: TracedCt) -> int:
        return ct.left

    def require_levels(self, ct: TracedCt, needed: int, what: str = "operation") -> None:
        if ct.left < needed:
            raise LevelError(f"dry run: {what} needs {needed} level(s); the ciphertext has {ct.left}")
        self._bound(ct, needed)

    def add(self, a, b):
        return self._new(self._cts(a, b), 0, max(c.elements for c in self._cts(a, b)))

    sub = add

    def add_many(self, cts):
        return self._new(list(cts), 0, max(c.elements for c in cts))

    def add_inplace(self, acc: TracedCt, b: TracedCt) -> TracedCt:
        out = self.add(acc, b)
        acc.levels, acc.elements = out.levels, out.elements
        return acc

    def mul(self, a, b):
        cts = self._cts(a, b)
        for c in cts:
            self.require_levels(c, 1, "multiplication")
        if len(cts) == 2:
            self.key_switches["relinearizations"] += 1
        return self._new(cts, 1)

    def mul_lazy(self, a, b):
        return self._new([a, b], 1, elements=3)

    def relinearize(self, ct):
        if ct.elements > 2:
            self.key_switches["relinearizations"] += 1
        return self._new([ct])

    def rescale(self, ct):
        return ct.copy()

    def square(self, a):
        return self.mul(a, a)

    def dot(self, pairs):
        cts = [ct for ct, _ in pairs]
        for c in cts:
            self.require_levels(c, 1, "multiplication")
        return self._new(cts, 1)

    def rotate_composed(self, ct, ks):
        return {k: ct.copy() for k in ks}

    def rotate_many(self, ct, ks):
        return self.rotate_composed(ct, ks)

    def rotate(self, ct, k):
        return ct.copy()

    def bootstrap(self, ct: TracedCt) -> TracedCt:
        self.require_levels(ct, 1, "bootstrapping")
        return TracedCt({next(self._boots): self.preset.levels_after_bootstrap})

    def drop_levels(self, ct: TracedCt, levels_left: int) -> TracedCt:
        if levels_left > ct.left:
            raise LevelError(f"cannot raise a ciphertext from {ct.left} to {levels_left} levels")
        return self._new([ct], ct.left - levels_left)


class Refresh:
    """The bootstrapping policy, for a real run and the dry run alike: a stage that needs
    ``levels`` gets its input bootstrapped unless it has ``levels + 1`` left (one in reserve:
    OpenFHE cannot bootstrap a ciphertext with none left); a fresh ciphertext is then lowered by
    its drop in ``schedule``. Counts bootstraps and their seconds."""

    def __init__(self, srv, schedule: LevelSchedule | None = None):
        self.srv, self.schedule = srv, schedule
        self.count, self.seconds = 0, 0.0

    def __call__(self, ct, levels: int):
        srv = self.srv
        if srv.levels_left(ct) >= levels + 1:
            srv.require_levels(ct, levels + 1, "a stage")  # the dry run records this margin
            return ct
        t = time.time()
        fresh = srv.bootstrap(ct)
        if self.schedule is not None and self.count < len(self.schedule.drops):
            fresh = srv.drop_levels(fresh, srv.levels_left(fresh) - self.schedule.drops[self.count])
        self.count += 1
        self.seconds += time.time() - t
        return fresh


def trace_levels(net) -> LevelSchedule:
    """Dry-run ``net`` (a :class:`ckksnet.compiler.Plan`) on a :class:`LevelTracer`: its schedule."""
    from ckksnet.runtime import execute

    tracer = LevelTracer(net.preset)
    execute(net, tracer, tracer.fresh(net.preset.depth), Refresh(tracer), free_memory=False)
    return tracer.schedule()
