"""Global pooling by rotate-and-sum: each channel's sum lands in its pixel (0, 0) slot.

No level; about log2(H) + log2(W) rotations. The output carries sums, not means, with the
input's scale: the dense layer after it divides by H * W in its plaintext weights.
"""
from __future__ import annotations

from dataclasses import dataclass

from ckksnet.kernels.base import Kernel
from ckksnet.kernels.pooled_dense import sum_rounds
from ckksnet.layout import Layout


@dataclass
class SumPoolStep(Kernel):
    name: str
    layout: Layout
    kind = "pool"
    shares_scale = True

    @property
    def rounds(self) -> list[list[int]]:
        lay = self.layout
        return sum_rounds(lay.width, lay.gap) + sum_rounds(lay.height, lay.gap * lay.grid_w)

    def rotations(self) -> set[int]:
        return {k for r in self.rounds for k in r}

    def evaluate(self, ev, inputs, refresh):
        acc = inputs[0]
        for ks in self.rounds:
            acc = ev.add_many([acc, *ev.rotate_composed(acc, ks).values()])
        return acc
