"""Any linear layer on packed slots (convolution at any stride, shortcut, pooling, dense):
y = M x + b, evaluated by the diagonal method with baby-step giant-step rotations.

For the generalized diagonals diag_d[i] = M[i, (i + d) mod S] and d = g*n1 + j:

    y = sum_g rot( sum_j rot(diag_(g*n1+j), -g*n1) * rot(x, j), g*n1 ) + b

The baby rotations rot(x, j) are hoisted (one key-switch decomposition of x shared by all j
that have keys; the others are chained from those); the pre-rotated diagonals are plaintexts.
The giant sum runs Horner-style from the largest g down, out = rot(out, (g - g') n1) + inner_g',
so each giant rotation is a short step (often one key) instead of a chain to g n1. One level.
n1 minimizes the rotation indices, or, once the compiler knows the keys (:meth:`LinearMap.tuned`),
the key switches. The cleartext twin may multiply by the same sparse matrix instead
(:meth:`LinearMap.fast_twin`, checked against the algorithm by the tests).

**Folding by replication.** When the input occupies only slots [0, span) (a deep ResNet stage
uses 4,096 of 16,384 slots), the input is first replicated with a period P >= span that divides
the slot count (x'[i] = x[i mod P]: log2(S / P) rotations and additions, no level). Each entry
M[r, c] may then read any copy c + kP, so it is moved to the copy whose diagonal index is
(c - r) mod P: the map needs at most P distinct diagonals instead of up to 2 * span. For
ResNet-20 this takes stage 3 from 1,575 diagonals to 900 and stage 2 from 735 to 392. Slots
outside [0, span) must hold (near) zeros; the twin replicates too, so it sees what the
ciphertext sees::

    x:  [ a b c d | 0 0 0 0 | 0 0 0 0 | 0 0 0 0 ]      span 4, S 16
    x': [ a b c d | a b c d | a b c d | a b c d ]      P = 4: 2 rotations

**Lanes (multiplexed diagonals).** A folded product still carries weights in only the P slots
of the output, a quarter of each product for stage 3. With ``lanes`` q = S / P, lane k (slots
[kP, (k+1)P)) computes the output rows cyclically shifted by v_k = k P / q and so reads
diagonal e + v_k where lane 0 reads e: one product serves q diagonals, and the map needs only
the diagonals e < P / q (stage 3: 225 products instead of 900). A second level puts the lanes
back: y = sum_k mask ⊙ rot(z, kP + v_k) + mask' ⊙ rot(z, (k-1)P + v_k), 2(q - 1) rotations
and 2q - 1 masked products. :meth:`fold` picks lanes when its cost model says they pay::

    z (q = 2, P = 4):  [ y0 y1 y2 y3 | y2'' y3'' y0'' y1'' ]   lane 1 rows shifted by v_1 = 2
    y:                 [ y0+y0'' y1+y1'' ... | 0 0 0 0 ]       1 level, 2 rotations, 3 masks
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Iterable, Iterator, TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ckksnet.core.artifact import plan_type
from ckksnet.core.tiles import join, tiles_of
from ckksnet.errors import MissingKeyError
from ckksnet.kernels.base import Kernel
from ckksnet.layout.rotations import compose_rotations, rotation_chain, rotation_paths

if TYPE_CHECKING:
    from ckksnet.core.options import CompileOptions


class KeySwitchCounter:
    """Key switches a baby-step giant-step pass makes with a given set of rotation keys: baby
    rotations of one ciphertext share the hops of their key chains (composed as
    :meth:`~ckksnet.core.evaluator.Evaluator.rotate_composed` does), each giant rotation (of its
    own partial sum) pays its whole chain. Unreachable: infinite."""

    def __init__(self, slots: int, keys: frozenset):
        self.slots, self.keys = slots, keys
        self._giants: dict[int, float] = {}

    def chain(self, k: int) -> list[int] | None:
        """The nodes a rotation by k passes through (k included, 0 excluded); None: unreachable."""
        return rotation_chain(rotation_paths(self.slots, self.keys), int(k) % self.slots)

    def _count(self, ks) -> float:
        try:
            first, further = compose_rotations(self.slots, self.keys, ks)
        except MissingKeyError:
            return float("inf")
        return len(first) + len(further)

    def __call__(self, babies: Iterable[int], giants: Iterable[int]) -> float:
        total = self._count(babies)
        for k in giants:
            idx = int(k) % self.slots
            if idx not in self._giants:  # tuning asks for the same giant steps many times
                self._giants[idx] = self._count([idx])
            total += self._giants[idx]
        return total


def giant_steps(giants: np.ndarray, n1: int, horner: bool = True) -> list[int]:
    """The rotations of the giant sum over the giant steps ``giants`` (sorted). Horner: from
    the largest down, (g - g_next) * n1 each, then g_min * n1; else g * n1 for each g > 0."""
    gs = [int(g) for g in giants][::-1]
    if not horner:
        return [g * n1 for g in gs if g]
    steps = [(a - b) * n1 for a, b in zip(gs, gs[1:])]
    return steps + ([gs[-1] * n1] if gs and gs[-1] else [])


def baby_step_candidates(slots: int) -> list[int]:
    """Baby-step sizes n1 the split searches: 1 .. 4 sqrt(slots), and every power of two."""
    limit = int(4 * np.sqrt(slots)) + 1
    return sorted(set(range(1, min(limit, slots) + 1)) | {1 << k for k in range(slots.bit_length())})


#: Cost of one key switch (rotation) in plaintext products, measured at N = 2^16 (about 0.2 s
#: against 0.02 s for encoding a diagonal and multiplying by it): :meth:`LinearMap.fold`'s model.
ROTATION_COST = 10


@plan_type
@dataclass
class LinearMap:
    """y = matrix @ replicate(x) + bias over ``slots`` slots; ``matrix`` is (slots, slots)
    sparse, already folded when ``period`` < slots (build folded maps with :meth:`fold`).

    ``period``: the input is replicated with this period first (None: no replication).
    ``lanes``: 1, or slots // period to evaluate the folded map in lanes (two levels).
    ``baby_step``, ``horner``: the baby-step giant-step split fixed by :meth:`tuned` (0: not
    tuned yet, fewest rotations with one key per index).
    """

    matrix: sp.csr_matrix
    bias: np.ndarray
    name: str = "linear"
    period: int | None = None
    lanes: int = 1
    baby_step: int = 0
    horner: bool = True

    def __post_init__(self) -> None:
        self.period = self.period or self.slots
        if self.lanes != 1 and (self.lanes * self.period != self.slots or self.period % self.lanes):
            raise ValueError(f"lanes must be 1 or slots / period = {self.slots // self.period}, got {self.lanes}")

    @classmethod
    def fold(cls, matrix: sp.spmatrix, bias: np.ndarray, name: str = "linear",
             input_span: int | None = None, lanes: bool | None = None) -> "LinearMap":
        """The map y = matrix @ x + bias for inputs that are zero outside slots
        [0, input_span), folded with the replication period that needs the fewest diagonals:
        the smallest power of two P >= input_span that divides the slots, if it saves any.
        Entry (r, c) moves to column r + ((c - r) mod P), the copy of c on a diagonal below P.

        ``lanes``: evaluate the folded map in slots / P lanes (one more level, far fewer
        products): True when possible, False never, None when :meth:`cost` says it pays."""
        coo = sp.coo_matrix(matrix)
        s = coo.shape[0]
        span = input_span or s
        if coo.nnz and span <= s and not s & (s - 1) and coo.col.max() < span:
            best = best_period([coo], span, s)
            if best < s:
                cols = (coo.row + (coo.col - coo.row) % best) % s
                folded = cls(sp.csr_matrix((coo.data, (coo.row, cols)), shape=coo.shape), bias, name, best)
                if lanes is False or coo.row.max() >= best or best % (s // best):  # lanes: rows below P, P % lanes == 0
                    return folded
                laned = cls(folded.matrix, bias, name, best, s // best)
                return laned if lanes or laned.cost() < folded.cost() else folded
        return cls(sp.csr_matrix(matrix), bias, name)

    @classmethod
    def with_period(cls, matrix: sp.spmatrix, bias: np.ndarray, name: str, period: int) -> "LinearMap":
        """The map folded with a given replication ``period`` (its input zero beyond it)."""
        coo = sp.coo_matrix(matrix)
        s = coo.shape[0]
        if period >= s:
            return cls(sp.csr_matrix(coo), bias, name)
        cols = (coo.row + (coo.col - coo.row) % period) % s
        return cls(sp.csr_matrix((coo.data, (coo.row, cols)), shape=coo.shape), bias, name, period)

    @property
    def slots(self) -> int:
        return self.matrix.shape[0]

    def levels(self) -> int:
        """Levels the map spends: 1, or 2 in lanes (the lane masks)."""
        return 1 if self.lanes == 1 else 2

    def cost(self) -> int:
        """Estimated work in plaintext products: products + ROTATION_COST x rotations."""
        products = len(self.offsets) + (2 * self.lanes - 1 if self.lanes > 1 else 0)
        return products + ROTATION_COST * len(self.rotations())

    def scaled(self, factor: float, bias_divisor: float) -> "LinearMap":
        """The same map with matrix * factor and bias / bias_divisor (scale folding)."""
        return replace(self, matrix=self.matrix * factor, bias=self.bias / bias_divisor)

    # ---------------------------------------------------------------- replication
    @property
    def shifts(self) -> list[int]:
        """Replication doubles the copies: shifts P, 2P, ... below the slot count."""
        out, span = [], self.period
        while span < self.slots:
            out.append(span)
            span *= 2
        return out

    def replicate_twin(self, x: np.ndarray) -> np.ndarray:
        """x'[i] = sum_k x[i - kP] on float64 slots (what the encrypted replication computes)."""
        for span in self.shifts:
            x = x + np.roll(x, span, axis=-1)
        return x

    def replicate(self, ev, ct):
        """x' = x + rot(x, -P) + ...: log2(S / P) rotations, no level."""
        for span in self.shifts:
            ct = ev.add(ct, self._rotate(ev, ct, -span))
        return ct

    # ---------------------------------------------------------------- lanes
    @property
    def lane_shift(self) -> int:
        """v_1: lane k holds the output rows shifted cyclically by k * lane_shift (slots)."""
        return self.period // self.lanes

    def _product_coo(self) -> sp.coo_matrix:
        """The matrix whose generalized diagonals are the plaintexts: the folded matrix, or in
        lanes each entry (r, r + d) moved to lane k = d // v_1, slot kP + (r + k v_1) mod P, on
        diagonal d mod v_1 (the copy of x there reads the same input value)."""
        coo = self.matrix.tocoo()
        if self.lanes == 1:
            return coo
        p, v = self.period, self.lane_shift
        d = (coo.col - coo.row) % p
        k = d // v
        rows = k * p + (coo.row + k * v) % p
        cols = (rows + d % v) % self.slots
        return sp.coo_matrix((coo.data, (rows, cols)), shape=coo.shape)

    def _lane_terms(self) -> list[tuple[int, np.ndarray]]:
        """(rotation, 0/1 mask): y = sum mask * rot(z, rotation) gathers the lanes into [0, P)."""
        p, v, terms = self.period, self.lane_shift, []
        for k in range(self.lanes):
            split = p - k * v  # lane k's rows [0, split) sit at kP + k v ..., the rest wrapped
            lo, hi = np.zeros(self.slots), np.zeros(self.slots)
            lo[:split], hi[split:p] = 1.0, 1.0
            terms.append(((k * p + k * v) % self.slots, lo))
            if k:
                terms.append((((k - 1) * p + k * v) % self.slots, hi))
        return terms

    # ---------------------------------------------------------------- diagonals
    @cached_property
    def offsets(self) -> np.ndarray:
        """Sorted indices d of the non-zero generalized diagonals (cheap: no dense vectors)."""
        coo = self._product_coo()
        nz = coo.data != 0  # explicit zeros make no plaintext (groups() skips all-zero diagonals)
        return np.unique((coo.col[nz] - coo.row[nz]) % self.slots)

    def _sorted_entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bounds, rows, data): entries sorted by diagonal; diagonal offsets[i] holds
        rows[bounds[i]:bounds[i + 1]]. Built per use, not kept: 50-100 MB for a stage-3 layer."""
        coo = self._product_coo()
        d = (coo.col - coo.row) % self.slots
        # a radix sort on 16-bit keys: ~6x faster than on int64 for millions of entries
        order = np.argsort(d.astype(np.uint16) if self.slots <= 1 << 16 else d, kind="stable")
        d, rows, data = d[order], coo.row[order], coo.data[order]
        bounds = np.searchsorted(d, self.offsets, side="left").tolist() + [len(d)]
        return np.asarray(bounds), rows, data

    def _vectors(self, which: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(i, dense diag_offsets[i]) for the diagonal numbers ``which``."""
        bounds, rows, data = self._sorted_entries()
        for i in which:
            lo, hi = bounds[i], bounds[i + 1]
            yield int(i), np.bincount(rows[lo:hi], weights=data[lo:hi], minlength=self.slots)

    @cached_property
    def giant_plan(self) -> tuple[int, bool]:
        """(n1, horner) of the baby-step giant-step split: as tuned, else fewest rotations with
        one key per index."""
        return (self.baby_step, self.horner) if self.baby_step else self._best_plan(None)

    @property
    def baby_step_size(self) -> int:
        return self.giant_plan[0]

    def tuned(self, keys: Iterable[int]) -> "LinearMap":
        """The same map with (n1, horner) chosen for the rotation keys present (indices mod
        slots): fewest key switches. Only how rotations are made changes, not the result."""
        n1, horner = self._best_plan(frozenset(int(k) % self.slots for k in keys))
        return replace(self, baby_step=n1, horner=horner)

    def _best_plan(self, keys: frozenset | None) -> tuple[int, bool]:
        ds = self.offsets.astype(np.int64)
        if len(ds) == 0:
            return 1, True
        count = KeySwitchCounter(self.slots, keys) if keys is not None else None
        best = None
        for n1 in baby_step_candidates(self.slots):
            babies, giants = np.unique(ds % n1), np.unique(ds // n1)  # shared by both giant modes
            for horner in (True, False):
                steps = giant_steps(giants, n1, horner)
                # no keys known: one key per index, each rotation one key switch
                cost = int(np.count_nonzero(babies)) + len(steps) if count is None else count(babies, steps)
                if best is None or cost < best[0]:  # ties: smaller n1, then Horner
                    best = (cost, n1, horner)
        return best[1], best[2]

    def groups(self) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """(giant g, {baby j: plaintext rot(diag_(g*n1+j), -g*n1)}) in decreasing order of g
        (Horner), one group at a time, so that at most one group's dense vectors exist at once."""
        n1 = self.baby_step_size
        offsets = self.offsets
        giants = offsets // n1
        g, group = None, {}
        for i, vec in self._vectors(np.argsort(-giants, kind="stable")):
            if giants[i] != g:
                if group:
                    yield int(g), group
                g, group = giants[i], {}
            if np.any(vec):
                group[int(offsets[i] - g * n1)] = np.roll(vec, int(g) * n1)
        if group:
            yield int(g), group

    def offset_groups(self) -> Iterator[tuple[int, dict[int, None]]]:
        """:meth:`groups` without the plaintexts (the level tracer needs only which baby steps
        each giant step multiplies; building 2^14-slot vectors was most of a dry run's time)."""
        n1 = self.baby_step_size
        by_giant: dict[int, dict[int, None]] = {}
        for d in sorted((int(d) for d in self.offsets), key=lambda d: -(d // n1)):
            by_giant.setdefault(d // n1, {})[d - (d // n1) * n1] = None
        yield from by_giant.items()

    def rotations(self) -> set[int]:
        """Rotation indices this map needs (replication included)."""
        n1 = self.baby_step_size
        ds = self.offsets.astype(np.int64)
        out = {int(j) for j in np.unique(ds % n1) if j} | set(giant_steps(np.unique(ds // n1), *self.giant_plan))
        lanes = {k for k, _ in self._lane_terms() if k} if self.lanes > 1 else set()
        return out | lanes | {self.slots - span for span in self.shifts}

    # ---------------------------------------------------------------- evaluation
    def fast_twin(self, x: np.ndarray) -> np.ndarray:
        """(batch, slots) or (slots,) float64 -> same shape: the (folded) matrix on the replicated
        input, which equals :meth:`evaluate` wherever the input is zero outside its span (the
        twin's optimisation; tests compare the two)."""
        x = self.replicate_twin(np.asarray(x, dtype=np.float64))
        return (self.matrix @ x.T).T + self.bias

    def evaluate(self, ev, ct):
        """The map on any evaluator (:mod:`ckksnet.core.evaluator`); spends :meth:`levels`
        levels. Products are summed as they are made, so a giant step holds one partial sum, not
        all its products. On the numpy evaluator with ``fast`` set, one sparse product instead."""
        ev.require_levels(ct, self.levels(), f"linear map {self.name}")
        short = ev.shortcut(ct, self.fast_twin, self.levels())
        if short is not None:
            return short
        ct = self.replicate(ev, ct)
        n1 = self.baby_step_size
        babies = sorted({int(d % n1) for d in self.offsets})
        # each rotation goes directly when its key exists, else along a shortest chain of keys
        # present; the first hops from ct share one hoisted decomposition
        rotated = ev.rotate_composed(ct, babies)
        horner = self.giant_plan[1]
        out, last = None, None
        groups = self.offset_groups() if ev.levels_only else self.groups()
        for g, group in groups:  # decreasing g
            # rescaled now, not at the next product: its rotations key-switch one limb fewer
            inner = ev.rescale(ev.dot(((rotated[j], pt) for j, pt in sorted(group.items()))))
            if not horner:  # each partial sum to its place: rot(inner, g n1)
                inner = self._rotate(ev, inner, g * n1)
                out = inner if out is None else ev.add_inplace(out, inner)
            else:  # Horner: out = rot(out, (last - g) n1) + inner, one short step each
                out = inner if out is None else ev.add_inplace(self._rotate(ev, out, (last - g) * n1), inner)
            last = g
        if horner and last:
            out = self._rotate(ev, out, last * n1)
        if out is None:  # an all-zero matrix: zeros, still one level spent like any map
            out = ev.mul(ct, 0.0)
        if self.lanes > 1:
            out = self._gather_lanes(ev, out)
        return ev.add(out, self.bias) if np.any(self.bias) else out

    @staticmethod
    def _rotate(ev, ct, k: int):
        return ev.rotate_composed(ct, [k])[k] if k else ct

    def _gather_lanes(self, ev, z):
        """sum_k mask_k * rot(z, r_k): the lanes' partial sums into slots [0, P); one level.
        The rotations of z share one hoisted decomposition."""
        terms = self._lane_terms()
        rotated = ev.rotate_composed(z, [k for k, _ in terms])
        out = None
        for k, mask in terms:
            term = ev.mul(rotated[k], mask)
            out = term if out is None else ev.add_inplace(out, term)
        return out


@dataclass
class LinearStep(Kernel):
    """y = M x + b (convolution, shortcut, dense after pooling): one level, two in lanes.
    The kernel is a :class:`LinearMap` or, for a dense layer on pooled sums, a
    :class:`ckksnet.kernels.pooled_dense.PooledDense`."""

    name: str
    kernel: "LinearMap | BlockLinearMap | PooledDense"  # noqa: F821
    kind = "linear"

    def finalize(self, scale_in: float, scale_out: float, options: "CompileOptions") -> "LinearStep":
        # stored x = true x / scale_in; stored y must be true y / scale_out
        return LinearStep(self.name, self.kernel.scaled(scale_in / scale_out, scale_out))

    def tuned(self, keys) -> "LinearStep":
        tune = getattr(self.kernel, "tuned", None)
        return self if tune is None else LinearStep(self.name, tune(keys))

    def levels(self) -> int:
        return self.kernel.levels()

    def variants(self) -> list["LinearStep"]:
        """In lanes: the same folded map without lanes (one level instead of two, about q
        times the products), which can save a bootstrap where levels are tight."""
        if getattr(self.kernel, "lanes", 1) > 1:
            return [LinearStep(self.name, replace(self.kernel, lanes=1, baby_step=0))]
        return []

    def rotations(self) -> set[int]:
        return self.kernel.rotations()

    def evaluate(self, ev, inputs, refresh):
        return self.kernel.evaluate(ev, refresh(inputs[0], self.levels()))


def tile_spans(layout) -> list[int]:
    """Per ciphertext of ``layout``, the slots [0, span) that may hold non-zero values."""
    total, slots = layout.span, layout.slots
    return [max(1, min(slots, total - t * slots)) for t in range(layout.ciphertexts)]


def best_period(blocks: list, span: int, slots: int) -> int:
    """The replication period (a power of two >= ``span`` dividing ``slots``, or ``slots``) with
    the fewest distinct diagonals over all ``blocks`` (square sparse matrices reading one input)."""
    diffs = [((c.col - c.row).astype(np.int64)) for c in map(sp.coo_matrix, blocks) if c.nnz]
    if not diffs or slots & (slots - 1):
        return slots
    d = np.concatenate(diffs)
    best, count = slots, len(np.unique(d % slots))
    p = slots // 2
    while p >= span:
        c = len(np.unique(d % p))
        best, count = (p, c) if c < count else (best, count)
        p //= 2
    return best


@plan_type
@dataclass
class BlockLinearMap:
    """y = M x + b between tensors over several ciphertexts: output ciphertext o is
    y_o = sum_i M[o, i] x_i + b_o, each block M[o, i] a :class:`LinearMap` (its diagonals; output
    o's bias in its first block). One level.

    Baby-step giant-step over blocks: all blocks share one baby step n1, so each input tile's
    baby rotations are made once (hoisted) for every output, and each output sums the products
    of all its inputs before its giant rotations:

        y_o = sum_g rot( sum_i sum_j rot(diag_(o,i,g*n1+j), -g*n1) * rot(x_i, j), g*n1 ) + b_o

    k_in + k_out rotation groups instead of k_in * k_out. Input tiles that use only part of
    their slots are replicated first, with one period per input tile (see :class:`LinearMap`)."""

    blocks: list
    inputs: int
    outputs: int
    name: str = "linear"
    baby_step: int = 0

    @classmethod
    def split(cls, matrix: sp.spmatrix, bias: np.ndarray, slots: int, name: str,
              spans: list[int]) -> "BlockLinearMap":
        """Blocks of a (outputs * slots, inputs * slots) slot matrix; ``spans``: per input tile,
        the slots that may hold non-zero values (for folding)."""
        m = sp.csr_matrix(matrix)
        outputs, inputs = m.shape[0] // slots, m.shape[1] // slots
        cut = {(o, i): m[o * slots:(o + 1) * slots, i * slots:(i + 1) * slots]
               for o in range(outputs) for i in range(inputs)}
        cut = {k: b for k, b in cut.items() if b.nnz and np.any(b.data)}
        periods = {}
        for i in range(inputs):  # one replication period per input tile, good for all its blocks
            periods[i] = best_period([b for (o, j), b in cut.items() if j == i], spans[i], slots)
        blocks = []
        for o in range(outputs):
            b = np.asarray(bias[o * slots:(o + 1) * slots], dtype=np.float64)
            mine = [(i, blk) for (oo, i), blk in cut.items() if oo == o]
            if not mine:  # only a bias (or zeros): an empty block carries it
                blocks.append((o, 0, LinearMap(sp.csr_matrix((slots, slots)), b, f"{name}[{o},0]",
                                               periods.get(0, slots))))
            for n, (i, blk) in enumerate(mine):
                blocks.append((o, i, LinearMap.with_period(blk, b if n == 0 else np.zeros(slots),
                                                           f"{name}[{o},{i}]", periods[i])))
        return cls(blocks, inputs, outputs, name)

    @property
    def slots(self) -> int:
        return self.blocks[0][2].slots

    def levels(self) -> int:
        return 1

    def cost(self) -> int:
        return sum(len(m.offsets) for _, _, m in self.blocks) + ROTATION_COST * len(self.rotations())

    def scaled(self, factor: float, bias_divisor: float) -> "BlockLinearMap":
        return replace(self, blocks=[(o, i, m.scaled(factor, bias_divisor)) for o, i, m in self.blocks])

    # ---------------------------------------------------------------- the shared split
    def _offsets(self, by: int, which: int) -> np.ndarray:
        """Diagonal offsets of the blocks whose input (by=1) or output (by=0) is ``which``."""
        ds = [m.offsets for blk in self.blocks if blk[by] == which for m in [blk[2]]]
        return np.unique(np.concatenate(ds)).astype(np.int64) if ds else np.zeros(0, np.int64)

    def _rotation_sets(self, n1: int) -> tuple[list, list]:
        """(per input: baby steps j != 0, per output: giant rotations (Horner))."""
        babies = [sorted({int(d % n1) for d in self._offsets(1, i)} - {0}) for i in range(self.inputs)]
        giants = [giant_steps(np.unique(self._offsets(0, o) // n1), n1) for o in range(self.outputs)]
        return babies, giants

    def _best_n1(self, keys: frozenset | None) -> int:
        count = KeySwitchCounter(self.slots, keys) if keys is not None else None
        best = None
        for n1 in baby_step_candidates(self.slots):
            babies, giants = self._rotation_sets(n1)
            if count is None:
                cost = sum(map(len, babies)) + sum(map(len, giants))
            else:
                cost = sum(count(b, []) for b in babies) + sum(count([], g) for g in giants)
            if best is None or cost < best[0]:
                best = (cost, n1)
        return best[1]

    @property
    def n1(self) -> int:
        return self.baby_step or self._best_n1(None)

    def tuned(self, keys: Iterable[int]) -> "BlockLinearMap":
        """The same map with the baby step of fewest key switches for the keys present."""
        n1 = self._best_n1(frozenset(int(k) % self.slots for k in keys))
        # the blocks carry the shared split, so a run need not copy them (and their diagonals) again
        return replace(self, baby_step=n1, blocks=[(o, i, replace(m, baby_step=n1, horner=True))
                                                   for o, i, m in self.blocks])

    def _inputs_map(self) -> dict[int, LinearMap]:
        """One block per input tile: its replication (the same for all its blocks)."""
        return {i: m for _, i, m in reversed(self.blocks)}

    def rotations(self) -> set[int]:
        babies, giants = self._rotation_sets(self.n1)
        out = set().union(*map(set, babies), *map(set, giants))
        for m in self._inputs_map().values():
            out |= {self.slots - span for span in m.shifts}
        return out

    # ---------------------------------------------------------------- evaluation
    def fast_twin(self, x: np.ndarray) -> np.ndarray:
        """(batch, inputs * slots) -> (batch, outputs * slots) on float64 slots."""
        s = self.slots
        out = np.zeros(np.shape(x)[:-1] + (self.outputs * s,))
        for o, i, m in self.blocks:
            out[..., o * s:(o + 1) * s] += m.fast_twin(np.asarray(x)[..., i * s:(i + 1) * s])
        return out

    def evaluate(self, ev, ct):
        """The map on any evaluator (:mod:`ckksnet.core.evaluator`); ``ct``: the input tiles (or one
        ciphertext). Returns the output tiles (or one ciphertext). One level."""
        xs = tiles_of(ct)
        if len(xs) != self.inputs:
            raise ValueError(f"{self.name}: {len(xs)} input ciphertext(s), the map reads {self.inputs}")
        ev.require_levels(ct, 1, f"linear map {self.name}")
        short = self._shortcut(ev, xs)
        if short is not None:
            return join(short)
        n1 = self.n1
        babies, _ = self._rotation_sets(n1)
        reps = self._inputs_map()
        rotated = {}
        for i, x in enumerate(xs):
            if i in reps:  # each input tile replicated and rotated once, for every output
                rep = reps[i].replicate(ev, x)
                rotated[i] = {0: rep, **ev.rotate_composed(rep, babies[i])}
        return join([self._output(ev, o, rotated, xs, n1) for o in range(self.outputs)])

    def _shortcut(self, ev, xs) -> list | None:
        outs: list = [None] * self.outputs
        for o, i, m in self.blocks:
            y = ev.shortcut(xs[i], m.fast_twin, 1)
            if y is None:
                return None
            outs[o] = y if outs[o] is None else ev.add(outs[o], y)
        return outs

    def _output(self, ev, o: int, rotated: dict, xs: list, n1: int):
        """y_o: the products of every input summed per giant step, then Horner over giant steps."""
        terms: dict[int, list] = {}
        bias = np.zeros(self.slots)
        for oo, i, m in self.blocks:
            if oo != o:
                continue
            bias = bias + m.bias
            if (m.baby_step, m.horner) != (n1, True):  # untuned: a copy with the shared split
                m = replace(m, baby_step=n1, horner=True)
            for g, group in (m.offset_groups() if ev.levels_only else m.groups()):
                terms.setdefault(g, []).extend((rotated[i][j], pt) for j, pt in group.items())
        out, last = None, None
        for g in sorted(terms, reverse=True):
            inner = ev.rescale(ev.dot(terms.pop(g)))
            out = inner if out is None else ev.add_inplace(LinearMap._rotate(ev, out, (last - g) * n1), inner)
            last = g
        if last:
            out = LinearMap._rotate(ev, out, last * n1)
        if out is None:  # no input reaches this output: zeros, one level spent like any map
            out = ev.mul(xs[0], 0.0)
        return ev.add(out, bias) if np.any(bias) else out
