"""Lowering rule of :class:`ckksnet.nn.PolyAct`: one :class:`ckksnet.kernels.poly.PolyStep` on
the materialized input (the convolution and batch norm before it become one linear step). The
module is an activation: calibration records its input range, which gives the step's input
scale (as a ReLU's bound B)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ckksnet.compiler.lowerings.deferred import materialize
from ckksnet.errors import CompileError
from ckksnet.kernels.linear import BlockLinearMap, LinearMap, LinearStep, tile_spans
from ckksnet.kernels.poly import PolyStep
from ckksnet.kernels.registry import register
from ckksnet.nn import PolyAct


@register(PolyAct, activation=True)
def lower_poly(ctx, node, module: PolyAct, args):
    name = ctx.step_name(node) if hasattr(ctx, "step_name") else node.target
    if module.blending and float(module.relu_mix) != 0:
        raise CompileError(f"{name}: this polynomial activation still blends in ReLU ({float(module.relu_mix):.3g} of "
                           "it; a training ramp, --ramp-epochs, that has not ended): finish training, or compile "
                           "after ckksnet.training.poly.set_relu_mix(model, 0)")
    src = materialize(ctx, args[0])
    step = PolyStep(name, tuple(float(c) for c in module.coefficients.detach().double().cpu().numpy()),
                    float(module.bound), src.layout)
    return ctx.add_step(step, [src], ctx.new_value(src.layout))


def _identity_step(name: str, layout):
    """A LinearStep y = mask x on ``layout``'s used slots (one plaintext diagonal, no rotation):
    one level, and a free choice of scale, like any linear map."""
    slots = layout.slots
    k = getattr(layout, "ciphertexts", 1)
    mask = np.zeros(k * slots)
    mask[np.asarray(layout.index).ravel()] = 1.0
    matrix = sp.diags(mask).tocsr()
    if k == 1:
        return LinearStep(name, LinearMap.fold(matrix, np.zeros(slots), name, getattr(layout, "span", slots), False))
    return LinearStep(name, BlockLinearMap.split(matrix, np.zeros(k * slots), slots, name, tile_spans(layout)))


def split_poly_readers(plan) -> int:
    """Where a degree-2 polynomial's output is read by linear maps *and* by other steps (a ResNet
    block's output: the next convolution and the identity shortcut's addition), the other steps
    read it through an identity linear step instead. Only linear maps then read the polynomial,
    so it folds its leading coefficient into them (1 level instead of 2; ``PolyStep.free_output``),
    and the shortcut's identity map (one plaintext product, off the critical path) rescales it
    for the addition. Run after lowering, before scales are assigned. Returns the steps added."""
    readers: dict[int, list[int]] = {}
    for i, (step, ins, _) in enumerate(plan.steps):
        for v in ins:
            readers.setdefault(v, []).append(i)
    redirect: dict[tuple[int, int], int] = {}  # (reader step index, value) -> new value
    inserts: dict[int, tuple] = {}  # after step index -> the identity step
    for i, (step, ins, out) in enumerate(plan.steps):
        if not isinstance(step, PolyStep) or step.degree != 2 or step.leading <= 0 or out == plan.output:
            continue
        kinds = [plan.steps[r][0].kind for r in readers.get(out, [])]
        if "linear" not in kinds or all(k == "linear" for k in kinds):
            continue
        layout = plan.values[out].layout
        copy = plan.new_value(layout)
        inserts[i] = (_identity_step(f"{step.name}:shortcut", layout), [out], copy.id)
        for r in readers[out]:
            if plan.steps[r][0].kind != "linear":
                redirect[(r, out)] = copy.id
    if not inserts:
        return 0
    steps = []
    for i, (step, ins, out) in enumerate(plan.steps):
        steps.append((step, [redirect.get((i, v), v) for v in ins], out))
        if i in inserts:
            steps.append(inserts[i])
    plan.steps = steps
    return len(inserts)
