"""Lowered to :class:`~ckksnet.kernels.LinearStep`: every linear operation.

Convolutions (any padding, padding mode, stride, dilation, groups), BatchNorm, dense layers,
``Normalize``, ``PadShortcut``, reshapes, strided slices and padding each return a deferred map
(:func:`~ckksnet.compiler.lowerings.deferred.apply_linear`) that the next linear operation composes
onto: BatchNorm folds into the convolution before it, the option-A shortcut's slice and channel
padding become one map. A convolution or dense layer composes onto a deferred map only when that
map is *simple* (each output reads at most one input), so two convolutions never merge into a
larger kernel. Identity and dropout lower to their input. Partial average pooling is linear too,
but it shares its spellings with global pooling (:mod:`.pool`); constant shifts and scales share
theirs with additions (:mod:`.add`).
"""
from __future__ import annotations

import operator

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from ckksnet.compiler.affine import PAD_MODES, Affine, channel_affine, conv_dense, pad_dense, select_dense
from ckksnet.compiler.lowerings.deferred import apply_linear, defer
from ckksnet.core.plan import Value
from ckksnet.kernels.registry import register
from ckksnet.nn import Normalize, PadShortcut


@register(Normalize)
def lower_normalize(ctx, node, module: Normalize, args):
    if node.name == ctx.client_normalize:
        return ctx.value(node.args[0])  # applied by the client before encryption (see Plan.set_input)
    shape = ctx.shape(node)
    mean = np.broadcast_to(module.mean.detach().double().numpy().ravel(), (shape[0],))
    std = np.broadcast_to(module.std.detach().double().numpy().ravel(), (shape[0],))
    return apply_linear(ctx, node, node.args[0], *channel_affine(shape, 1 / std, -mean / std), shape)


@register(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, "method:contiguous")
def lower_identity(ctx, node, module, args):
    return ctx.value(node.args[0])


@register(F.dropout, F.dropout2d)
def lower_dropout(ctx, node, module, args):
    if ctx.arg(node, 2, "training", True):
        raise ctx.fail(node, "dropout with training=True drops activations at inference too; "
                             "write F.dropout(x, p, training=self.training)")
    return ctx.value(node.args[0])


def conv_pads(module: nn.Conv2d) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding of a Conv2d, 'same' and 'valid' included (for 'same',
    an odd total puts the extra row / column at the bottom / right, as torch)."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0, 0, 0)
        tot = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        return (tot[0] // 2, tot[0] - tot[0] // 2, tot[1] // 2, tot[1] - tot[1] // 2)
    ph, pw = module.padding
    return (ph, ph, pw, pw)


@register(nn.Conv2d)
def lower_conv(ctx, node, module: nn.Conv2d, args):
    x = node.args[0]
    if module.padding_mode not in PAD_MODES:
        raise ctx.fail(node, f"padding mode {module.padding_mode!r} is not one of {', '.join(PAD_MODES)}")
    w = module.weight.detach().double().numpy()
    b = module.bias.detach().double().numpy() if module.bias is not None else None
    matrix, bias = conv_dense(w, b, ctx.shape(x), ctx.shape(node), module.stride, module.dilation,
                              conv_pads(module), module.padding_mode, module.groups)
    return apply_linear(ctx, node, x, matrix, bias, ctx.shape(node), module.stride, heavy=True)


@register(nn.BatchNorm2d, nn.BatchNorm1d)
def lower_bn(ctx, node, module, args):
    if module.running_mean is None or module.running_var is None:
        raise ctx.fail(node, "BatchNorm without running statistics (track_running_stats=False) normalizes "
                             "each batch by its own statistics, which is not a fixed map of one image; "
                             "train it with track_running_stats=True")
    shape = ctx.shape(node)
    c = shape[0]
    gamma = module.weight.detach().double().numpy() if module.affine else np.ones(c)
    beta = module.bias.detach().double().numpy() if module.affine else np.zeros(c)
    inv = gamma / np.sqrt(module.running_var.detach().double().numpy() + module.eps)
    shift = beta - module.running_mean.detach().double().numpy() * inv
    return apply_linear(ctx, node, node.args[0], *channel_affine(shape, inv, shift), shape)


@register(nn.Linear)
def lower_linear(ctx, node, module: nn.Linear, args):
    x = node.args[0]
    w = module.weight.detach().double().numpy()
    b = module.bias.detach().double().numpy() if module.bias is not None else np.zeros(w.shape[0])
    rows = int(np.prod(ctx.shape(x)[:-1]))  # a Linear acts on the last axis
    matrix = sp.kron(sp.identity(rows, format="csr"), sp.csr_matrix(w), format="csr") if rows > 1 else w
    return apply_linear(ctx, node, x, matrix, np.tile(b, rows), ctx.shape(node), heavy=True)


@register(PadShortcut)
def lower_pad_shortcut(ctx, node, module: PadShortcut, args):
    x = node.args[0]
    c, h, w = ctx.shape(x)
    s = module.stride
    sel, shape = select_dense((c, h, w), [np.arange(c), np.arange(h)[::s], np.arange(w)[::s]])
    pad = module.out_ch - module.in_ch
    padm, bias, out = pad_dense(shape, [(pad // 2, pad - pad // 2), (0, 0), (0, 0)])
    return apply_linear(ctx, node, x, padm @ sel, bias, out, (s, s))


@register(nn.Flatten, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, "method:flatten",
          "method:view", "method:reshape", "method:squeeze", "method:unsqueeze")
def lower_reshape(ctx, node, module, args):
    """Any reshape that keeps the batch axis: the dense coordinates stay, the shape changes."""
    x = node.args[0]
    v, shape = ctx.value(x), ctx.shape(node)
    if shape == ctx.shape(x):
        return v
    if int(np.prod(shape)) != int(np.prod(ctx.shape(x))):
        raise ctx.fail(node, f"reshape {ctx.shape(x)} -> {shape} changes the number of values per image")
    aff = v.deferred.get("affine")
    if aff is not None:
        return defer(aff.reshaped(shape))
    return defer(Affine.identity(v, shape, ctx.step_name(node)))


@register(operator.getitem)
def lower_getitem(ctx, node, module, args):
    """x[:, c0:c1:sc, y0:y1:sy, x0:x1:sx] (slices with any step, Ellipsis)."""
    x = node.args[0]
    shape = ctx.shape(x)
    idx = ctx.const(node.args[1])
    idx = idx if isinstance(idx, tuple) else (idx,)
    if sum(i is Ellipsis for i in idx) > 1 or not all(isinstance(i, slice) or i is Ellipsis for i in idx):
        raise ctx.fail(node, f"only slices (and ...) index activations, got {idx!r}")
    if Ellipsis in idx:
        k = idx.index(Ellipsis)
        idx = idx[:k] + (slice(None),) * (len(shape) + 1 - len(idx) + 1) + idx[k + 1:]
    idx = idx + (slice(None),) * (len(shape) + 1 - len(idx))
    if idx[0].indices(2) != (0, 2, 1):
        raise ctx.fail(node, "indexing the batch axis is not supported")
    indices = [np.arange(n)[s] for n, s in zip(shape, idx[1:])]
    matrix, out_shape = select_dense(shape, indices)
    stride = tuple(s.step or 1 for s in idx[-2:]) if len(shape) == 3 else (1, 1)
    return apply_linear(ctx, node, x, matrix, np.zeros(matrix.shape[0]), out_shape,
                  stride if min(stride) > 0 else (1, 1))


def _pad(ctx, node, x, pad, mode: str, value) -> Value:
    shape = ctx.shape(x)
    pad = [int(p) for p in pad]
    if len(pad) % 2 or len(pad) // 2 > len(shape):
        raise ctx.fail(node, f"padding {pad} must come in pairs and leave the batch axis alone")
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise ctx.fail(node, f"padding mode {mode!r} is not supported")
    pads = [(0, 0)] * len(shape)
    for i in range(len(pad) // 2):
        pads[len(shape) - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    if mode != "constant" and any(p != (0, 0) for p in pads[:-2]):
        raise ctx.fail(node, f"{mode} padding pads spatial axes only")
    matrix, bias, out_shape = pad_dense(shape, pads, mode, 0.0 if value is None else float(value))
    return apply_linear(ctx, node, x, matrix, bias, out_shape)


@register(F.pad)
def lower_pad(ctx, node, module, args):
    return _pad(ctx, node, node.args[0], ctx.arg(node, 1, "pad"), ctx.arg(node, 2, "mode", "constant"),
                ctx.arg(node, 3, "value", None))


_PAD_MODULES = {nn.ZeroPad2d: "constant", nn.ConstantPad2d: "constant", nn.ReflectionPad2d: "reflect",
                nn.ReplicationPad2d: "replicate", nn.CircularPad2d: "circular"}


@register(*_PAD_MODULES)
def lower_pad_module(ctx, node, module, args):
    return _pad(ctx, node, node.args[0], module.padding, _PAD_MODULES[type(module)], getattr(module, "value", 0.0))
