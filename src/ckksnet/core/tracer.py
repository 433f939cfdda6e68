"""The level-only tracer: the evaluator interface on values that carry only levels.

The compiler's schedule phase runs the plan's own kernels on a :class:`LevelTracer` (a dry run,
no CKKS) to find where every bootstrap falls, how far each fresh ciphertext can be lowered,
each step's levels in and out, its key switches (rotations chained from the keys the plan
assumes, as :meth:`ckksnet.backend.CkksServer.rotate_composed` makes them) and its estimated
seconds under a :class:`ckksnet.core.costs.CostModel`.

Slack: levels combine by min and fall by one per product, so a value's level is min over the
fresh ciphertexts o it derives from (bootstrap number, or -1 for the input) of L_o - drop_o, where
L_o is what o's path alone leaves; :class:`TracedCt` carries L_o per origin. Every check a real
run makes (a kernel's levels, a stage passing the bootstrapping policy, one level kept for
bootstrapping, no level below zero) bounds drop_o <= L_o - needed, so lowering each fresh
ciphertext by its slack keeps every decision of the run.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable

from ckksnet.core.evaluator import Conformance, register_evaluator
from ckksnet.errors import LevelError, MissingKeyError
from ckksnet.layout.rotations import compose_rotations

INPUT = -1  #: origin of the client's ciphertext; bootstraps are numbered 0, 1, ... in run order


@dataclass
class TracedCt:
    """A value as the tracer sees it: {origin: L_o} (its level is the least L_o) and 3
    elements for an unrelinearized product."""

    levels: dict
    elements: int = 2

    @property
    def left(self) -> int:
        return min(self.levels.values())

    def copy(self) -> "TracedCt":
        return TracedCt(dict(self.levels), self.elements)


class LevelTracer:
    """:class:`ckksnet.core.evaluator.Evaluator` on levels only.

    ``keys``: rotation indices (mod slots) whose keys the run will have; rotations are chained
    from them and unreachable ones raise :class:`MissingKeyError` (None: any rotation is one key
    switch). ``costs``: a CostModel; :attr:`seconds` accumulates the estimate.
    """

    levels_only = True  # kernels may skip building plaintext values (only their count matters)

    def __init__(self, preset, keys: Iterable[int] | None = None, costs=None):
        self.preset = preset
        self.slots = preset.slots
        self.keys = None if keys is None else frozenset(int(k) % self.slots for k in keys)
        self.costs = costs
        self.key_switches = {"rotations": 0, "relinearizations": 0}
        self.seconds = 0.0
        self.bootstraps = 0
        self.slack: dict[int, int] = {}
        self._boots = itertools.count()

    # -------------------------------------------------------------- bookkeeping
    def _cost(self, op: str, level: int, count: int = 1) -> None:
        if self.costs is not None:
            self.seconds += count * self.costs.seconds(op, level)

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
            raise LevelError("dry run: a value ran out of levels")
        self._bound(out, 0)
        return out

    @staticmethod
    def _cts(*args) -> list[TracedCt]:
        return [a for a in args if isinstance(a, TracedCt)]

    def fresh(self, levels_left: int) -> TracedCt:
        """The client's ciphertext with ``levels_left`` levels."""
        return TracedCt({INPUT: levels_left})

    def slack_of(self, origin: int) -> int:
        return max(0, self.slack.get(origin, 0))

    # -------------------------------------------------------------- the evaluator interface
    def levels_left(self, ct: TracedCt) -> int:
        return ct.left

    def require_levels(self, ct: TracedCt, needed: int, what: str = "operation") -> None:
        if ct.left < needed:
            raise LevelError(f"{what} needs {needed} level(s); the value has {ct.left} left")
        self._bound(ct, needed)

    def add(self, a, b):
        cts = self._cts(a, b)
        self._cost("add", cts[0].left)
        return self._new(cts, 0, max(c.elements for c in cts))

    sub = add

    def add_many(self, cts):
        cts = list(cts)
        self._cost("add", min(c.left for c in cts), len(cts) - 1)
        return self._new(cts, 0, max(c.elements for c in cts))

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
            self._cost("product", min(c.left for c in cts))
            self._cost("relinearization", min(c.left for c in cts) - 1)
        else:
            self._cost("scalar_product" if not hasattr(b, "__len__") else "plain_product", cts[0].left)
        return self._new(cts, 1)

    def mul_lazy(self, a, b):
        for c in (a, b):
            self.require_levels(c, 1, "multiplication")
        self._cost("product", min(a.left, b.left))
        return self._new([a, b], 1, elements=3)

    def relinearize(self, ct):
        if ct.elements > 2:
            self.key_switches["relinearizations"] += 1
            self._cost("relinearization", ct.left)
        return self._new([ct])

    def rescale(self, ct):
        return ct.copy()

    def dot(self, pairs):
        cts = []
        for ct, _ in pairs:
            self.require_levels(ct, 1, "multiplication")
            self._cost("plain_product", ct.left)
            cts.append(ct)
        return self._new(cts, 1)

    def rotate_composed(self, ct: TracedCt, ks):
        ks = list(dict.fromkeys(int(k) for k in ks))
        if self.keys is None:
            switches = len({k % self.slots for k in ks} - {0})
        else:
            first, further = compose_rotations(self.slots, self.keys, ks, "rotation keys the plan assumes")
            switches = len(first) + len(further)
        self.key_switches["rotations"] += switches
        self._cost("rotation", ct.left, switches)
        return {k: ct.copy() for k in ks}

    def bootstrap(self, ct: TracedCt) -> TracedCt:
        if not self.preset.bootstrap:
            raise MissingKeyError(f"preset {self.preset.name!r} has bootstrapping off")
        self.require_levels(ct, 1, "bootstrapping")
        self.bootstraps += 1
        self._cost("bootstrap", self.preset.levels_after_bootstrap)
        return TracedCt({next(self._boots): self.preset.levels_after_bootstrap})

    def shortcut(self, ct: TracedCt, fn, levels: int) -> None:
        return None  # the algorithm runs, so that its key switches and costs are counted

    def drop_levels(self, ct: TracedCt, levels_left: int) -> TracedCt:
        if levels_left > ct.left:
            raise LevelError(f"cannot raise a value from {ct.left} to {levels_left} levels")
        return self._new([ct], ct.left - levels_left)


@register_evaluator("levels-only")
def _conformance(preset, rotation_keys) -> Conformance:
    ev = LevelTracer(preset, rotation_keys)
    return Conformance(ev, lambda vector, levels: ev.fresh(levels))
