"""ReLU from a composite sign approximation: ReLU_B(x) = B * r(x / B), r(t) = (t + t p(t)) / 2.

Error (p approximates sgn within 2^-alpha on [eps, 1], t = x / B, |t| <= 1):

* |x| >= eps B:  |ReLU_B(x) - ReLU(x)| = |x| |p(t) - sgn(t)| / 2 <= |x| 2^-(alpha+1) <= B 2^-(alpha+1).
* |x| <  eps B:  |ReLU_B(x) - ReLU(x)| <= |x| (1 + M) / 2 < eps B (1 + M) / 2, with
  M = max |p| on [-eps, eps] (about 1; :meth:`ReluApprox.near_zero_gain` measures it).

So the error near zero, eps B / 2 or so, dominates: with eps = 2^-9 and B = 20 it is 0.02.
Inputs with |x| > B are outside the fitted range: the polynomial diverges there. The cleartext
twin counts them in a :class:`RangeReport`; nothing is clipped.

Levels: the sign spends ``sign.depth``; the product with x one more. The 1/2 is folded into the
last component. An input already divided by B (the compiler folds 1/B into the layer before)
saves the level of that scalar product.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ckksnet.approx.composite import DEFAULT_EPS_BITS, CompositeSign, load_table
from ckksnet.approx.evaluate import depth_of, eval_odd
from ckksnet.errors import ApproxError


@dataclass
class RangeReport:
    """Counts of inputs outside [-B, B] seen by the twin (per call site, accumulated)."""

    total: int = 0
    outside: int = 0
    max_ratio: float = 0.0  # max |x| / B seen

    def add(self, x: np.ndarray, bound: float) -> None:
        ratio = np.abs(x) / bound
        self.total += int(ratio.size)
        self.outside += int(np.count_nonzero(ratio > 1))
        if ratio.size:
            self.max_ratio = max(self.max_ratio, float(ratio.max()))


@dataclass(frozen=True)
class ReluApprox:
    """A ReLU approximation for inputs in [-bound, bound] (bound is B, in activation units)."""

    sign: CompositeSign
    bound: float
    _half: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not np.isfinite(self.bound) or self.bound <= 0:
            raise ApproxError(f"ReLU bound B must be a positive finite number, got {self.bound}")
        comps = list(self.sign.components)
        comps[-1] = tuple(0.5 * c for c in comps[-1])  # fold the 1/2 of (1 + p) / 2
        object.__setattr__(self, "_half", tuple(comps))

    @classmethod
    def from_table(cls, alpha: int, bound: float, eps_bits: int = DEFAULT_EPS_BITS) -> "ReluApprox":
        """Use a shipped sign table; raises :class:`ApproxError` if there is none for alpha."""
        try:
            return cls(load_table(alpha, eps_bits), bound)
        except ValueError as exc:
            raise ApproxError(str(exc)) from exc

    def depth(self, prescaled: bool = False) -> int:
        """Levels one evaluation spends (``prescaled``: input already divided by B)."""
        return self.sign.depth + (1 if prescaled else 2)

    @property
    def stage_depths(self) -> list[int]:
        """Levels of each component, then 1 for the final product (bootstrap boundaries)."""
        return [depth_of(d) for d in self.sign.degrees] + [1]

    def evaluate(self, ev, x: Any, prescaled: bool = False, refresh=None) -> Any:
        """The approximation on any evaluator (:mod:`ckksnet.backend.evaluator`). Without
        ``refresh`` it needs :meth:`depth` levels (raises ``LevelError`` otherwise); with
        ``refresh(value, levels)`` (the plan's bootstrapping schedule) values may be bootstrapped
        between stages: the stored components map [-1, 1] into [-1, 1], as bootstrapping needs."""
        if refresh is None:
            ev.require_levels(x, self.depth(prescaled), "composite ReLU")
        keep = refresh or (lambda v, levels: v)
        t = x if prescaled else ev.mul(keep(x, 1), 1.0 / self.bound)
        t = keep(t, self.stage_depths[0])
        u = t
        for coeffs, depth in zip(self._half, self.stage_depths):
            u = eval_odd(ev, keep(u, depth), coeffs)
        factor = t if prescaled else keep(x, 1)
        return ev.mul(factor, ev.add(keep(u, 1), 0.5))  # x (1 + p) / 2

    def twin(self, x: np.ndarray, report: RangeReport | None = None, prescaled: bool = False) -> np.ndarray:
        """float64 evaluation, the same operations as :meth:`encrypted`. Out-of-range inputs are
        counted in ``report`` (if given), never clipped."""
        x = np.asarray(x, dtype=np.float64)
        if report is not None:
            report.add(x, 1.0 if prescaled else self.bound)
        from ckksnet.backend.slots import SlotEvaluator

        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported, not warned
            return self.evaluate(SlotEvaluator(), x, prescaled)

    def encrypted(self, server, ct, prescaled: bool = False, refresh=None):
        """:meth:`evaluate` on a ciphertext through a :class:`ckksnet.backend.CkksServer`."""
        return self.evaluate(server, ct, prescaled, refresh)

    def near_zero_gain(self, points: int = 20_001) -> float:
        """M = max |p(t)| for |t| <= eps (see the module's error bound)."""
        t = np.linspace(-self.sign.eps, self.sign.eps, points)
        return float(np.max(np.abs(self.sign(t))))

    def max_error(self, points: int = 200_001) -> float:
        """Max |ReLU_B(x) - ReLU(x)| over a dense grid of [-B, B], in activation units."""
        x = np.linspace(-self.bound, self.bound, points)
        return float(np.max(np.abs(self.twin(x) - np.maximum(x, 0))))
