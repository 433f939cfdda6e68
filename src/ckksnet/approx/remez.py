"""Remez exchange for odd minimax approximations of sgn, in high precision (mpmath).

sgn is odd, so the best odd polynomial on the two intervals [-b, -a] U [a, b] is the best
approximation of the constant 1 on [a, b] by odd polynomials: the two-interval problem reduces
to one interval, on which {T_1, T_3, ..., T_d} (Chebyshev polynomials of the first kind) is a
Haar system for 0 < a. The basis is taken on [-b, b] (argument x / b) so that the linear
systems stay well conditioned.
"""
from __future__ import annotations

from dataclasses import dataclass

import mpmath as mp
import numpy as np

DPS = 40  # decimal digits for the exchange; float64 is only used to locate extrema


@dataclass(frozen=True)
class OddMinimax:
    """p(x) = sum_k coeffs[k] * T_{2k+1}(x / scale), the minimax odd approximation of 1 on [a, b].

    error: max |p(x) - 1| on [a, b]; the image p([a, b]) is [1 - error, 1 + error].
    """

    degree: int
    a: float
    b: float
    scale: float
    coeffs: tuple[float, ...]
    error: float


def _odd_cheb(x: mp.mpf, m: int) -> list[mp.mpf]:
    """T_1(x), T_3(x), ..., T_{2m-1}(x) by the three-term recurrence."""
    out, t_prev, t = [], mp.mpf(1), x
    for n in range(1, 2 * m):
        if n % 2:
            out.append(t)
        t_prev, t = t, 2 * x * t - t_prev
    return out


def _eval64(coeffs: np.ndarray, x: np.ndarray) -> np.ndarray:
    full = np.zeros(2 * len(coeffs))
    full[1::2] = coeffs
    return np.polynomial.chebyshev.chebval(x, full)


def _extrema(coeffs: np.ndarray, a: float, b: float, scale: float, grid: int) -> np.ndarray:
    """Points of locally maximal |p - 1| on [a, b], endpoints included, refined by ternary search."""
    # Error varies fastest near a (p rises from ~0 there): sample densely on a log scale.
    xs = np.unique(np.concatenate([np.geomspace(a, b, grid), np.linspace(a, b, grid)]))
    e = _eval64(coeffs, xs / scale) - 1
    idx = [0] + [i for i in range(1, len(xs) - 1)
                 if (e[i] - e[i - 1]) * (e[i + 1] - e[i]) <= 0 and e[i] != e[i - 1]] + [len(xs) - 1]
    pts = []
    for i in idx:
        if i in (0, len(xs) - 1):
            pts.append(xs[i])
            continue
        lo, hi, sign = xs[i - 1], xs[i + 1], np.sign(e[i])
        for _ in range(60):
            m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
            f1, f2 = sign * (_eval64(coeffs, np.array([m1, m2]) / scale) - 1)
            lo, hi = (m1, hi) if f1 < f2 else (lo, m2)
        pts.append((lo + hi) / 2)
    return np.array(sorted(set(pts)))


def _alternating(pts: np.ndarray, err: np.ndarray, n: int) -> np.ndarray:
    """Pick n points with alternating error signs and large |error| (standard exchange rule)."""
    groups: list[tuple[float, float]] = []
    for x, e in zip(pts, err):
        if groups and np.sign(groups[-1][1]) == np.sign(e):
            if abs(e) > abs(groups[-1][1]):
                groups[-1] = (x, e)
        else:
            groups.append((x, e))
    while len(groups) > n:  # drop the smaller end until n remain
        groups.pop(0 if abs(groups[0][1]) < abs(groups[-1][1]) else -1)
    return np.array([g[0] for g in groups])


def odd_minimax_sign(degree: int, a: float, b: float, tol: float = 1e-9,
                     max_iter: int = 60) -> OddMinimax:
    """The odd polynomial of ``degree`` minimizing max |p(x) - 1| on [a, b], 0 < a < b.

    Deterministic: fixed initial reference, fixed grids. Raises if the exchange does not level.
    """
    if degree < 1 or degree % 2 == 0:
        raise ValueError(f"degree must be odd and positive, got {degree}")
    if not 0 < a < b:
        raise ValueError(f"need 0 < a < b, got a={a}, b={b}")
    m = (degree + 1) // 2
    scale = b
    mp.mp.dps = DPS
    # initial reference: Chebyshev points of [a, b] (m + 1 of them, endpoints included)
    ref = [a + (b - a) * (1 - np.cos(np.pi * i / m)) / 2 for i in range(m + 1)]
    grid = max(400, 60 * degree)
    for _ in range(max_iter):
        rows = [_odd_cheb(mp.mpf(x) / scale, m) + [(-1) ** i] for i, x in enumerate(ref)]
        sol = mp.lu_solve(mp.matrix(rows), mp.matrix([1] * (m + 1)))
        coeffs = np.array([float(sol[k]) for k in range(m)])
        level = abs(float(sol[m]))
        pts = _extrema(coeffs, a, b, scale, grid)
        err = _eval64(coeffs, pts / scale) - 1
        peak = float(np.max(np.abs(err)))
        if peak - level <= tol * max(peak, 1e-300) or m == 0:
            return OddMinimax(degree, a, b, scale, tuple(coeffs), peak)
        new_ref = _alternating(pts, err, m + 1)
        if len(new_ref) < m + 1:
            break
        ref = list(new_ref)
    # the exchange stalls only when float64 cannot resolve the error any more; report honestly
    return OddMinimax(degree, a, b, scale, tuple(coeffs), peak)
