"""Low-degree polynomial activations: least-squares fits of ReLU and their evaluation plan.

A trainable polynomial activation (:class:`ckksnet.nn.PolyAct`) computes

    p(x) = sum_k w_k (x / B)^k,   k = 0 .. d  (d = 2, 3 or 4)

in the **power basis of the normalised input** t = x / B, where B is the activation's recorded
input bound. :func:`relu_fit` gives the w_k that minimise the squared error to ReLU over
[-B, B] (uniform weight, continuous least squares: exact Gram matrix of the monomials against
ReLU on [-1, 1], so no sampling error). ReLU is positively homogeneous, ReLU(x) = B ReLU(x / B),
so the fit on [-B, B] is B times the fit on [-1, 1].

:func:`rebase` turns coefficients in one basis t = x / B into coefficients in s = x / S for
another scale S (the compiler's: the calibrated bound times a margin), and :func:`max_abs`
bounds |p| over an interval (the scale the activation's output needs).
"""
from __future__ import annotations

import numpy as np

DEGREES = (2, 3, 4)  #: the degrees a polynomial activation may have


def check_degree(degree) -> int:
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or int(degree) not in DEGREES:
        raise ValueError(f"a polynomial activation has degree 2, 3 or 4, not {degree!r}")
    return int(degree)


def relu_fit_unit(degree: int) -> np.ndarray:
    """Coefficients c_0..c_d of the least-squares fit of ReLU on [-1, 1] (power basis)."""
    d = check_degree(degree)
    # Gram matrix G[i, j] = int_{-1}^{1} t^(i+j) dt; right side r[i] = int_0^1 t^(i+1) dt
    g = np.array([[(1 - (-1) ** (i + j + 1)) / (i + j + 1) for j in range(d + 1)] for i in range(d + 1)])
    r = np.array([1.0 / (i + 2) for i in range(d + 1)])
    return np.linalg.solve(g, r)


def relu_fit(bound: float, degree: int) -> np.ndarray:
    """Coefficients w_0..w_d (basis x / ``bound``) of the least-squares fit of ReLU on
    [-bound, bound]: ``bound`` x the unit fit."""
    bound = float(bound)
    if not np.isfinite(bound) or bound <= 0:
        raise ValueError(f"the bound of a polynomial activation must be a positive number, not {bound!r}")
    return bound * relu_fit_unit(degree)


def relu_fit_error(bound: float, degree: int, points: int = 4001) -> dict:
    """{"max": max |p - ReLU|, "rms": root mean square error} of :func:`relu_fit` on [-bound, bound],
    relative to ``bound``-scaled ReLU values (absolute errors; they scale with the bound)."""
    w = relu_fit(bound, degree)
    x = np.linspace(-bound, bound, points)
    err = evaluate(w, x / bound) - np.maximum(x, 0)
    return {"max": float(np.max(np.abs(err))), "rms": float(np.sqrt(np.mean(err ** 2)))}


def evaluate(coefficients, t):
    """sum_k c_k t^k (Horner), on numpy arrays or floats."""
    out = np.zeros_like(np.asarray(t, dtype=np.float64)) + coefficients[-1]
    for c in coefficients[-2::-1]:
        out = out * t + c
    return out


def rebase(coefficients, bound: float, scale: float) -> np.ndarray:
    """Coefficients in t = x / ``bound`` -> coefficients in s = x / ``scale`` (t = s scale / bound)."""
    r = float(scale) / float(bound)
    return np.array([float(c) * r ** k for k, c in enumerate(coefficients)])


def max_abs(coefficients, lo: float = -1.0, hi: float = 1.0) -> float:
    """max |p(t)| for t in [lo, hi] (at the ends and the real critical points)."""
    c = np.asarray(coefficients, dtype=np.float64)
    pts = [lo, hi]
    deriv = np.polynomial.polynomial.polyder(c)
    if np.any(deriv != 0):
        for r in np.polynomial.polynomial.polyroots(deriv) if len(deriv) > 1 else []:
            if abs(r.imag) < 1e-12 and lo <= r.real <= hi:
                pts.append(float(r.real))
    return float(max(abs(evaluate(c, p)) for p in pts))
