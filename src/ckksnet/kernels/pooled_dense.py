"""A dense layer on per-channel sums (what global pooling leaves), by masks and one box sum.

Pooling leaves channel c's sum s_c at slot i_c, and the slots i_c form a *box*: a sum of
strided ranges (for a multiplexed layout: rx, ry within a block and the block, see
:mod:`ckksnet.layout`). Output o is computed in the box's window at slot -r_o:

    z = sum_o mask_o * rot(s, r_o),    mask_o[i_c - r_o] = W[o, c]      (hoisted rotations, 1 level)
    y = box_sum(z),                    y[p] = sum_(e in box) z[p + e]   (log2 of the box size)

so y[-r_o] = sum_c W[o, c] s_c. The shifts r_o are chosen so that no two outputs' windows
share a slot (r_o - r_o' is never a difference of two box offsets). The masks also drop the
partial sums pooling leaves in other slots. ResNet-20's 64 -> 10 layer: 10 products and
about 15 key switches, where the generic diagonal method (:mod:`ckksnet.kernels.linear`) needs
208 products and 45 key switches, since its inputs are scattered over the whole ciphertext::

    channels at slots 0, 1, 32, 33 (box: strides 1 and 32, 2 each), outputs o = 0, 1 with r = 0, 4:
    z: W00 s0 at 0, W01 s1 at 1, W02 s2 at 32, ...; W10 s0 at -4, W11 s1 at -3, ...
    y: y0 at slot 0, y1 at slot -4 (the other slots hold partial sums nothing reads)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ckksnet.core.artifact import plan_type
from ckksnet.kernels.linear import ROTATION_COST


def sum_rounds(n: int, stride: int) -> list[list[int]]:
    """Rotations that sum ``n`` values ``stride`` slots apart into the first one. Each round is
    acc += sum(rot(acc, k) for k in round): log2(n) rounds of one rotation when n is a power of
    two, else one round of n - 1 (hoisted) rotations."""
    if n & (n - 1) == 0:
        return [[stride * (n >> k)] for k in range(1, n.bit_length())]
    return [[stride * i for i in range(1, n)]]


def box_offsets(box: tuple[tuple[int, int], ...]) -> np.ndarray:
    """All offsets sum_d k_d * stride_d, 0 <= k_d < count_d, of a box ((stride, count), ...)."""
    out = np.zeros(1, dtype=np.int64)
    for stride, count in box:
        out = (out[:, None] + stride * np.arange(count)[None, :]).ravel()
    return out


def disjoint_shifts(n: int, box: tuple[tuple[int, int], ...], slots: int) -> list[int]:
    """The n smallest shifts r >= 0, taken greedily, whose windows -r + box are pairwise
    disjoint mod slots. Raises ValueError if the slots cannot hold n windows."""
    e = box_offsets(box)
    forbidden = set(((e[:, None] - e[None, :]) % slots).ravel().tolist())
    shifts: list[int] = []
    r = 0
    while len(shifts) < n:
        if r >= slots:
            raise ValueError(f"{n} outputs of a box of {len(e)} offsets do not fit in {slots} slots")
        if all((r - s) % slots not in forbidden for s in shifts):
            shifts.append(r)
        r += 1
    return shifts


@plan_type
@dataclass
class PooledDense:
    """y = weight @ s + bias for channel sums s at slots ``inputs`` lying in ``box``.

    ``weight``: (outputs, channels); ``box``: ((stride, count), ...) whose offsets include
    every input slot. Output o lands at slot :attr:`outputs` [o]. One level.
    """

    weight: np.ndarray
    bias: np.ndarray
    inputs: np.ndarray
    box: tuple[tuple[int, int], ...]
    slots: int
    name: str = "dense"
    shifts: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float64)
        self.bias = np.asarray(self.bias, dtype=np.float64)
        self.inputs = np.asarray(self.inputs, dtype=np.int64)
        if self.weight.shape != (len(self.bias), len(self.inputs)):
            raise ValueError(f"weight {self.weight.shape} does not match {len(self.bias)} outputs "
                             f"x {len(self.inputs)} inputs")
        if not set(self.inputs.tolist()) <= set(box_offsets(self.box).tolist()):
            raise ValueError("every input slot must be an offset of the box")
        self.shifts = disjoint_shifts(len(self.bias), self.box, self.slots)

    @property
    def outputs(self) -> np.ndarray:
        """Slot of each output: -r_o mod slots."""
        return np.array([(-r) % self.slots for r in self.shifts], dtype=np.int64)

    @property
    def rounds(self) -> list[list[int]]:
        return [ks for stride, count in self.box for ks in sum_rounds(count, stride)]

    def levels(self) -> int:
        return 1

    def rotations(self) -> set[int]:
        return {r for r in self.shifts if r} | {k for ks in self.rounds for k in ks}

    def cost(self) -> int:
        """Estimated work in plaintext products, as :meth:`LinearMap.cost` counts it."""
        return len(self.shifts) + ROTATION_COST * len(self.rotations())

    def scaled(self, factor: float, bias_divisor: float) -> "PooledDense":
        """The same layer with weight * factor and bias / bias_divisor (scale folding)."""
        return PooledDense(self.weight * factor, self.bias / bias_divisor, self.inputs, self.box,
                           self.slots, self.name)

    def masks(self) -> list[tuple[int, np.ndarray]]:
        """(r_o, mask_o) with mask_o[i_c - r_o] = W[o, c]."""
        out = []
        for o, r in enumerate(self.shifts):
            mask = np.zeros(self.slots)
            mask[(self.inputs - r) % self.slots] = self.weight[o]
            out.append((r, mask))
        return out

    def bias_vector(self) -> np.ndarray:
        vec = np.zeros(self.slots)
        vec[self.outputs] = self.bias
        return vec

    def evaluate(self, ev, ct):
        """The layer on any evaluator (:mod:`ckksnet.core.evaluator`): one level."""
        ev.require_levels(ct, 1, f"dense layer {self.name}")
        masks = self.masks()
        rotated = ev.rotate_composed(ct, [r for r, _ in masks])  # first hops hoisted
        z = ev.rescale(ev.dot((rotated[r], mask) for r, mask in masks))  # one limb fewer to rotate
        for ks in self.rounds:
            z = ev.add_many([z, *ev.rotate_composed(z, ks).values()])
        return ev.add(z, self.bias_vector())
