"""The base of every kernel: one plan step, its parameters, and its algorithm written once.

A kernel is a dataclass (its fields are its parameters: what a saved plan stores) with:

* ``name``, ``kind``; ``levels()`` (levels one evaluation spends); ``rotations()`` (indices it
  rotates by);
* ``shares_scale``: True if input(s) and output carry the same scale (activations, additions);
* ``input_bound(ranges, margin)``: the scale its input needs (an activation's bound B, from the
  calibration ``ranges`` {module name: max |input|}), or None;
* ``finalize(scale_in, scale_out, options)``: once scales are known, a kernel with them folded in;
* ``tuned(keys)``: the kernel adapted to the rotation keys present (fewest key switches; the
  result is the same);
* ``variants()``: other kernels computing the same function with another trade of levels
  against work (a linear map in lanes or not); the compiler's optimiser keeps whichever makes the
  whole schedule cheapest (:func:`ckksnet.core.schedule.optimise_variants`);
* ``evaluate(ev, inputs, refresh)``: THE algorithm, on any evaluator (ciphertexts, levels only,
  numpy slots: :mod:`ckksnet.core.evaluator`). ``refresh(value, levels)`` returns the value
  with at least ``levels`` levels left (bootstrapped where the plan's schedule says so); call it
  before each stage that spends levels;
* ``domain``: stored inputs must lie in [-domain, domain] (a polynomial approximation's
  interval), or None; the twin checks it;
* ``approximates``: the activation a kernel approximates by a polynomial (``"relu"``), or None
  where it computes its function exactly; ``approximation_bound(scale_in)``: its bound B. The
  fidelity report covers every step that approximates an activation, whatever its kind.

Subclasses register themselves by class name in :data:`ckksnet.core.encode.PLAN_TYPES` (every
class a plan file may name: kernels and the plan's other parts), so saved plans can name them
(loading a plan with a kernel defined outside ckksnet needs the module that defines it imported
first).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, TYPE_CHECKING

from ckksnet.core.encode import plan_type
from ckksnet.errors import CompileError

#: what a kernel's ``evaluate`` receives as ``refresh``: ``refresh(value, levels)`` returns the value
#: with at least ``levels`` levels left (bootstrapped first where the walker's
#: :class:`~ckksnet.core.walker.BootstrapPolicy` says so)
Refresh = Callable[[Any, int], Any]

if TYPE_CHECKING:
    from ckksnet.core.options import CompileOptions


class Kernel:
    """Defaults shared by most kernels: no activation bound, nothing to fold, no rotations."""

    kind: ClassVar[str] = "kernel"
    shares_scale: ClassVar[bool] = False
    domain: ClassVar[float | None] = None
    #: the activation this kernel approximates by a polynomial ("relu", "silu"), or None where it
    #: computes its function exactly
    approximates: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        plan_type(cls)

    def levels(self) -> int:
        return 0

    def rotations(self) -> set[int]:
        return set()

    def input_bound(self, ranges: dict, margin: float) -> float | None:
        return None

    def finalize(self, scale_in: float, scale_out: float, options: "CompileOptions") -> "Kernel":
        return self

    def tuned(self, keys: frozenset) -> "Kernel":
        return self

    def variants(self) -> list["Kernel"]:
        return []

    def approximation_bound(self, scale_in: float) -> float | None:
        """For a kernel that approximates an activation: the bound B of its inputs (true values) it
        was made for, given its input's scale; by default what its ``domain`` reaches,
        ``scale_in * domain``. None for an exact kernel."""
        if self.approximates is None or self.domain is None:
            return None
        return scale_in * self.domain

    def evaluate(self, ev, inputs: list, refresh: Refresh):
        raise NotImplementedError(f"{type(self).__name__} has no evaluate()")


def activation_bound(name: str, ranges: dict, margin: float, what: str = "activation") -> float:
    """``margin`` x the calibrated max |input| of module ``name`` (an activation's bound B)."""
    if name not in ranges:
        raise CompileError(f"no calibration range for {what} {name!r}")
    return margin * max(ranges[name], 1e-6)
