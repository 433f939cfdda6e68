"""ReLU as a plan step: the minimax composite approximation (:mod:`ckksnet.approx.relu`) on an
input already divided by its scale (the compiler folds that into the layer before); output
ReLU(x) divided by the same scale. Bootstraps may fall between the composite's components (each
maps [-1, 1] into [-1, 1]).

``extension`` L (``compile(..., relu_extension=L)``, 1: off): the step asks for the scale
L x margin x max |input| instead of margin x max |input| (:meth:`input_bound`), so inputs up to
L B still reach the ReLU inside [-1, 1] (a bootstrap before its first component needs that),
and its approximation covers [-L B, L B] (:meth:`ReluApprox.from_table` with ``extension``).
The twin's range check (``domain``) then flags inputs beyond L B only.
"""
from __future__ import annotations

from dataclasses import dataclass

from ckksnet.core.options import CompileOptions
from ckksnet.approx.relu import ReluApprox, extension_bits
from ckksnet.kernels.base import Kernel, activation_bound


@dataclass
class ReluStep(Kernel):
    name: str
    relu: ReluApprox | None = None
    extension: float = 1.0
    kind = "relu"
    shares_scale = True
    domain = 1.0  # prescaled: |x| / (L B) <= 1
    approximates = "relu"

    def __post_init__(self) -> None:
        extension_bits(self.extension)  # ApproxError unless a finite number >= 1

    def input_bound(self, ranges: dict, margin: float) -> float:
        return activation_bound(self.name, ranges, margin, "ReLU") * self.extension

    def finalize(self, scale_in: float, scale_out: float, options: CompileOptions) -> "ReluStep":
        alpha, eps_bits = options.sign_table(self.name)  # this ReLU's own table, else the default
        ext = self.extension
        # scale_out: the scale group's L B (at least this ReLU's own); B = scale_out / L
        return ReluStep(self.name, ReluApprox.from_table(int(alpha), scale_out / ext, int(eps_bits), ext), ext)

    def approximation_bound(self, scale_in: float) -> float:
        """B (the twin flags inputs beyond L B, the interval the extension covers)."""
        return self.relu.bound

    def levels(self) -> int:
        return self.relu.depth(prescaled=True)

    def evaluate(self, ev, inputs, refresh):
        return self.relu.evaluate(ev, inputs[0], prescaled=True, refresh=refresh)
