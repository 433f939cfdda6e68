"""A trainable polynomial activation (:class:`ckksnet.nn.PolyAct`) as a plan step.

The module computes p(x) = sum_k w_k (x / B)^k (degree d = 2, 3 or 4; B its own basis bound).
The step's input is stored as u = x / S_in (S_in: the calibrated max |x| times the margin, so
|u| <= 1 and a bootstrap before the step is safe) and its output as y / S_out. :meth:`finalize`
rebases the coefficients to u and divides them by S_out: q_k = w_k (S_in / B)^k / S_out.

Evaluation (one algorithm on every evaluator; levels spent):

* d = 2: u (q2 u + q1) + q0: 2 levels (a scalar product, then the ciphertext product); or,
  **folded**, 1 level: when the step's output is read by linear maps only (a convolution, a
  dense layer), the output is stored divided by a S_in^2 instead of S_out (a = w2 / B^2 > 0, the
  leading coefficient in x): u (u + q1 / q2) + q0 / q2, and the next linear map takes the factor
  (its matrix is multiplied by the output's scale, as for every value). The compiler decides
  (:meth:`free_output`, called by :func:`ckksnet.compiler.phases.finalize`; where a residual
  addition reads it too, :func:`ckksnet.compiler.lower_poly.split_poly_readers` routes the
  addition through an identity linear step first); to keep the
  folded output inside [-1, 1] too (a bootstrap may fall before the next map), the step asks for
  an input scale S_in >= sqrt(max |p| / a) (:meth:`input_bound`): |u| stays below 1.
* d = 3: u^2 (q3 u + q2) + q1 u + q0: 2 levels.
* d = 4: u^2 (q4 u^2 + q3 u + q2) + q1 u + q0: 3 levels (= ceil(log2 4) + 1).

The constant term is added on the layout's used slots only (a plaintext mask): the slots a layout
leaves empty must stay zero for the next linear map's replication. The twin's range check
(``domain``) reports inputs beyond S_in, as for a ReLU: the polynomial itself is exact at any
input, but a stored value beyond [-1, 1] breaks bootstrapping.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ckksnet.approx.poly import check_degree, max_abs, rebase
from ckksnet.kernels.base import Kernel, activation_bound


@dataclass
class PolyStep(Kernel):
    """``coefficients``: w_0..w_d in the basis x / ``bound`` (the module's); ``layout``: the
    input's slot layout (the constant term goes on its used slots); ``q``: the coefficients the
    algorithm uses (set by :meth:`finalize`); ``fold``: degree 2 in one level, its output stored
    divided by ``output_scale``."""

    name: str
    coefficients: tuple = ()
    bound: float = 1.0
    layout: Any = None
    q: tuple = ()
    fold: bool = False
    output_scale: float | None = None
    input_scale: float = 0.0  # S_in, set by finalize: inputs beyond it are reported (twin, fidelity)
    domain = 1.0  # stored inputs u = x / S_in must lie in [-1, 1]: the twin reports any beyond
    approximates = "polynomial"  # exact, but only for inputs within its bound: fidelity reports them
    _mask: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.coefficients = tuple(float(c) for c in self.coefficients)
        check_degree(len(self.coefficients) - 1)
        if not np.all(np.isfinite(self.coefficients)) or not np.isfinite(self.bound) or self.bound <= 0:
            raise ValueError(f"{self.name}: polynomial coefficients and bound must be finite (bound > 0)")

    @property
    def kind(self) -> str:
        """"poly2", "poly3" or "poly4" (what ``ckksnet plan`` shows)."""
        return f"poly{self.degree}"

    @property
    def degree(self) -> int:
        return len(self.coefficients) - 1

    @property
    def leading(self) -> float:
        """a: the x^2 coefficient of a degree-2 polynomial (in x itself)."""
        return self.coefficients[2] / self.bound ** 2

    # ------------------------------------------------------------ scales
    def _own_bound(self, ranges: dict, margin: float) -> float:
        return activation_bound(self.name, ranges, margin, "polynomial activation")

    def input_bound(self, ranges: dict, margin: float) -> float:
        own = self._own_bound(ranges, margin)
        if self.degree == 2 and self.leading > 0:  # the folded output p / (a S^2) must stay in [-1, 1]
            peak = max_abs(rebase(self.coefficients, self.bound, own))
            return max(own, float(np.sqrt(peak / self.leading)))
        return own

    def output_bound(self, ranges: dict, margin: float) -> float:
        """max |p(x)| for |x| <= the input's bound: the scale the output needs (stored in [-1, 1])."""
        return max(max_abs(rebase(self.coefficients, self.bound, self.input_bound(ranges, margin))), 1e-6)

    def free_output(self) -> "PolyStep":
        """Told by the compiler that only linear maps read the output (its scale is theirs to
        fold): degree 2 with a > 0 then folds its leading coefficient there (one level)."""
        return replace(self, fold=self.degree == 2 and self.leading > 0)

    def finalize(self, scale_in: float, scale_out: float, options) -> "PolyStep":
        c = rebase(self.coefficients, self.bound, scale_in)  # p as a polynomial of u = x / S_in
        if self.fold:
            out = float(c[2])  # = a S_in^2 > 0
            return replace(self, q=tuple(float(v) for v in c / out), output_scale=out, input_scale=float(scale_in))
        return replace(self, q=tuple(float(v) for v in c / scale_out), output_scale=None,
                       input_scale=float(scale_in))

    def levels(self) -> int:
        if self.degree == 2:
            return 1 if self.fold else 2
        return 2 if self.degree == 3 else 3

    # ------------------------------------------------------------ the algorithm
    def _constant(self, ev, c0: float):
        """c0 on the layout's used slots, 0 elsewhere (a scalar where the layout is unknown)."""
        if self.layout is None or c0 == 0.0:
            return c0
        if self._mask is None:
            n = getattr(self.layout, "ciphertexts", 1) * self.layout.slots
            mask = np.zeros(n)
            mask[np.asarray(self.layout.index).ravel()] = 1.0
            self._mask = mask
        return None if ev.levels_only else self._mask * c0

    def _add_constant(self, ev, x, c0: float):
        if c0 == 0.0:
            return x
        return ev.add(x, self._constant(ev, c0) if self.layout is not None else c0)

    def plain(self, u: np.ndarray) -> np.ndarray:
        """The step on stored slots less its constant term (the twin's fast form)."""
        q = self.q
        out = np.zeros_like(u) + q[-1]
        for c in q[-2:0:-1]:
            out = out * u + c
        return out * u

    def evaluate(self, ev, inputs, refresh):
        if not self.q:
            raise ValueError(f"{self.name}: the polynomial step is not finalized")
        u = refresh(inputs[0], self.levels())
        fast = ev.shortcut(u, self.plain, self.levels())
        if fast is not None:
            return self._add_constant(ev, fast, self.q[0])
        q = self.q
        if self.degree == 2:
            if self.fold:  # q2 = 1: u (u + q1) + q0
                h = ev.add(u, q[1]) if q[1] != 0.0 else u
            else:
                h = ev.add(ev.mul(u, q[2]), q[1])
            return self._add_constant(ev, ev.mul(u, h), q[0])
        u2 = ev.mul(u, u)
        if self.degree == 3:
            h = ev.add(ev.mul(u, q[3]), q[2])
        else:
            h = ev.add(ev.add(ev.mul(u2, q[4]), ev.mul(u, q[3])), q[2])
        out = ev.add(ev.mul(u2, h), ev.mul(u, q[1]))
        return self._add_constant(ev, out, q[0])
