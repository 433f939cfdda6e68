"""The evaluator interface: every operation a kernel may perform on an encrypted value.

A kernel's algorithm is written once against :class:`Evaluator` and runs on three
implementations (tinygrad's idea: one small core, a reference backend behind the same interface
as the real one):

* :class:`ckksnet.backend.CkksServer` -- OpenFHE ciphertexts (the real run; no secret key);
* :class:`ckksnet.core.tracer.LevelTracer` -- values that carry only levels (the compiler's
  schedule: where bootstraps fall, key switches, estimated seconds);
* :class:`ckksnet.core.slots.SlotEvaluator` -- plain float64 slot vectors, a batch at a time
  (the cleartext twin).

Units: ``levels`` are levels left (rescales a value can still take); rotation ``k`` moves slot
i + k to slot i (a left rotation by k slots, indices taken mod ``slots``). Plaintext operands are
1-D float arrays of ``slots`` values or Python floats. An evaluator with ``levels_only = True`` (the
tracer) never reads plaintext values: a kernel may pass None for them there (the linear map skips
building its diagonals in dry runs). :meth:`Evaluator.shortcut` lets an evaluator on cleartext
slots (the fast twin) replace a kernel's algorithm by an equivalent plain function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

import numpy as np

Ciphertext = Any  #: a ciphertext as an evaluator represents it (a plan's tensors are core.plan.Value)


@runtime_checkable
class Evaluator(Protocol):
    """What kernels may call; nothing more. ``key_switches`` counts {"rotations",
    "relinearizations"} done by kernels (bootstrapping's own are not counted)."""

    slots: int
    key_switches: dict
    #: True: values carry levels only; plaintext operands are never read (may be None)
    levels_only: bool

    def levels_left(self, ct: Ciphertext) -> int:
        """Levels ``ct`` can still spend."""

    def require_levels(self, ct: Ciphertext, needed: int, what: str = "operation") -> None:
        """Raise :class:`ckksnet.LevelError` unless ``ct`` has ``needed`` levels left."""

    def add(self, a: Ciphertext, b: Ciphertext | np.ndarray | float) -> Ciphertext:
        """a + b (b: a value, a plaintext vector or a scalar); no level."""

    def sub(self, a: Ciphertext, b: Ciphertext | np.ndarray | float) -> Ciphertext:
        """a - b; no level."""

    def add_many(self, cts: list) -> Ciphertext:
        """The sum of one or more values; no level."""

    def add_inplace(self, acc: Ciphertext, b: Ciphertext) -> Ciphertext:
        """acc += b, for an ``acc`` the caller made and owns; returns acc."""

    def mul(self, a: Ciphertext, b: Ciphertext | np.ndarray | float) -> Ciphertext:
        """a * b, relinearized; spends one level (a ciphertext product pays one key switch)."""

    def mul_lazy(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        """a * b of two values, not relinearized: may only be added until :meth:`relinearize`."""

    def relinearize(self, ct: Ciphertext) -> Ciphertext:
        """Back to two elements (one key switch if it had three)."""

    def rescale(self, ct: Ciphertext) -> Ciphertext:
        """Rescale a pending product now; levels left unchanged."""

    def dot(self, pairs: Iterable[tuple[Ciphertext, np.ndarray]]) -> Ciphertext:
        """sum_i ct_i * v_i for plaintext vectors v_i; one level."""

    def rotate_composed(self, ct: Ciphertext, ks: Iterable[int]) -> dict[int, Ciphertext]:
        """{k: rot(ct, k)} for each k, chained from the rotation keys present (hoisted first hops)."""

    def bootstrap(self, ct: Ciphertext) -> Ciphertext:
        """Refresh to ``levels_after_bootstrap`` levels; values must lie in [-1, 1]."""

    def drop_levels(self, ct: Ciphertext, levels_left: int) -> Ciphertext:
        """Lower ``ct`` to exactly ``levels_left`` levels."""

    def shortcut(self, ct: Ciphertext, fn, levels: int) -> Ciphertext | None:
        """``fn(slots)`` spending ``levels`` levels, where this evaluator holds cleartext slots
        and takes shortcuts (the fast twin); else None, and the kernel runs its algorithm. ``fn``
        maps (batch, slots) or (slots,) float64 to the same shape."""


#: the methods above, for tests that check each implementation offers all of them
METHODS = ("levels_left", "require_levels", "add", "sub", "add_many", "add_inplace", "mul", "mul_lazy",
           "relinearize", "rescale", "dot", "rotate_composed", "bootstrap", "drop_levels", "shortcut")

@dataclass
class Conformance:
    """What the conformance suite needs of one evaluator: the evaluator, ``encode(vector,
    levels)`` -> a fresh value with that many levels, ``decode(value)`` -> its slots (None where
    values carry no data, as levels only), and the largest |error| against exact numpy slots it
    promises before and after a bootstrap."""

    evaluator: Evaluator
    encode: Callable[[np.ndarray, int], Ciphertext]
    decode: Callable[[Ciphertext], np.ndarray] | None = None
    tolerance: tuple[float, float] = (0.0, 0.0)


#: name -> factory(preset, rotation_keys) -> :class:`Conformance`, for every evaluator the
#: conformance suite (tests/test_evaluators.py) must pass; a backend adds its own on import
EVALUATORS: dict[str, Callable] = {}


def register_evaluator(name: str) -> Callable:
    """Decorator: register a conformance factory ``(preset, rotation_keys) -> Conformance``."""
    def deco(factory: Callable) -> Callable:
        EVALUATORS[name] = factory
        return factory
    return deco
