"""Lowered to :class:`~ckksnet.kernels.SumPoolStep`: average pooling.

Global average pooling (any spelling that averages whole maps: ``AdaptiveAvgPool2d(1)``,
``AvgPool2d(8)`` on an 8x8 map, ``F.avg_pool2d(x, x.size(3))``, ``x.mean((2, 3))``) sums by
rotations (no level) and leaves per-channel sums with a deferred 1 / (H W), which the dense layer
after it reads (:mod:`.pooled_dense`). Any other average pooling is its exact matrix, a deferred
linear map (a :class:`~ckksnet.kernels.LinearStep`), as is a global pool whose channels are split
between ciphertexts.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from ckksnet.compiler.affine import Affine, probe_dense
from ckksnet.compiler.lowerings.deferred import apply_linear, defer, materialize
from ckksnet.core.plan import Value
from ckksnet.kernels.pool import SumPoolStep
from ckksnet.kernels.registry import register
from ckksnet.layout import Layout, PooledLayout


def _avg_pool(ctx, node, fn) -> Value:
    """Average pooling given as a per-channel torch function ``fn``: global (one output per
    channel, the plain mean) -> rotate-and-sum; any other -> its exact matrix (a linear map)."""
    x = node.args[0]
    shape, out_shape = ctx.shape(x), ctx.shape(node)
    if len(shape) != 3:
        raise ctx.fail(node, f"pooling expects (C, H, W) maps, got {shape}")
    c, h, w = shape
    matrix, per = probe_dense(fn, shape)
    if per.shape[0] * c != int(np.prod(out_shape)):
        raise ctx.fail(node, f"pooling {shape} -> {out_shape} is not a per-channel map")
    if per.shape[0] == 1 and np.allclose(per, 1.0 / (h * w), rtol=1e-12, atol=0):
        src = materialize(ctx, ctx.value(x))
        if not isinstance(src.layout, Layout):
            raise ctx.fail(node, "global pooling needs a feature map")
        if not src.layout.aligned:  # a channel's grid split between ciphertexts: sum it as a linear map
            return apply_linear(ctx, node, x, matrix, np.zeros(matrix.shape[0]), out_shape, heavy=True)
        name = ctx.unique(ctx.step_name(node))
        pooled = ctx.add_step(SumPoolStep(name, src.layout), [src], ctx.new_value(PooledLayout(src.layout)))
        # per-channel sums; the 1 / (H W) waits for the next linear layer
        return defer(Affine(pooled, sp.identity(c, format="csr") / (h * w), np.zeros(c), out_shape,
                               f"{name}:mean"))
    ho, wo = out_shape[-2:] if len(out_shape) == 3 else (1, 1)
    stride = (h // ho, w // wo) if len(out_shape) == 3 and h % ho == 0 and w % wo == 0 else (1, 1)
    return apply_linear(ctx, node, x, matrix, np.zeros(matrix.shape[0]), out_shape, stride, heavy=True)


@register(nn.AvgPool2d, nn.AdaptiveAvgPool2d)
def lower_pool(ctx, node, module, args):
    return _avg_pool(ctx, node, module)


@register(F.avg_pool2d, F.adaptive_avg_pool2d)
def lower_pool_function(ctx, node, module, args):
    rest, kwargs = ctx.const(node.args[1:]), ctx.const(node.kwargs)
    return _avg_pool(ctx, node, lambda t: node.target(t, *rest, **kwargs))


@register(torch.mean, "method:mean")
def lower_mean(ctx, node, module, args):
    dims = ctx.arg(node, 1, "dim", None)
    keep = bool(ctx.arg(node, 2, "keepdim", False))
    if ctx.arg(node, 3, "dtype", None) is not None:
        raise ctx.fail(node, "mean with a dtype is not supported")
    rank = len(ctx.shape(node.args[0])) + 1
    dims = tuple(dims) if isinstance(dims, (tuple, list, torch.Size)) else (dims,)
    if None in dims or not {d % rank for d in dims} <= {2, 3} or rank != 4:
        raise ctx.fail(node, f"a mean over dims {dims} mixes channels or images; only the spatial dims "
                             "(2, 3) of an (N, C, H, W) map average as pooling")
    return _avg_pool(ctx, node, lambda t: t.mean(dim=dims, keepdim=keep))
