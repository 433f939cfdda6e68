"""Plan steps. Each holds its parameters once and evaluates them two ways:
``encrypted(server, inputs, refresh)`` on ciphertexts and ``twin(inputs)`` on float64 slot
arrays of shape (batch, slots). ``refresh(ct, levels)`` is the runtime's bootstrapping policy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckksnet.approx.relu import RangeReport, ReluApprox
from ckksnet.kernels.linear import LinearMap


@dataclass
class LinearStep:
    """y = M x + b (convolution, shortcut, pooling + dense): one level."""

    name: str
    kernel: LinearMap
    kind: str = "linear"

    def levels(self) -> int:
        return 1

    def rotations(self) -> set[int]:
        return self.kernel.rotations()

    def encrypted(self, server, inputs, refresh):
        return self.kernel.encrypted(server, refresh(inputs[0], 1))

    def twin(self, inputs):
        return self.kernel.twin(inputs[0])


@dataclass
class ReluStep:
    """Composite minimax ReLU on an input already divided by its bound B (output: ReLU(x) / B)."""

    name: str
    relu: ReluApprox
    kind: str = "relu"

    def __post_init__(self) -> None:
        self.report = RangeReport()

    def levels(self) -> int:
        return self.relu.depth(prescaled=True)

    def rotations(self) -> set[int]:
        return set()

    def encrypted(self, server, inputs, refresh):
        return self.relu.encrypted(server, inputs[0], prescaled=True, refresh=refresh)

    def twin(self, inputs):
        return self.relu.twin(inputs[0], self.report, prescaled=True)


@dataclass
class AddStep:
    """Residual addition of two values with the same layout and scale: no level."""

    name: str
    kind: str = "add"

    def levels(self) -> int:
        return 0

    def rotations(self) -> set[int]:
        return set()

    def encrypted(self, server, inputs, refresh):
        return server.add(inputs[0], inputs[1])

    def twin(self, inputs):
        return inputs[0] + inputs[1]


@dataclass
class ScaleStep:
    """Multiply by a constant (to match scales when no linear map can absorb it): one level."""

    name: str
    factor: float
    kind: str = "scale"

    def levels(self) -> int:
        return 1

    def rotations(self) -> set[int]:
        return set()

    def encrypted(self, server, inputs, refresh):
        return server.mul(refresh(inputs[0], 1), float(self.factor))

    def twin(self, inputs):
        return inputs[0] * self.factor
