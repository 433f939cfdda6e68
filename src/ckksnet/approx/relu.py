"""ReLU from a composite sign approximation: ReLU_B(x) = B * r(x / B), r(t) = (t + t p(t)) / 2.

Error (p approximates sgn within 2^-alpha on [eps, 1], t = x / B, |t| <= 1):

* |x| >= eps B:  |ReLU_B(x) - ReLU(x)| = |x| |p(t) - sgn(t)| / 2 <= |x| 2^-(alpha+1) <= B 2^-(alpha+1).
* |x| <  eps B:  |ReLU_B(x) - ReLU(x)| <= |x| (1 + M) / 2 < eps B (1 + M) / 2, with
  M = max |p| on [-eps, eps] (about 1; :meth:`ReluApprox.near_zero_gain` measures it).

So the error near zero, eps B / 2 or so, dominates: with eps = 2^-9 and B = 20 it is 0.02.
Inputs with |x| > B are outside the fitted range: the polynomial diverges there (at 1.01 B the
composite returns about -2e163, and a ciphertext fails to decrypt). The cleartext twin counts
them in a :class:`RangeReport`; nothing is clipped.

**Domain extension** (``extension`` L >= 1, ``compile(..., relu_extension=L)``): the
approximation is accurate on [-L B, L B] instead of [-B, B], for inputs up to L times the
bound B (out-of-distribution inputs), at about ceil(log2 L) more levels (alpha 13, eps 2^-9:
+1, +2, +4 levels for L = 2, 4, 8). The input is divided by L B
instead of B (the compiler folds that into the layer before, so a bootstrap before the first
component still sees values in [-1, 1]) and the sign composite is the minimax one for
[eps / 2^k, 1], k = ceil(log2 L) (its first components fold [-1, 1] back into [-1, 1], keeping
the sign: the cheapest domain-extension step there is, see :meth:`ReluApprox.from_table`).
Its errors, with eps' = 2^-(eps_bits + k) and D = L B:

* |x| >= eps' D:        error <= |x| 2^-(alpha+1)   (also for B < |x| <= L B: at most L B 2^-(alpha+1));
* |x| <  eps' D <= eps B: error < eps' D (1 + M) / 2 <= eps B (1 + M) / 2, as without extension.

So inside [-B, B] the bound is the same as without extension; beyond L B it still diverges.
The price: those levels per ReLU, and every stored activation of a ReLU's scale group
is L times smaller, so CKKS noise (absolute in stored units) is log2 L bits larger relative to
B. Figures: ``benchmarks/relu_extension.py``.

Levels: the sign spends ``sign.depth``; the product with x one more. The 1/2 is folded into the
last component. An input already divided by B (the compiler folds 1/B into the layer before)
saves the level of that scalar product.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import math

import numpy as np

from ckksnet.core.artifact import plan_type
from ckksnet.core.slots import SlotEvaluator
from ckksnet.approx.composite import DEFAULT_EPS_BITS, CompositeSign, load_table
from ckksnet.approx.evaluate import depth_of, eval_odd
from ckksnet.errors import ApproxError


@dataclass
class RangeReport:
    """Inputs seen by the twin (per call site, accumulated): ``outside`` the approximation's
    interval [-L B, L B] (there it diverges), ``beyond_bound`` B (with a domain extension L > 1,
    still within the stated error up to L B), and the largest |x| / B."""

    total: int = 0
    outside: int = 0
    max_ratio: float = 0.0  # max |x| / B seen
    beyond_bound: int = 0

    def add(self, x: np.ndarray, bound: float, extension: float = 1.0) -> None:
        ratio = np.abs(np.asarray(x, dtype=np.float64)) / bound
        self.total += int(ratio.size)
        self.outside += int(np.count_nonzero(~(ratio <= extension)))
        self.beyond_bound += int(np.count_nonzero(~(ratio <= 1)))
        if ratio.size:
            self.max_ratio = max(self.max_ratio, float(np.nanmax(ratio)))


def extension_bits(extension: float) -> int:
    """k = ceil(log2 L): the extra eps bits (and about the extra levels) of a domain extension L.
    Raises :class:`ApproxError` unless L is a finite number >= 1."""
    if isinstance(extension, bool) or not isinstance(extension, (int, float, np.integer, np.floating)) \
            or not math.isfinite(extension) or extension < 1:
        raise ApproxError(f"ReLU domain extension L must be a finite number >= 1 (1: off), got {extension!r}")
    return max(0, math.ceil(math.log2(extension) - 1e-12))


@plan_type
@dataclass(frozen=True)
class ReluApprox:
    """A ReLU approximation for inputs in [-bound, bound] (bound is B, in activation units), or
    in [-L B, L B] with a domain ``extension`` L > 1 (see the module docstring): :attr:`domain`."""

    sign: CompositeSign
    bound: float
    extension: float = 1.0
    _half: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.bound, bool) or not isinstance(self.bound, (int, float, np.integer, np.floating)) \
                or not np.isfinite(self.bound) or self.bound <= 0:
            raise ApproxError(f"ReLU bound B must be a positive finite number, got {self.bound!r}")
        extension_bits(self.extension)
        comps = list(self.sign.components)
        comps[-1] = tuple(0.5 * c for c in comps[-1])  # fold the 1/2 of (1 + p) / 2
        object.__setattr__(self, "_half", tuple(comps))

    @classmethod
    def from_table(cls, alpha: int, bound: float, eps_bits: int = DEFAULT_EPS_BITS,
                   extension: float = 1.0) -> "ReluApprox":
        """Use a shipped sign table; raises :class:`ApproxError` if there is none for alpha.

        ``extension`` L: accurate on [-L B, L B]; the sign table is the one for eps / 2^k,
        k = ceil(log2 L) (``sign_a<alpha>_e<eps_bits + k>.json``): the minimax composite on the
        widened ratio, whose first components are the domain-extension step (odd, low degree,
        mapping [-1, 1] into [-1, 1] with the sign kept). A separate fold polynomial f before the
        unextended composite would need f'(0) >= L with |f| <= 1, hence degree >= L (Bernstein)
        and ceil(log2(L + 1)) levels: 3 for L = 4 where the widened composite spends 2; the cubic
        x - (4/27) x^3 of Cheon et al. widens by 1.5 per 2 levels (7 levels for L = 4).
        """
        k = extension_bits(extension)
        try:
            return cls(load_table(alpha, eps_bits + k), bound, float(extension))
        except ValueError as exc:
            raise ApproxError(str(exc) + (f" (the domain extension L = {extension:g} needs eps bits "
                                          f"{eps_bits} + {k})" if k else "")) from exc

    @property
    def domain(self) -> float:
        """L B: the approximation holds for |x| <= domain (= bound without extension)."""
        return self.bound * self.extension

    @property
    def nominal_eps(self) -> float:
        """Where the near-zero region ends, as a fraction of B: eps' L (<= the eps asked for)."""
        return self.sign.eps * self.extension

    def depth(self, prescaled: bool = False) -> int:
        """Levels one evaluation spends (``prescaled``: input already divided by B)."""
        return self.sign.depth + (1 if prescaled else 2)

    @property
    def stage_depths(self) -> list[int]:
        """Levels of each component, then 1 for the final product (bootstrap boundaries)."""
        return [depth_of(d) for d in self.sign.degrees] + [1]

    def evaluate(self, ev, x: Any, prescaled: bool = False, refresh=None) -> Any:
        """The approximation on any evaluator (:mod:`ckksnet.core.evaluator`); ``prescaled``:
        ``x`` is already divided by :attr:`domain` (L B), and so is the result. Without
        ``refresh`` it needs :meth:`depth` levels (raises ``LevelError`` otherwise); with
        ``refresh(value, levels)`` (the plan's bootstrapping schedule) values may be bootstrapped
        between stages: the stored components map [-1, 1] into [-1, 1], as bootstrapping needs."""
        if refresh is None:
            ev.require_levels(x, self.depth(prescaled), "composite ReLU")
        keep = refresh or (lambda v, levels: v)
        t = x if prescaled else ev.mul(keep(x, 1), 1.0 / self.domain)
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
            if prescaled:  # x / (L B): in units of B, |x| L
                report.add(x * self.extension, 1.0, self.extension)
            else:
                report.add(x, self.bound, self.extension)
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported, not warned
            return self.evaluate(SlotEvaluator(), x, prescaled)

    def encrypted(self, server, ct, prescaled: bool = False, refresh=None):
        """:meth:`evaluate` on a ciphertext through a :class:`ckksnet.backend.CkksServer`."""
        return self.evaluate(server, ct, prescaled, refresh)

    def near_zero_gain(self, points: int = 20_001) -> float:
        """M = max |p(t)| for |t| <= eps (see the module's error bound)."""
        t = np.linspace(-self.sign.eps, self.sign.eps, points)
        return float(np.max(np.abs(self.sign(t))))

    def max_error(self, points: int = 200_001, upto: float | None = None) -> float:
        """Max |ReLU_B(x) - ReLU(x)| over a dense grid of [-upto, upto] (default B), in
        activation units."""
        top = self.bound if upto is None else float(upto)
        x = np.linspace(-top, top, points)
        return float(np.max(np.abs(self.twin(x) - np.maximum(x, 0))))

    def error_bounds(self) -> dict:
        """The stated bounds (module docstring), in activation units: ``inside`` for |x| <= B,
        ``extended`` for B < |x| <= L B (None without extension), ``relative``: error / |x| for
        |x| >= eps' L B, ``near_zero``: for |x| < eps' L B."""
        rel = 2.0 ** -(self.sign.alpha + 1) if self.sign.alpha is not None else self.sign.error / 2
        rel = max(rel, self.sign.error / 2)
        near = self.sign.eps * self.domain * (1 + self.near_zero_gain()) / 2
        return {"relative": rel, "near_zero": near, "inside": max(near, self.bound * rel),
                "extended": self.domain * rel if self.extension > 1 else None}

    def measured_errors(self, points: int = 200_001) -> dict:
        """Max errors on dense grids (float64 twin): ``inside`` |x| <= B; ``extended``
        B < |x| <= L B (absolute and relative to |x|; None without extension)."""
        x = np.linspace(-self.bound, self.bound, points)
        out = {"inside": float(np.max(np.abs(self.twin(x) - np.maximum(x, 0)))),
               "extended": None, "extended_relative": None}
        if self.extension > 1:
            mag = np.linspace(self.bound, self.domain, points)
            x = np.concatenate([-mag, mag])
            err = np.abs(self.twin(x) - np.maximum(x, 0))
            out["extended"] = float(np.max(err))
            out["extended_relative"] = float(np.max(err / np.abs(x)))
        return out
