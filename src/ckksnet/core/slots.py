"""The numpy slot evaluator: the evaluator interface on plain float64 slot vectors (the twin).

A :class:`SlotVector` holds a batch of slot vectors, shape (batch, slots) or (slots,), and the
levels it would have left if it were a ciphertext, so the twin checks every level decision the
encrypted run makes. Bare numpy arrays are accepted too and carry no level (the approximation
generator evaluates polynomials on them). Rotation k: ``np.roll(x, -k)``, as in CKKS.

``fast=True`` lets a kernel replace its algorithm by an equivalent plain function (a linear map
by one sparse product instead of baby-step giant-step rotations) through :meth:`apply`; the
twin uses it, and the tests check it against the algorithm itself (``fast=False``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ckksnet.core.evaluator import Conformance, register_evaluator
from ckksnet.errors import LevelError, ShapeError

UNLIMITED = 1 << 30  #: the level of a bare array


@dataclass
class SlotVector:
    """Slot values (batch, slots) with the levels a ciphertext would have left; ``elements``
    is 3 for an unrelinearized product."""

    data: np.ndarray
    level: int
    elements: int = 2


class SlotEvaluator:
    """:class:`ckksnet.core.evaluator.Evaluator` on float64 slots. Counts ciphertext products
    and key switches as the encrypted run makes them (rotations: one per index asked for)."""

    def __init__(self, slots: int | None = None, levels_after_bootstrap: int = UNLIMITED, fast: bool = False):
        self.slots = slots
        self.levels_after_bootstrap = levels_after_bootstrap
        self.fast = fast
        self.levels_only = False
        self.key_switches = {"rotations": 0, "relinearizations": 0}
        self.products = 0  #: ciphertext x ciphertext products
        self.bootstraps = 0

    # ---------------------------------------------------------------- values
    @staticmethod
    def _data(x):
        return x.data if isinstance(x, SlotVector) else x

    @staticmethod
    def _level(x) -> int:
        return x.level if isinstance(x, SlotVector) else UNLIMITED

    def _wrap(self, data, level: int, elements: int = 2, like=()):
        if level < 0:
            raise LevelError("a value ran out of levels")
        if not any(isinstance(v, SlotVector) for v in like):
            return data
        return SlotVector(data, level, elements)

    def fresh(self, data: np.ndarray, levels_left: int) -> SlotVector:
        """A value as the client would encrypt it, with ``levels_left`` levels."""
        return SlotVector(np.asarray(data, dtype=np.float64), levels_left)

    def levels_left(self, ct) -> int:
        return self._level(ct)

    def require_levels(self, ct, needed: int, what: str = "operation") -> None:
        have = self._level(ct)
        if have < needed:
            raise LevelError(f"{what} needs {needed} level(s); the value has {have} left (bootstrap it first)")

    # ---------------------------------------------------------------- arithmetic
    def _binary(self, a, b, op, spent: int = 0, elements: int = 2):
        level = min(self._level(a), self._level(b)) - spent
        return self._wrap(op(self._data(a), self._data(b)), level, elements, (a, b))

    def add(self, a, b):
        el = max(getattr(a, "elements", 2), getattr(b, "elements", 2))
        return self._binary(a, b, np.add, 0, el)

    def sub(self, a, b):
        el = max(getattr(a, "elements", 2), getattr(b, "elements", 2))
        return self._binary(a, b, np.subtract, 0, el)

    def add_many(self, cts: list):
        if not cts:
            raise ShapeError("add_many needs at least one value")
        out = cts[0]
        for c in cts[1:]:
            out = self.add(out, c)
        return out

    def add_inplace(self, acc, b):
        return self.add(acc, b)

    def mul(self, a, b):
        """a * b; a ciphertext product (b a SlotVector, or both bare arrays of the same shape
        in polynomial evaluation) counts one product and one relinearization."""
        self.require_levels(a, 1, "multiplication")
        if isinstance(b, SlotVector) or (not isinstance(a, SlotVector) and isinstance(b, np.ndarray)
                                         and np.shape(b) == np.shape(a)):
            self.products += 1
            self.key_switches["relinearizations"] += 1
        return self._binary(a, b, np.multiply, 1)

    def mul_lazy(self, a, b):
        self.require_levels(a, 1, "multiplication")
        self.require_levels(b, 1, "multiplication")
        self.products += 1
        return self._binary(a, b, np.multiply, 1, 3)

    def relinearize(self, ct):
        if getattr(ct, "elements", 2) > 2:
            self.key_switches["relinearizations"] += 1
            return SlotVector(ct.data, ct.level)
        if not isinstance(ct, SlotVector):  # bare arrays do not know they are products
            self.key_switches["relinearizations"] += 1
        return ct

    def rescale(self, ct):
        return ct

    def dot(self, pairs: Iterable):
        out = None
        for ct, vec in pairs:
            term = self.mul(ct, vec)
            out = term if out is None else self.add(out, term)
        if out is None:
            raise ShapeError("dot needs at least one (value, vector) pair")
        return out

    # ---------------------------------------------------------------- rotations, levels
    def rotate_composed(self, ct, ks: Iterable[int]) -> dict:
        out = {}
        for k in dict.fromkeys(int(k) for k in ks):
            if k % (self.slots or np.shape(self._data(ct))[-1]):
                self.key_switches["rotations"] += 1
            out[k] = self._wrap(np.roll(self._data(ct), -k, axis=-1), self._level(ct), 2, (ct,))
        return out

    def bootstrap(self, ct):
        self.require_levels(ct, 1, "bootstrapping")
        self.bootstraps += 1
        return self._wrap(self._data(ct), self.levels_after_bootstrap, 2, (ct,))

    def drop_levels(self, ct, levels_left: int):
        if levels_left > self._level(ct):
            raise LevelError(f"cannot raise a value from {self._level(ct)} to {levels_left} levels")
        return self._wrap(self._data(ct), levels_left, 2, (ct,))

    # ---------------------------------------------------------------- the fast path
    def shortcut(self, ct, fn: Callable[[np.ndarray], np.ndarray], levels: int):
        """fn(slots) spending ``levels`` levels: a kernel's equivalent plain form (with ``fast``;
        None otherwise, so that the kernel's algorithm runs as written)."""
        if not self.fast:
            return None
        self.require_levels(ct, levels)
        return self._wrap(fn(self._data(ct)), self._level(ct) - levels, 2, (ct,))


@register_evaluator("numpy-slots")
def _conformance(preset, rotation_keys) -> Conformance:
    ev = SlotEvaluator(preset.slots, preset.levels_after_bootstrap, fast=False)
    return Conformance(ev, ev.fresh, lambda v: v.data)
