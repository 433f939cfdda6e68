"""Lowering rule of :class:`ckksnet.nn.PolyAct`: one :class:`ckksnet.kernels.poly.PolyStep` on
the materialized input (the convolution and batch norm before it become one linear step). The
module is an activation: calibration records its input range, which gives the step's input
scale (as a ReLU's bound B)."""
from __future__ import annotations

from ckksnet.kernels import materialize, register
from ckksnet.kernels.poly import PolyStep
from ckksnet.nn import PolyAct


@register(PolyAct, activation=True)
def lower_poly(ctx, node, module: PolyAct, args):
    src = materialize(ctx, args[0])
    name = ctx.step_name(node) if hasattr(ctx, "step_name") else node.target
    step = PolyStep(name, tuple(float(c) for c in module.coefficients.detach().double().cpu().numpy()),
                    float(module.bound), src.layout)
    return ctx.add_step(step, [src], ctx.new_value(src.layout))
