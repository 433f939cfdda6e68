"""Composite minimax approximations of sgn (Lee et al., "Minimax approximation of sign function
by composite polynomial for homomorphic comparison"), generated, searched and tabulated.

p_1 is the odd minimax approximation of sgn on [-1, -eps] U [eps, 1]; each later p_i is the
minimax approximation on the image of the composite before it, which is [1 - E, 1 + E] (and its
negative) for the previous error E. The composite's max error on [eps, 1] is the last E.

Storage: each component is normalized to take its input in [-1, 1]: component i holds the odd
Chebyshev coefficients of p_i(b_i z) / b_(i+1), where b_i = 1 + E_(i-1) bounds its input
(b_1 = 1, and b_(K+1) = 1 for the last). So every stage evaluates T_n on [-1, 1], where the
Chebyshev basis is stable, and no scalar rescaling is spent between stages.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ckksnet.core.artifact import plan_type
from ckksnet.core.slots import SlotEvaluator
from ckksnet.approx.evaluate import count_products, count_relinearizations, depth_of, eval_odd
from ckksnet.approx.remez import odd_minimax_sign

TABLE_DIR = Path(__file__).resolve().parent / "tables"
MAX_COMPONENT_DEPTH = 5  # degree <= 31 per component


@plan_type
@dataclass(frozen=True)
class CompositeSign:
    """An odd composite polynomial approximating sgn on [-1, -eps] U [eps, 1].

    components: per stage, coefficients of T_1, T_3, ... (normalized, see module doc).
    errors: max |composite - sgn| on [eps, 1] after each stage; ``error`` is the last.
    """

    alpha: float | None
    eps: float
    degrees: tuple[int, ...]
    components: tuple[tuple[float, ...], ...]
    errors: tuple[float, ...]

    @property
    def error(self) -> float:
        return self.errors[-1]

    @property
    def depth(self) -> int:
        """Levels the sign approximation spends: sum of ceil(log2(d + 1))."""
        return sum(depth_of(d) for d in self.degrees)

    @property
    def products(self) -> int:
        """Ciphertext x ciphertext products of the sign approximation."""
        return sum(count_products(c) for c in self.components)

    @property
    def relinearizations(self) -> int:
        """Key switches those products need (lazy relinearization, see approx.evaluate)."""
        return sum(count_relinearizations(c) for c in self.components)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The composite in float64 (the cleartext twin's order of operations)."""
        ev = SlotEvaluator()
        for coeffs in self.components:
            x = eval_odd(ev, x, coeffs)
        return x

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(depth=self.depth, products=self.products, basis="chebyshev-odd (T_1, T_3, ...) on [-1, 1]")
        return d

    @classmethod
    def from_json(cls, d: dict) -> "CompositeSign":
        return cls(d["alpha"], d["eps"], tuple(d["degrees"]),
                   tuple(tuple(c) for c in d["components"]), tuple(d["errors"]))


def design(eps: float, degrees: tuple[int, ...] | list[int], alpha: float | None = None) -> CompositeSign:
    """The greedy composite for fixed degrees (deterministic)."""
    raw, errors, bounds = [], [], [1.0]
    lo, hi = eps, 1.0
    for d in degrees:
        comp = _stage(d, lo, hi)
        raw.append(comp.coeffs)
        errors.append(comp.error)
        lo, hi = 1 - comp.error, 1 + comp.error
        bounds.append(hi)
    bounds[-1] = 1.0  # the last stage's output is sgn itself, not renormalized
    comps = tuple(tuple(float(c) / bounds[i + 1] for c in coeffs) for i, coeffs in enumerate(raw))
    return CompositeSign(alpha, eps, tuple(degrees), comps, tuple(errors))


@lru_cache(maxsize=4096)
def _stage(degree: int, lo: float, hi: float):
    return odd_minimax_sign(degree, lo, hi)


def _chain_error(eps: float, degrees: tuple[int, ...]) -> float:
    lo, hi, err = eps, 1.0, 1.0
    for d in degrees:
        err = _stage(d, lo, hi).error
        if err >= 1:  # the stage cannot separate the signs any more
            return 1.0
        lo, hi = 1 - err, 1 + err
    return err


def search(alpha: float, eps: float, max_depth: int = 24) -> CompositeSign:
    """Degrees with the least total depth reaching error <= 2^-alpha on [eps, 1], then the fewest
    ciphertext products among those.

    Step 1: for increasing total depth D, try every ordered split of D into component depths
    (each 2..5) with full degrees 2^m - 1; greedy composites only improve with degree, so the
    first D that works is the least depth. Step 2: lower each degree (odd, same depth) as long
    as the bound holds, keeping the split with the fewest products.
    """
    target = 2.0 ** -alpha
    for total in range(2, max_depth + 1):
        winners = [s for s in _splits(total) if _chain_error(eps, tuple(2 ** m - 1 for m in s)) <= target]
        if winners:
            best = min((_trim_degrees(eps, s, target) for s in winners),
                       key=lambda degs: (_products(degs), degs))
            return design(eps, best, alpha)
    raise ValueError(f"no composite of depth <= {max_depth} reaches 2^-{alpha} on [{eps:g}, 1]")


def _splits(total: int) -> list[tuple[int, ...]]:
    out = []
    for k in range(1, total // 2 + 1):
        for s in itertools.product(range(2, MAX_COMPONENT_DEPTH + 1), repeat=k):
            if sum(s) == total:
                out.append(s)
    return out


def _trim_degrees(eps: float, split: tuple[int, ...], target: float) -> tuple[int, ...]:
    degs = [2 ** m - 1 for m in split]
    for i in reversed(range(len(degs))):  # later stages first: they are the most expensive
        floor = 2 ** (split[i] - 1) + 1 if split[i] > 1 else 1  # keep the same depth
        while degs[i] - 2 >= floor and _chain_error(eps, tuple(degs[:i] + [degs[i] - 2] + degs[i + 1:])) <= target:
            degs[i] -= 2
    return tuple(degs)


def _products(degrees: tuple[int, ...]) -> int:
    # generic coefficients: equal ones would cancel in the Chebyshev division and hide products
    rng = np.random.default_rng(0)
    return sum(count_products(rng.uniform(1, 2, (d + 1) // 2)) for d in degrees)


# ---------------------------------------------------------------- shipped tables
SHIPPED_ALPHAS = tuple(range(6, 14))
SHIPPED_EPS_BITS = (9, 8, 10)
DEFAULT_ALPHA = 13
DEFAULT_EPS_BITS = 9  # the paper's alpha = 13 / degrees 15, 15, 27 corresponds to eps ~ 2^-9
#: tables designed for the level budget rather than found by :func:`search`: (alpha, eps bits) ->
#: degrees. (10, 7): two degree-31 components of depth 5, so that a convolution and the first
#: component (1 + 5) fill the 6 usable levels a secure bootstrap leaves, and the second component
#: with the product by x (5 + 1) the next: 2 bootstraps per convolution + ReLU instead of 3.
BUDGET_TABLES = {(10, 7): (31, 31)}


def table_path(alpha: int, eps_bits: int) -> Path:
    return TABLE_DIR / f"sign_a{alpha}_e{eps_bits}.json"


def load_table(alpha: int, eps_bits: int = DEFAULT_EPS_BITS) -> CompositeSign:
    """A shipped composite for error 2^-alpha on [2^-eps_bits, 1]. Never runs Remez."""
    path = table_path(alpha, eps_bits)
    if not path.exists():
        have = sorted(p.stem for p in TABLE_DIR.glob("sign_*.json"))
        raise ValueError(f"no shipped sign table for alpha={alpha}, eps=2^-{eps_bits}; shipped: "
                         f"alpha {SHIPPED_ALPHAS[0]}..{SHIPPED_ALPHAS[-1]} x eps bits "
                         f"{', '.join(map(str, SHIPPED_EPS_BITS))}, and {', '.join(f'{a}/{e}' for a, e in BUDGET_TABLES)} "
                         f"(alpha/eps bits, level-budget tables) ({len(have)} files)")
    return CompositeSign.from_json(json.loads(path.read_text()))


def write_table(comp: CompositeSign, eps_bits: int) -> Path:
    TABLE_DIR.mkdir(parents=True, exist_ok=True)
    path = table_path(int(comp.alpha), eps_bits)
    path.write_text(json.dumps(comp.to_json(), indent=1) + "\n")
    return path


def measured_sign_error(comp: CompositeSign, points: int = 200_000) -> float:
    """Max |composite(x) - 1| over a dense grid of [eps, 1] (log- and linearly spaced), float64."""
    x = np.unique(np.concatenate([np.geomspace(comp.eps, 1.0, points // 2),
                                  np.linspace(comp.eps, 1.0, points // 2)]))
    return float(np.max(np.abs(comp(x) - 1.0)))


def bits(err: float) -> float:
    return -math.log2(err) if err > 0 else math.inf
