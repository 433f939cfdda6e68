"""Adding a kernel: SiLU (x * sigmoid(x)) through a Chebyshev approximation.

One dataclass (the plan step: its parameters and its algorithm, written once against the
evaluator interface) and one registered lowering rule. Everything comes from ``ckksnet.kernels``.
Import this module before ``ckksnet.compile`` and models with ``nn.SiLU`` compile; import it
before ``ckksnet.load_plan`` to load a plan that holds a SiLU step:

    import silu_kernel  # registers nn.SiLU and the SiLUStep kernel
    net = ckksnet.compile(model, calibration=images, preset="test")

SiLU(x) = x (1/2 + q(x / B)) with q(t) = sigmoid(B t) - 1/2, an odd function of t in [-1, 1]:
q is interpolated by an odd Chebyshev series and evaluated with the same depth-optimal routine
as the ReLU (``eval_odd``). The one ``evaluate`` runs on ciphertexts (the server), on levels
only (the compiler's schedule) and on numpy slots (the twin). ``approximates = "silu"`` declares
it a polynomial approximation of an activation: the twin checks its inputs against ``domain``
and the fidelity report counts those beyond it, as for the ReLU.

Inside ckksnet the same two parts go in two files named after the family, as the built-in ones:
the class in ``kernels/silu.py``, the rule in ``compiler/lowerings/silu.py``, plus ``silu`` in the
import list of ``compiler/lowerings/__init__.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch.nn as nn

from ckksnet.kernels import (CompileOptions, Evaluator, Kernel, LoweringContext, Refresh, Value, activation_bound,
                             depth_of, eval_odd, materialize, register)


@dataclass
class SiLUStep(Kernel):
    """SiLU on an input divided by its bound B; output SiLU(x) / B (same scale as the input).
    ``coeffs``: odd Chebyshev coefficients of q on [-1, 1], set by :meth:`finalize`."""

    name: str
    degree: int = 31
    coeffs: np.ndarray | None = field(default=None, repr=False)
    kind = "silu"
    shares_scale = True  # input and output carry the scale B
    domain = 1.0  # stored inputs t = x / B must lie in [-1, 1]: the twin reports any beyond
    approximates = "silu"  # a polynomial approximation of this activation (its bound B: scale x domain)

    def input_bound(self, ranges: dict, margin: float) -> float:
        return activation_bound(self.name, ranges, margin, "SiLU")

    def finalize(self, scale_in: float, scale_out: float, options: CompileOptions) -> "SiLUStep":
        bound = scale_in
        q = lambda t: 1 / (1 + np.exp(-bound * t)) - 0.5  # noqa: E731
        full = np.polynomial.chebyshev.chebinterpolate(q, self.degree)
        return replace(self, coeffs=full[1::2])  # q is odd: the even coefficients vanish

    def levels(self) -> int:
        return depth_of(self.degree) + 1

    def evaluate(self, ev: Evaluator, inputs: list, refresh: Refresh):
        t = refresh(inputs[0], depth_of(self.degree))  # bootstrapped first if the schedule says so
        u = ev.add(eval_odd(ev, t, self.coeffs), 0.5)  # 1/2 + q(t), in [0, 1]
        return ev.mul(t, refresh(u, 1))  # t (1/2 + q(t)) = SiLU(x) / B


@register(nn.SiLU, activation=True)  # activation: calibration measures its input range
def lower_silu(ctx: LoweringContext, node, module: nn.SiLU, args: list[Value]) -> Value:
    src = materialize(ctx, args[0])
    return ctx.add_step(SiLUStep(node.target), [src], ctx.new_value(src.layout))


def main() -> int:
    """Compile a small CNN with SiLU at the test preset and compare the twin (the plan's kernels on
    numpy slots, what an encrypted run computes) with torch; prints one line, exit 1 if far off."""
    import warnings

    import torch

    import ckksnet

    warnings.simplefilter("ignore")  # the test preset's insecurity warning: this is a demo
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    net = ckksnet.compile(model, calibration=images, preset="test", image_size=(8, 8))
    twin = net.twin(images)
    with torch.no_grad():
        want = model(torch.tensor(images).permute(0, 3, 1, 2).float() / 255).numpy()
    err = float(np.max(np.abs(twin - want)))
    step = next(s for s, _, _ in net.steps if s.kind == "silu")
    print(f"SiLU kernel: {step.name} (degree {step.degree}, {step.levels()} levels); twin vs torch on "
          f"{len(images)} images: max |logit difference| {err:.2e}, same top-1 on "
          f"{int((twin.argmax(1) == want.argmax(1)).sum())} of {len(images)}")
    return 0 if err < 1e-2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
