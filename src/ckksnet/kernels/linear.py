"""Any linear layer on packed slots (convolution at any stride, shortcut, pooling, dense):
y = M x + b, evaluated by the diagonal method with baby-step giant-step rotations.

For the generalized diagonals diag_d[i] = M[i, (i + d) mod S] and d = g*n1 + j:

    y = sum_g rot( sum_j rot(diag_(g*n1+j), -g*n1) * rot(x, j), g*n1 ) + b

The baby rotations rot(x, j) are hoisted (one key-switch decomposition of x shared by all j
that have keys; the others are chained from those);
the pre-rotated diagonals are plaintexts. One level. Rotations: |{j}| + |{g}| - (zeros), with
n1 chosen to minimize that count. The cleartext twin multiplies by the same sparse matrix.

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
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import numpy as np
import scipy.sparse as sp


@dataclass
class LinearMap:
    """y = matrix @ replicate(x) + bias over ``slots`` slots; ``matrix`` is (slots, slots)
    sparse, already folded when ``period`` < slots (build folded maps with :meth:`fold`).

    ``period``: the input is replicated with this period first (None: no replication).
    """

    matrix: sp.csr_matrix
    bias: np.ndarray
    name: str = "linear"
    period: int | None = None

    def __post_init__(self) -> None:
        self.period = self.period or self.slots

    @classmethod
    def fold(cls, matrix: sp.spmatrix, bias: np.ndarray, name: str = "linear",
             input_span: int | None = None) -> "LinearMap":
        """The map y = matrix @ x + bias for inputs that are zero outside slots
        [0, input_span), folded with the replication period that needs the fewest diagonals:
        the smallest power of two P >= input_span that divides the slots, if it saves any.
        Entry (r, c) moves to column r + ((c - r) mod P), the copy of c on a diagonal below P."""
        coo = sp.coo_matrix(matrix)
        s = coo.shape[0]
        span = input_span or s
        if coo.nnz and span <= s and not s & (s - 1) and coo.col.max() < span:
            best, count = s, len(np.unique((coo.col - coo.row) % s))
            p = s // 2
            while p >= span:
                c = len(np.unique((coo.col - coo.row) % p))
                best, count = (p, c) if c < count else (best, count)
                p //= 2
            if best < s:
                cols = (coo.row + (coo.col - coo.row) % best) % s
                return cls(sp.csr_matrix((coo.data, (coo.row, cols)), shape=coo.shape), bias, name, best)
        return cls(sp.csr_matrix(matrix), bias, name)

    @property
    def slots(self) -> int:
        return self.matrix.shape[0]

    def scaled(self, factor: float, bias_divisor: float) -> "LinearMap":
        """The same map with matrix * factor and bias / bias_divisor (scale folding)."""
        return LinearMap(self.matrix * factor, self.bias / bias_divisor, self.name, self.period)

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

    def replicate(self, server, ct):
        """x' = x + rot(x, -P) + ...: log2(S / P) rotations, no level."""
        for span in self.shifts:
            ct = server.add(ct, server.rotate_composed(ct, [-span])[-span])
        return ct

    # ---------------------------------------------------------------- diagonals
    @cached_property
    def offsets(self) -> np.ndarray:
        """Sorted indices d of the non-zero generalized diagonals (cheap: no dense vectors)."""
        coo = self.matrix.tocoo()
        return np.unique((coo.col - coo.row) % self.slots)

    def _sorted_entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bounds, rows, data): entries sorted by diagonal; diagonal offsets[i] holds
        rows[bounds[i]:bounds[i + 1]]. Built per use, not kept: 50-100 MB for a stage-3 layer."""
        coo = self.matrix.tocoo()
        d = (coo.col - coo.row) % self.slots
        order = np.argsort(d, kind="stable")
        d, rows, data = d[order], coo.row[order], coo.data[order]
        bounds = np.searchsorted(d, self.offsets, side="left").tolist() + [len(d)]
        return np.asarray(bounds), rows, data

    def _vectors(self, which: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(i, dense diag_offsets[i]) for the diagonal numbers ``which``."""
        bounds, rows, data = self._sorted_entries()
        for i in which:
            vec = np.zeros(self.slots)
            np.add.at(vec, rows[bounds[i]:bounds[i + 1]], data[bounds[i]:bounds[i + 1]])
            yield int(i), vec

    @cached_property
    def baby_size(self) -> int:
        """n1 minimizing the number of rotations |{d mod n1}| + |{d // n1}|."""
        ds = self.offsets.astype(np.int64)
        if len(ds) == 0:
            return 1
        limit = int(4 * np.sqrt(self.slots)) + 1
        candidates = sorted(set(range(1, min(limit, self.slots) + 1)) | {1 << k for k in range(self.slots.bit_length())})
        cost = lambda n1: len(np.unique(ds % n1)) + len(np.unique(ds // n1))  # noqa: E731
        return min(candidates, key=lambda n1: (cost(n1), n1))

    def groups(self) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """(giant g, {baby j: plaintext rot(diag_(g*n1+j), -g*n1)}) in order of g, one group
        at a time, so that at most one group's dense vectors exist at once."""
        n1 = self.baby_size
        offsets = self.offsets
        giants = offsets // n1
        g, group = None, {}
        for i, vec in self._vectors(np.argsort(giants, kind="stable")):
            if giants[i] != g:
                if group:
                    yield int(g), group
                g, group = giants[i], {}
            if np.any(vec):
                group[int(offsets[i] - g * n1)] = np.roll(vec, int(g) * n1)
        if group:
            yield int(g), group

    def rotations(self) -> set[int]:
        """Rotation indices this map needs (replication included)."""
        n1 = self.baby_size
        ds = self.offsets.astype(np.int64)
        out = {int(j) for j in np.unique(ds % n1) if j} | {int(g) * n1 for g in np.unique(ds // n1) if g}
        return out | {self.slots - span for span in self.shifts}

    # ---------------------------------------------------------------- evaluation
    def twin(self, x: np.ndarray) -> np.ndarray:
        """(batch, slots) or (slots,) float64 -> same shape: the (folded) matrix on the replicated
        input, which is the exact layer wherever the input is zero outside its span."""
        x = self.replicate_twin(np.asarray(x, dtype=np.float64))
        return (self.matrix @ x.T).T + self.bias

    def twin_bsgs(self, x: np.ndarray) -> np.ndarray:
        """The encrypted algorithm on one float64 vector (numpy rotations); used to test it."""
        rot = lambda v, k: np.roll(v, -k)  # noqa: E731  rot(v, k)[i] = v[i + k]
        x = self.replicate_twin(np.asarray(x, dtype=np.float64))
        out = np.zeros(self.slots)
        for g, group in self.groups():
            inner = sum(pt * rot(x, j) for j, pt in group.items())
            out += rot(inner, g * self.baby_size)
        return out + self.bias

    def encrypted(self, server, ct):
        """Evaluate on a ciphertext through a CkksServer; spends one level. Products are summed
        as they are made, so a giant step holds one partial sum, not all its products."""
        server.require_levels(ct, 1, f"linear map {self.name}")
        ct = self.replicate(server, ct)
        n1 = self.baby_size
        babies = sorted({int(d % n1) for d in self.offsets})
        # each rotation goes directly when its key exists, else along a shortest chain of keys
        # present; the first hops from ct share one hoisted decomposition
        rotated = server.rotate_composed(ct, babies)
        out = None
        for g, group in self.groups():
            inner = server.dot(((rotated[j], pt) for j, pt in sorted(group.items())))
            if g:
                inner = server.rotate_composed(inner, [g * n1])[g * n1]
            out = inner if out is None else server.add_inplace(out, inner)
        if out is None:  # an all-zero matrix: zeros, still one level spent like any map
            out = server.mul(ct, 0.0)
        return server.add(out, self.bias) if np.any(self.bias) else out
