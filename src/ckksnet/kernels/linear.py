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
    """y = matrix @ x + bias over ``slots`` slots; ``matrix`` is (slots, slots) sparse.

    ``input_span``: the input is zero outside slots [0, input_span) (None: may fill every slot);
    a span of at most half the slots lets the map fold its diagonals (see the module doc).
    """

    matrix: sp.csr_matrix
    bias: np.ndarray
    name: str = "linear"
    input_span: int | None = None

    @property
    def slots(self) -> int:
        return self.matrix.shape[0]

    def scaled(self, factor: float, bias_divisor: float) -> "LinearMap":
        """The same map with matrix * factor and bias / bias_divisor (scale folding)."""
        return LinearMap(self.matrix * factor, self.bias / bias_divisor, self.name, self.input_span)

    # ---------------------------------------------------------------- folding
    @cached_property
    def period(self) -> int:
        """Replication period P (slots: none). The smallest power of two that holds the input
        span and divides the slots, if it reduces the diagonal count."""
        span, s = self.input_span or self.slots, self.slots
        coo = self.matrix.tocoo()
        if span > s or coo.nnz == 0 or s & (s - 1):
            return s
        best, count = s, len(np.unique((coo.col - coo.row) % s))
        p = s // 2
        while p >= span and p >= 1:
            if coo.col.max() >= p:
                break
            c = len(np.unique((coo.col - coo.row) % p))
            if c < count:
                best, count = p, c
            p //= 2
        return best

    @cached_property
    def folded(self) -> sp.coo_matrix:
        """The matrix the ciphertext sees: entry (r, c) moved to column r + ((c - r) mod P), the
        copy of c whose diagonal index is below P (identical to ``matrix`` when P = slots)."""
        coo = self.matrix.tocoo()
        if self.period == self.slots:
            return coo
        cols = (coo.row + (coo.col - coo.row) % self.period) % self.slots
        return sp.coo_matrix((coo.data, (coo.row, cols)), shape=coo.shape)

    def replicate_twin(self, x: np.ndarray) -> np.ndarray:
        """x'[i] = sum_k x[i - kP] on float64 slots (what the encrypted replication computes)."""
        span = self.period
        while span < self.slots:
            x = x + np.roll(x, span, axis=-1)
            span *= 2
        return x

    def replicate(self, server, ct):
        """x' = x + rot(x, -P) + ...: log2(S / P) rotations, no level."""
        span = self.period
        while span < self.slots:
            ct = server.add(ct, server.rotate_composed(ct, [-span])[-span])
            span *= 2
        return ct

    # ---------------------------------------------------------------- diagonals
    @cached_property
    def _by_diagonal(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(offsets, bounds, rows, data): the folded entries sorted by diagonal index."""
        coo = self.folded
        d = (coo.col - coo.row) % self.slots
        order = np.argsort(d, kind="stable")
        d, rows, data = d[order], coo.row[order], coo.data[order]
        offsets = np.unique(d)
        bounds = np.searchsorted(d, offsets, side="left").tolist() + [len(d)]
        return offsets, np.asarray(bounds), rows, data

    @property
    def offsets(self) -> np.ndarray:
        """Sorted indices d of the non-zero generalized diagonals of the folded matrix."""
        return self._by_diagonal[0]

    def _diagonal(self, i: int) -> np.ndarray:
        _, bounds, rows, data = self._by_diagonal
        vec = np.zeros(self.slots)
        np.add.at(vec, rows[bounds[i]:bounds[i + 1]], data[bounds[i]:bounds[i + 1]])
        return vec

    def diagonals(self) -> dict[int, np.ndarray]:
        """{d: diag_d} as dense vectors, built on demand and not kept (ResNet-20's take
        gigabytes; the twin never needs them)."""
        out = {}
        for i, k in enumerate(self.offsets):
            vec = self._diagonal(i)
            if np.any(vec):
                out[int(k)] = vec
        return out

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
        for g in np.unique(giants):
            group = {}
            for i in np.nonzero(giants == g)[0]:
                vec = self._diagonal(int(i))
                if np.any(vec):
                    group[int(offsets[i] - g * n1)] = np.roll(vec, int(g) * n1)
            if group:
                yield int(g), group

    def steps(self) -> dict[int, dict[int, np.ndarray]]:
        """{giant g: {baby j: plaintext}} for every group at once (for tests and inspection)."""
        return dict(self.groups())

    def rotations(self) -> set[int]:
        """Rotation indices this map needs (replication included)."""
        n1 = self.baby_size
        ds = self.offsets.astype(np.int64)
        out = {int(j) for j in np.unique(ds % n1) if j} | {int(g) * n1 for g in np.unique(ds // n1) if g}
        span = self.period
        while span < self.slots:
            out.add(self.slots - span)
            span *= 2
        return out

    # ---------------------------------------------------------------- evaluation
    def twin(self, x: np.ndarray) -> np.ndarray:
        """(batch, slots) or (slots,) float64 -> same shape: the folded map on the replicated
        input, which is the exact linear map wherever the input is zero outside its span."""
        x = self.replicate_twin(np.asarray(x, dtype=np.float64))
        return (self.folded.tocsr() @ x.T).T + self.bias

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
