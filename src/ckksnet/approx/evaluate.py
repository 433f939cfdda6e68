"""Depth-optimal evaluation of odd Chebyshev series, written once for two kinds of numbers.

The same routine runs on ciphertexts (:class:`CkksArith`) and on float64 arrays
(:class:`NumpyArith`, the cleartext twin), so both perform the same operations on the same
coefficients in the same order.

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
from typing import Any, Protocol, Sequence

import numpy as np


class Arith(Protocol):
    """The few operations the evaluation needs; ``scale`` spends a level on ciphertexts.
    ``mul_lazy`` returns an unrelinearized product that may only be added until ``relin``."""

    def mul(self, a: Any, b: Any) -> Any: ...
    def mul_lazy(self, a: Any, b: Any) -> Any: ...
    def relin(self, a: Any) -> Any: ...
    def add(self, a: Any, b: Any) -> Any: ...
    def add_const(self, a: Any, c: float) -> Any: ...
    def scale(self, a: Any, c: float) -> Any: ...


class NumpyArith:
    """float64 arithmetic: the cleartext twin. Counts ct x ct products and relinearizations
    (what the encrypted run does at the same points) for reports and tests."""

    def __init__(self) -> None:
        self.products = 0
        self.relins = 0

    def mul(self, a, b):
        self.products += 1
        self.relins += 1
        return a * b

    def mul_lazy(self, a, b):
        self.products += 1
        return a * b

    def relin(self, a):
        self.relins += 1
        return a

    def add(self, a, b):
        return a + b

    def add_const(self, a, c):
        return a + c

    def scale(self, a, c):
        return a * c


class CkksArith:
    """Ciphertext arithmetic through a :class:`ckksnet.backend.CkksServer`."""

    def __init__(self, server) -> None:
        self.server = server
        self.products = 0

    def mul(self, a, b):
        self.products += 1
        return self.server.mul(a, b)

    def mul_lazy(self, a, b):
        self.products += 1
        return self.server.mul_lazy(a, b)

    def relin(self, a):
        return self.server.relinearize(a)

    def add(self, a, b):
        return self.server.add(a, b)

    def add_const(self, a, c):
        return self.server.add(a, float(c))

    def scale(self, a, c):
        return self.server.mul(a, float(c))


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


def eval_odd(arith: Arith, x: Any, odd_coeffs: Sequence[float]) -> Any:
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
        sq = arith.mul(powers[k], powers[k])
        powers[2 * k] = arith.add_const(arith.add(sq, sq), -1.0)
        k *= 2
    value, lazy = _rec(arith, powers, full)
    return arith.relin(value) if lazy else value


def _rec(arith: Arith, powers: dict, c: np.ndarray) -> tuple[Any, bool] | None:
    """(value, lazy) of the series c; lazy: the value is a sum holding unrelinearized products."""
    c = _trim(c)
    if len(c) == 0:
        return None
    d = len(c) - 1
    if d == 1:
        return arith.scale(powers[1], float(c[1])), False
    if d == 0:
        raise ValueError("odd series produced an even remainder")  # cannot happen for odd input
    k = 2 ** (depth_of(d) - 1)
    q0, q1 = _split(c, k)
    factor, lazy = _rec(arith, powers, q1)
    high = arith.mul_lazy(powers[k], arith.relin(factor) if lazy else factor)
    low = _rec(arith, powers, q0)
    return (high if low is None else arith.add(low[0], high)), True


def count_products(odd_coeffs: Sequence[float]) -> int:
    """Ciphertext x ciphertext products :func:`eval_odd` performs for these coefficients."""
    return _counts(odd_coeffs).products


def count_relinearizations(odd_coeffs: Sequence[float]) -> int:
    """Relinearizations (key switches) :func:`eval_odd` performs for these coefficients."""
    return _counts(odd_coeffs).relins


def _counts(odd_coeffs: Sequence[float]) -> NumpyArith:
    arith = NumpyArith()
    eval_odd(arith, np.zeros(1), odd_coeffs)
    return arith
