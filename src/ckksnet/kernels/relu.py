"""ReLU as a plan step: the minimax composite approximation (:mod:`ckksnet.approx.relu`) on an
input already divided by its bound B (the compiler folds 1/B into the layer before); output
ReLU(x) / B. Bootstraps may fall between the composite's components (each maps [-1, 1] into
[-1, 1])."""
from __future__ import annotations

from dataclasses import dataclass

from ckksnet.approx.relu import ReluApprox
from ckksnet.kernels.base import Kernel, activation_bound


@dataclass
class ReluStep(Kernel):
    name: str
    relu: ReluApprox | None = None
    kind = "relu"
    shares_scale = True
    domain = 1.0  # prescaled: |x / B| <= 1

    def input_bound(self, ranges: dict, margin: float) -> float:
        return activation_bound(self.name, ranges, margin, "ReLU")

    def finalize(self, scale_in: float, scale_out: float, options: dict) -> "ReluStep":
        alpha = options.get("relu_alpha", {}).get(self.name, options["alpha"])
        return ReluStep(self.name, ReluApprox.from_table(alpha, scale_out, options["eps_bits"]))

    def levels(self) -> int:
        return self.relu.depth(prescaled=True)

    def evaluate(self, ev, inputs, refresh):
        return self.relu.evaluate(ev, inputs[0], prescaled=True, refresh=refresh)
