"""Plan steps. Each holds its parameters once and evaluates them two ways:
``encrypted(server, inputs, refresh)`` on ciphertexts and ``twin(inputs)`` on float64 slot
arrays of shape (batch, slots). ``refresh(ct, levels)`` is the runtime's bootstrapping policy.

The step protocol (what a new kernel implements; see ``examples/silu_kernel.py``):

* ``name``, ``kind``; ``levels()``; ``rotations()`` (indices its kernel rotates by);
* ``shares_scale``: True if input(s) and output must carry the same scale (activations, add);
* ``input_bound(ranges, margin)``: the scale its input needs (an activation's bound B, from the
  calibration ``ranges`` {module name: max |input|}), or None;
* ``finalize(scale_in, scale_out, options)``: called once scales are known (fold them in);
* ``encrypted(server, inputs, refresh)`` and ``twin(inputs)``; ``encrypted`` uses only the
  server's methods (the level schedule replays it on level-only ciphertexts, runtime/levels.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckksnet.approx.relu import RangeReport, ReluApprox
from ckksnet.kernels.linear import LinearMap
from ckksnet.kernels.pooled_dense import PooledDense, sum_rounds
from ckksnet.layout import Layout


class StepDefaults:
    """What most steps share: no activation bound, nothing to fold, no rotations."""

    shares_scale = False

    def input_bound(self, ranges, margin):
        return None

    def finalize(self, scale_in, scale_out, options) -> None:
        pass

    def rotations(self) -> set[int]:
        return set()


@dataclass
class LinearStep(StepDefaults):
    """y = M x + b (convolution, shortcut, dense after pooling): one level, two in lanes.
    The kernel is a :class:`LinearMap` or, for a dense layer on pooled sums, a :class:`PooledDense`."""

    name: str
    kernel: LinearMap | PooledDense
    kind: str = "linear"

    def finalize(self, scale_in: float, scale_out: float, options: dict) -> None:
        k = self.kernel  # stored x = true x / scale_in; stored y must be true y / scale_out
        self.kernel = k.scaled(scale_in / scale_out, scale_out)

    def levels(self) -> int:
        return self.kernel.levels()

    def rotations(self) -> set[int]:
        return self.kernel.rotations()

    def encrypted(self, server, inputs, refresh):
        return self.kernel.encrypted(server, refresh(inputs[0], self.levels()))

    def twin(self, inputs):
        return self.kernel.twin(inputs[0])


@dataclass
class ReluStep:
    """Composite minimax ReLU on an input already divided by its bound B (output: ReLU(x) / B)."""

    name: str
    relu: ReluApprox | None = None
    kind: str = "relu"
    shares_scale = True

    def __post_init__(self) -> None:
        self.report = RangeReport()

    def input_bound(self, ranges: dict, margin: float) -> float:
        from ckksnet.errors import CompileError

        if self.name not in ranges:
            raise CompileError(f"no calibration range for ReLU {self.name!r}")
        return margin * max(ranges[self.name], 1e-6)

    def finalize(self, scale_in: float, scale_out: float, options: dict) -> None:
        alpha = options.get("relu_alpha", {}).get(self.name, options["alpha"])
        self.relu = ReluApprox.from_table(alpha, scale_out, options["eps_bits"])

    def levels(self) -> int:
        return self.relu.depth(prescaled=True)

    def rotations(self) -> set[int]:
        return set()

    def encrypted(self, server, inputs, refresh):
        return self.relu.encrypted(server, inputs[0], prescaled=True, refresh=refresh)

    def twin(self, inputs):
        return self.relu.twin(inputs[0], self.report, prescaled=True)


@dataclass
class AddStep(StepDefaults):
    """Residual addition of two values with the same layout and scale: no level."""

    name: str
    kind: str = "add"
    shares_scale = True

    def levels(self) -> int:
        return 0

    def encrypted(self, server, inputs, refresh):
        return server.add(inputs[0], inputs[1])

    def twin(self, inputs):
        return inputs[0] + inputs[1]


@dataclass
class SumPoolStep(StepDefaults):
    """Global pooling by rotate-and-sum: each channel's sum lands in its pixel (0, 0) slot.

    No level; about log2(H) + log2(W) rotations. The output carries sums, not means, with the
    input's scale: the dense layer after it divides by H * W in its plaintext weights.
    """

    name: str
    layout: Layout
    kind: str = "pool"
    shares_scale = True

    @property
    def rounds(self) -> list[list[int]]:
        lay = self.layout
        return sum_rounds(lay.width, lay.gap) + sum_rounds(lay.height, lay.gap * lay.grid_w)

    def levels(self) -> int:
        return 0

    def rotations(self) -> set[int]:
        return {k for r in self.rounds for k in r}

    def encrypted(self, server, inputs, refresh):
        acc = inputs[0]
        for ks in self.rounds:
            acc = server.add_many([acc, *server.rotate_composed(acc, ks).values()])
        return acc

    def twin(self, inputs):
        acc = inputs[0]
        for ks in self.rounds:
            acc = acc + sum(np.roll(acc, -k, axis=-1) for k in ks)  # rot(v, k)[i] = v[i + k]
        return acc
