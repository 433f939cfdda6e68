"""Lowered to :class:`~ckksnet.kernels.AddStep`: arithmetic operators.

Two activations added (``a + b``, ``out += shortcut``, ``torch.add(a, b, alpha=...)``, ``a - b``):
one residual addition, no level, both operands materialized into one layout. With a constant
(``x + c``, ``c - x``, ``x * c``, ``x / c``, ``-x``): a deferred linear map, folded into the next
linear step.
"""
from __future__ import annotations

import operator

import numpy as np
import scipy.sparse as sp
import torch

from ckksnet.compiler.lowerings.deferred import apply_linear, common_layout, materialize
from ckksnet.kernels.add import AddStep
from ckksnet.kernels.registry import register


_ARITH = {operator.add: "add", operator.iadd: "add", torch.add: "add", "method:add": "add", "method:add_": "add",
          operator.sub: "sub", operator.isub: "sub", torch.sub: "sub", "method:sub": "sub", "method:sub_": "sub",
          operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", "method:mul": "mul", "method:mul_": "mul",
          operator.truediv: "div", operator.itruediv: "div", torch.div: "div", "method:div": "div",
          "method:div_": "div", operator.neg: "neg", torch.neg: "neg", "method:neg": "neg"}


def _full(ctx, node, c, shape) -> np.ndarray:
    """A constant broadcast to one sample's ``shape`` (refused if it would broadcast the
    activation or vary across the batch)."""
    t = torch.as_tensor(c, dtype=torch.float64)
    try:
        full = torch.zeros((1,) + tuple(shape), dtype=torch.float64) + t
    except RuntimeError as exc:
        raise ctx.fail(node, f"the constant does not broadcast to {shape}: {exc}") from exc
    if tuple(full.shape) != (1,) + tuple(shape):
        raise ctx.fail(node, f"the constant of shape {tuple(t.shape)} broadcasts the activation {shape} "
                             f"to {tuple(full.shape[1:])}")
    return full.reshape(-1).numpy()


@register(*_ARITH)
def lower_arith(ctx, node, module, args):
    """Residual additions (two activations), and shifts / scales by constants (deferred maps)."""
    key = f"method:{node.target}" if node.op == "call_method" else node.target
    op = _ARITH[key]
    operands = list(node.args[:1 if op == "neg" else 2])
    alpha = ctx.const(node.kwargs.get("alpha", 1))
    if op == "div" and ctx.const(node.kwargs.get("rounding_mode")) is not None:
        raise ctx.fail(node, "division with a rounding mode is not linear")
    shape = ctx.shape(node)
    acts = [ctx.is_act(a) for a in operands]
    n = int(np.prod(shape))
    eye = sp.identity(n, format="csr")
    if op == "neg":
        return apply_linear(ctx, node, operands[0], -eye, np.zeros(n), shape)
    if all(acts):
        if op in ("mul", "div"):
            raise ctx.fail(node, "a product of two activations is not a linear map (register a kernel for it)")
        if ctx.shape(operands[0]) != shape or ctx.shape(operands[1]) != shape:
            raise ctx.fail(node, f"adding shapes {ctx.shape(operands[0])} and {ctx.shape(operands[1])} "
                                 "broadcasts; only equal shapes are added")
        a, b = ctx.value(operands[0]), ctx.value(operands[1])
        factor = float(alpha) * (-1.0 if op == "sub" else 1.0)
        if factor != 1.0:
            b = apply_linear(ctx, node, operands[1], factor * eye, np.zeros(n), shape,
                             name=f"{ctx.step_name(node)}:scale")
        target = common_layout([a, b])
        a, b = materialize(ctx, a, target), materialize(ctx, b, target)
        return ctx.add_step(AddStep(ctx.unique(ctx.step_name(node))), [a, b], ctx.new_value(a.layout))
    if not any(acts):
        raise ctx.fail(node, "no activation among the operands")
    i = acts.index(True)
    x = operands[i]
    if ctx.shape(x) != shape:
        raise ctx.fail(node, f"the constant broadcasts the activation {ctx.shape(x)} to {shape}")
    c = _full(ctx, node, ctx.const(operands[1 - i]), shape)
    if op == "add":  # x + alpha c, or c + alpha x
        m, b = (eye, alpha * c) if i == 0 else (alpha * eye, c)
    elif op == "sub":  # x - alpha c, or c - alpha x
        m, b = (eye, -alpha * c) if i == 0 else (-alpha * eye, c)
    elif op == "mul":
        m, b = sp.diags(c).tocsr(), np.zeros(n)
    else:
        if i == 1:
            raise ctx.fail(node, "dividing by an activation is not a linear map")
        if np.any(c == 0):
            raise ctx.fail(node, "division by zero")
        m, b = sp.diags(1.0 / c).tocsr(), np.zeros(n)
    return apply_linear(ctx, node, x, m, b, shape)
