"""Built-in kernels: how each supported torch module becomes plan steps.

Conv2d leaves a *pending* value that the next module completes (BatchNorm folds into the
convolution); any other consumer materializes the pending convolution as is. Global average
pooling sums by rotations and leaves per-channel sums that only Flatten / Linear may read; the
Linear is a :class:`PooledDense` (masks and one box sum) whenever its output windows fit.
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn as nn

from ckksnet.compiler.lower import conv_matrix, fold_bn, pad_shortcut_matrix, pooled_linear_matrix
from ckksnet.compiler.registry import LoweringContext, Value, register
from ckksnet.errors import CompileError
from ckksnet.kernels.add import AddStep
from ckksnet.kernels.linear import LinearMap, LinearStep
from ckksnet.kernels.pool import SumPoolStep
from ckksnet.kernels.pooled_dense import PooledDense
from ckksnet.kernels.relu import ReluStep
from ckksnet.layout import PooledLayout, VectorLayout
from ckksnet.nn import Normalize, PadShortcut


def _linear(ctx: LoweringContext, name: str, matrix, bias, src: Value, dst) -> Value:
    """A linear step from src to a new value with layout dst, folded (and in lanes) as it pays."""
    kernel = LinearMap.fold(matrix, bias, name, src.layout.span, ctx.options.get("lanes"))
    return ctx.add_step(LinearStep(name, kernel), [src], ctx.new_value(dst))


def _emit_conv(ctx: LoweringContext, pending: dict, bn: nn.BatchNorm2d | None, name: str) -> Value:
    conv, src = pending["conv"], pending["input"]
    w, b = fold_bn(conv, bn)
    dst = src.layout.strided(conv.out_channels, conv.stride[0])
    matrix, bias = conv_matrix(w, b, conv.stride[0], conv.padding[0], src.layout, dst)
    return _linear(ctx, name, matrix, bias, src, dst)


def materialize(ctx: LoweringContext, v: Value) -> Value:
    """A value whose lowering is still pending (a convolution without BN) becomes a step."""
    if "conv" in v.pending:
        return _emit_conv(ctx, v.pending, None, v.pending["name"])
    if "pool" in v.pending:
        raise CompileError("global average pooling must be followed by Flatten and Linear")
    return v


@register(Normalize)
def lower_normalize(ctx, node, module, args):
    return args[0]  # applied by the client before encryption (see Plan.set_input)


@register(nn.Identity, nn.Dropout)
def lower_identity(ctx, node, module, args):
    return args[0]


@register(nn.Conv2d)
def lower_conv(ctx, node, module: nn.Conv2d, args):
    src = materialize(ctx, args[0])
    k, s, p = module.kernel_size, module.stride, module.padding
    if k[0] != k[1] or s[0] != s[1] or p[0] != p[1] or module.groups != 1 or module.dilation != (1, 1):
        raise CompileError(f"conv {node.target}: only square, ungrouped, undilated kernels are supported")
    v = ctx.new_value(src.layout)
    v.pending = {"conv": module, "input": src, "name": node.target}
    return v


@register(nn.BatchNorm2d)
def lower_bn(ctx, node, module, args):
    v = args[0]
    if "conv" not in v.pending:
        raise CompileError(f"BatchNorm {node.target} must follow a convolution (it is folded into it)")
    return _emit_conv(ctx, v.pending, module, v.pending["name"])


@register(nn.ReLU, activation=True)
def lower_relu(ctx, node, module, args):
    src = materialize(ctx, args[0])
    # the approximation is chosen once the bound B is known (graph._assign_scales)
    return ctx.add_step(ReluStep(node.target), [src], ctx.new_value(src.layout))


@register(PadShortcut)
def lower_pad_shortcut(ctx, node, module: PadShortcut, args):
    src = materialize(ctx, args[0])
    dst = src.layout.strided(module.out_ch, module.stride)
    matrix, bias = pad_shortcut_matrix(src.layout, dst, module.stride)
    return _linear(ctx, node.target, matrix, bias, src, dst)


@register(nn.AdaptiveAvgPool2d)
def lower_pool(ctx, node, module, args):
    src = materialize(ctx, args[0])
    if module.output_size not in (1, (1, 1)):
        raise CompileError(f"{node.target}: only global average pooling (output size 1) is supported")
    out = ctx.add_step(SumPoolStep(node.target, src.layout), [src], ctx.new_value(PooledLayout(src.layout)))
    out.pending = {"pool": src.layout.height * src.layout.width}  # sums: the Linear divides
    return out


@register(nn.Flatten)
def lower_flatten(ctx, node, module, args):
    if "pool" not in args[0].pending:
        raise CompileError(f"{node.target}: Flatten is supported after global average pooling only")
    return args[0]


@register(nn.Linear)
def lower_linear(ctx, node, module: nn.Linear, args):
    src = args[0]
    if "pool" not in src.pending:
        raise CompileError(f"{node.target}: Linear is supported after global average pooling only")
    pixels = src.pending["pool"]
    w = module.weight.detach().double().numpy()
    b = module.bias.detach().double().numpy() if module.bias is not None else np.zeros(w.shape[0])
    dst = VectorLayout(module.out_features, ctx.slots)
    matrix, bias = pooled_linear_matrix(module, src.layout, dst, pixels)  # checks the feature count
    generic = LinearMap.fold(matrix, bias, node.target, src.layout.span, ctx.options.get("lanes"))
    choice = ctx.options.get("pooled_dense")
    try:  # masks and one box sum, when its output windows fit (and it is cheaper, unless forced)
        kernel = None if choice is False else PooledDense(w / pixels, b, src.layout.index, src.layout.box,
                                                          ctx.slots, node.target)
    except ValueError:
        kernel = None
    if kernel is None or (choice is None and kernel.cost() >= generic.cost()):
        return ctx.add_step(LinearStep(node.target, generic), [src], ctx.new_value(dst))
    dst = VectorLayout(module.out_features, ctx.slots, tuple(int(p) for p in kernel.outputs))
    return ctx.add_step(LinearStep(node.target, kernel), [src], ctx.new_value(dst))


@register(operator.add, torch.add, operator.iadd)
def lower_add(ctx, node, module, args):
    if len(args) != 2:
        raise CompileError(f"addition {node.name}: only the sum of two tensors is supported")
    a, b = (materialize(ctx, v) for v in args)
    if a.layout != b.layout:
        raise CompileError(f"addition {node.name}: operands have layouts {a.layout} and {b.layout}")
    return ctx.add_step(AddStep(node.name), [a, b], ctx.new_value(a.layout))
