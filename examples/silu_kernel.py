"""Adding a kernel: SiLU (x * sigmoid(x)) through a Chebyshev approximation.

One class (the plan step: parameters + encrypted evaluation + cleartext twin) and one
registered lowering function. Import this module before ``ckksnet.compile`` and models with
``nn.SiLU`` compile:

    import silu_kernel  # registers nn.SiLU
    net = ckksnet.compile(model, calibration=images, preset="test")

SiLU(x) = x (1/2 + q(x / B)) with q(t) = sigmoid(B t) - 1/2, an odd function of t in [-1, 1]:
q is interpolated by an odd Chebyshev series and evaluated with the same depth-optimal routine
as the ReLU (``ckksnet.approx.eval_odd``), so the twin performs the very same operations.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch.nn as nn

from ckksnet.approx import CkksArith, NumpyArith, depth_of, eval_odd
from ckksnet.compiler import register
from ckksnet.errors import CompileError


@dataclass
class SiLUStep:
    """SiLU on an input divided by its bound B; output SiLU(x) / B (same scale as the input)."""

    name: str
    degree: int = 31
    kind: str = "silu"
    shares_scale = True  # input and output carry the scale B
    coeffs: np.ndarray = field(default=None, repr=False)

    def input_bound(self, ranges: dict, margin: float) -> float:
        if self.name not in ranges:
            raise CompileError(f"no calibration range for SiLU {self.name!r}")
        return margin * max(ranges[self.name], 1e-6)

    def finalize(self, scale_in: float, scale_out: float, options: dict) -> None:
        bound = scale_in
        q = lambda t: 1 / (1 + np.exp(-bound * t)) - 0.5  # noqa: E731
        full = np.polynomial.chebyshev.chebinterpolate(q, self.degree)
        self.coeffs = full[1::2]  # q is odd: the even coefficients vanish

    def levels(self) -> int:
        return depth_of(self.degree) + 1

    def rotations(self) -> set[int]:
        return set()

    def _ops(self, arith, t, keep):
        t = keep(t, depth_of(self.degree))
        u = arith.add_const(eval_odd(arith, t, self.coeffs), 0.5)
        return arith.mul(t, keep(u, 1))  # t (1/2 + q(t)) = SiLU(x) / B

    def encrypted(self, server, inputs, refresh):
        return self._ops(CkksArith(server), inputs[0], refresh)

    def twin(self, inputs):
        return self._ops(NumpyArith(), inputs[0], lambda v, levels: v)


@register(nn.SiLU, activation=True)
def lower_silu(ctx, node, module, args):
    from ckksnet.compiler.lowerings import materialize

    src = materialize(ctx, args[0])
    return ctx.add_step(SiLUStep(node.target), [src], ctx.new_value(src.layout))
