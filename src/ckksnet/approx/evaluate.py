"""Depth-optimal evaluation of odd Chebyshev series, written once against the evaluator interface.

The same routine runs on ciphertexts (:class:`ckksnet.backend.CkksServer`), on levels only (the
compiler's tracer) and on float64 slots or bare arrays
(:class:`ckksnet.core.slots.SlotEvaluator`, the cleartext twin), so all perform the same
operations on the same coefficients in the same order. It uses ``mul`` (by a value or a
scalar), ``mul_lazy``, ``relinearize`` and ``add`` (a value or a scalar).

Method: a polynomial p of degree d < 2^m is split as p = q0 + T_k * q1 with k = 2^(m-1)
(Chebyshev division, T_(k+j) = 2 T_k T_j - T_|k-j|), recursively, down to c * T_1 = c * x.
T_2, T_4, ..., T_k come from T_2n = 2 T_n^2 - 1, computed as T_n^2 + T_n^2 - 1 so that no
scalar product is spent on them. Depth: ceil(log2(d + 1)) levels exactly, counting the scalar
products of the leaves (each spends a level in CKKS), which OpenFHE's own Paterson-Stockmeyer
exceeds by one for d = 2^m - 1 (measured: d = 15 takes 5 levels there, 4 here).

Relinearization is lazy: the products T_k * q1 along one chain of Chebyshev divisions all end
in the same sum, so they are made without relinearizing (3-element ciphertexts, summed at any
level) and the sum pays one key switch, when it is multiplied again or returned. Degrees 15 /
15 / 27 need 25 relinearizations for 37 products instead of 37 (a key switch is about 95% of a
ciphertext product's time).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ckksnet.core.slots import SlotEvaluator


def depth_of(degree: int) -> int:
    """Levels spent by :func:`eval_odd` on a degree-``degree`` series: ceil(log2(d + 1))."""
    return math.ceil(math.log2(degree + 1))


def _split(c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Chebyshev division p = q0 + T_k q1 for a coefficient vector c (index = T degree)."""
    q0 = c[:k].copy()
    q1 = np.zeros(len(c) - k)
    for n in range(len(c) - 1, k - 1, -1):
        if n == k:
            q1[0] += c[n]  # T_k = T_k * T_0
        elif c[n]:
            q1[n - k] += 2 * c[n]
            q0[2 * k - n] -= c[n]
    return q0, q1


def _trim(c: np.ndarray) -> np.ndarray:
    nz = np.flatnonzero(c)
    return c[: nz[-1] + 1] if len(nz) else c[:0]


def eval_odd(ev, x: Any, odd_coeffs: Sequence[float]) -> Any:
    """sum_k odd_coeffs[k] * T_(2k+1)(x), for |x| <= 1, in ceil(log2(d + 1)) levels."""
    full = np.zeros(2 * len(odd_coeffs))
    full[1::2] = odd_coeffs
    full = _trim(full)
    if len(full) == 0:
        raise ValueError("the zero polynomial has no depth to evaluate")
    m = depth_of(len(full) - 1)
    powers = {1: x}
    k = 1
    while 2 * k < 2 ** m:  # T_2 .. T_(2^(m-1)), each one level deeper than the last
        sq = ev.mul(powers[k], powers[k])
        powers[2 * k] = ev.add(ev.add(sq, sq), -1.0)
        k *= 2
    value, lazy = _rec(ev, powers, full)
    return ev.relinearize(value) if lazy else value


def _rec(ev, powers: dict, c: np.ndarray) -> tuple[Any, bool] | None:
    """(value, lazy) of the series c; lazy: the value is a sum holding unrelinearized products."""
    c = _trim(c)
    if len(c) == 0:
        return None
    d = len(c) - 1
    if d == 1:
        return ev.mul(powers[1], float(c[1])), False
    if d == 0:
        raise ValueError("odd series produced an even remainder")  # cannot happen for odd input
    k = 2 ** (depth_of(d) - 1)
    q0, q1 = _split(c, k)
    factor, lazy = _rec(ev, powers, q1)
    high = ev.mul_lazy(powers[k], ev.relinearize(factor) if lazy else factor)
    low = _rec(ev, powers, q0)
    return (high if low is None else ev.add(low[0], high)), True


def count_products(odd_coeffs: Sequence[float]) -> int:
    """Ciphertext x ciphertext products :func:`eval_odd` performs for these coefficients."""
    return _counts(odd_coeffs).products


def count_relinearizations(odd_coeffs: Sequence[float]) -> int:
    """Relinearizations (key switches) :func:`eval_odd` performs for these coefficients."""
    return _counts(odd_coeffs).key_switches["relinearizations"]


def _counts(odd_coeffs: Sequence[float]):
    ev = SlotEvaluator()
    eval_odd(ev, np.zeros(1), odd_coeffs)
    return ev
