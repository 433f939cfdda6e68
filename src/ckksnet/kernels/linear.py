"""Any linear layer on packed slots (convolution at any stride, shortcut, pooling, dense):
y = M x + b, evaluated by the diagonal method with baby-step giant-step rotations.

For the generalized diagonals diag_d[i] = M[i, (i + d) mod S] and d = g*n1 + j:

    y = sum_g rot( sum_j rot(diag_(g*n1+j), -g*n1) * rot(x, j), g*n1 ) + b

The baby rotations rot(x, j) are hoisted (one key-switch decomposition of x shared by all j
that have keys; the others are chained from those);
the pre-rotated diagonals are plaintexts. One level. Rotations: |{j}| + |{g}| - (zeros), with
n1 chosen to minimize that count. The cleartext twin multiplies by the same sparse matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp


@dataclass
class LinearMap:
    """y = matrix @ x + bias over ``slots`` slots; ``matrix`` is (slots, slots) sparse."""

    matrix: sp.csr_matrix
    bias: np.ndarray
    name: str = "linear"

    @property
    def slots(self) -> int:
        return self.matrix.shape[0]

    @cached_property
    def offsets(self) -> np.ndarray:
        """Sorted indices d of the non-zero generalized diagonals (cheap: no dense vectors)."""
        coo = self.matrix.tocoo()
        return np.unique((coo.col - coo.row) % self.slots)

    def diagonals(self) -> dict[int, np.ndarray]:
        """{d: diag_d} as dense vectors. Built on demand and not kept: for ResNet-20 they take
        gigabytes, and the twin never needs them."""
        coo = self.matrix.tocoo()
        d = (coo.col - coo.row) % self.slots
        order = np.argsort(d, kind="stable")
        d, rows, data = d[order], coo.row[order], coo.data[order]
        bounds = np.searchsorted(d, self.offsets, side="left").tolist() + [len(d)]
        out: dict[int, np.ndarray] = {}
        for i, k in enumerate(self.offsets):
            vec = np.zeros(self.slots)
            np.add.at(vec, rows[bounds[i]:bounds[i + 1]], data[bounds[i]:bounds[i + 1]])
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

    def steps(self) -> dict[int, dict[int, np.ndarray]]:
        """{giant g: {baby j: plaintext rot(diag_(g*n1+j), -g*n1)}}, built on demand."""
        n1 = self.baby_size
        plan: dict[int, dict[int, np.ndarray]] = {}
        for d, vec in self.diagonals().items():
            g, j = divmod(d, n1)
            plan.setdefault(g, {})[j] = np.roll(vec, g * n1)
        return plan

    def rotations(self) -> set[int]:
        """Rotation indices (keys) this map needs."""
        n1 = self.baby_size
        ds = self.offsets.astype(np.int64)
        return {int(j) for j in np.unique(ds % n1) if j} | {int(g) * n1 for g in np.unique(ds // n1) if g}

    # ---------------------------------------------------------------- evaluation
    def twin(self, x: np.ndarray) -> np.ndarray:
        """(batch, slots) or (slots,) float64 -> same shape: the exact linear map."""
        x = np.asarray(x, dtype=np.float64)
        return (self.matrix @ x.T).T + self.bias

    def twin_bsgs(self, x: np.ndarray) -> np.ndarray:
        """The encrypted algorithm on one float64 vector (numpy rotations); used to test it."""
        rot = lambda v, k: np.roll(v, -k)  # noqa: E731  rot(v, k)[i] = v[i + k]
        out = np.zeros(self.slots)
        for g, group in self.steps().items():
            inner = sum(pt * rot(x, j) for j, pt in group.items())
            out += rot(inner, g * self.baby_size)
        return out + self.bias

    def encrypted(self, server, ct):
        """Evaluate on a ciphertext through a CkksServer; spends one level."""
        server.require_levels(ct, 1, f"linear map {self.name}")
        steps = self.steps()
        babies = sorted({j for group in steps.values() for j in group})
        # each rotation goes directly when its key exists, else along a shortest chain of keys
        # present; the first hops from ct share one hoisted decomposition
        rotated = server.rotate_composed(ct, babies)
        partial = []
        for g, group in sorted(steps.items()):
            terms = [server.mul(rotated[j], pt) for j, pt in sorted(group.items())]
            inner = server.add_many(terms)
            if g:
                k = g * self.baby_size
                inner = server.rotate_composed(inner, [k])[k]
            partial.append(inner)
        out = server.add_many(partial)
        return server.add(out, self.bias) if np.any(self.bias) else out
