"""Lowering of torch layers to sparse matrices between slot layouts (BN folding included).

Every function returns (matrix, bias) with matrix of shape (slots, slots): row = output slot,
column = input slot, so that y = matrix @ x + bias on packed vectors.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch.nn as nn

from ckksnet.errors import CompileError
from ckksnet.layout import Layout, PooledLayout, VectorLayout


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[np.ndarray, np.ndarray]:
    """Conv weights and bias with an eval-mode BatchNorm folded in exactly:
    W' = W * g / sqrt(var + eps) per output channel, b' = beta + (b - mean) * g / sqrt(var + eps)."""
    w = conv.weight.detach().double().numpy()
    b = conv.bias.detach().double().numpy() if conv.bias is not None else np.zeros(w.shape[0])
    if bn is None:
        return w, b
    gamma = bn.weight.detach().double().numpy() if bn.affine else np.ones(w.shape[0])
    beta = bn.bias.detach().double().numpy() if bn.affine else np.zeros(w.shape[0])
    inv = gamma / np.sqrt(bn.running_var.detach().double().numpy() + bn.eps)
    return w * inv[:, None, None, None], beta + (b - bn.running_mean.detach().double().numpy()) * inv


def conv_matrix(weight: np.ndarray, bias: np.ndarray, stride: int, padding: int,
                src: Layout, dst: Layout) -> tuple[sp.csr_matrix, np.ndarray]:
    """A 2-D convolution (square kernel, zero padding) from layout ``src`` to ``dst``."""
    co, ci, k, _ = weight.shape
    if (ci, co) != (src.channels, dst.channels):
        raise CompileError(f"conv {ci}->{co} channels does not match layouts {src.channels}->{dst.channels}")
    yo = np.arange(dst.height)
    xo = np.arange(dst.width)
    ky = np.arange(k)
    yi = stride * yo[None, :] + ky[:, None] - padding  # (k, H')
    xi = stride * xo[None, :] + ky[:, None] - padding  # (k, W')
    vy = (yi >= 0) & (yi < src.height)
    vx = (xi >= 0) & (xi < src.width)
    # broadcast to (co, ci, ky, kx, y', x')
    shape = (co, ci, k, k, dst.height, dst.width)
    O = np.broadcast_to(np.arange(co)[:, None, None, None, None, None], shape)
    I = np.broadcast_to(np.arange(ci)[None, :, None, None, None, None], shape)
    Yi = np.broadcast_to(yi[None, None, :, None, :, None], shape)
    Xi = np.broadcast_to(xi[None, None, None, :, None, :], shape)
    valid = np.broadcast_to(vy[None, None, :, None, :, None] & vx[None, None, None, :, None, :], shape)
    Yo = np.broadcast_to(yo[None, None, None, None, :, None], shape)
    Xo = np.broadcast_to(xo[None, None, None, None, None, :], shape)
    W = np.broadcast_to(weight[:, :, :, :, None, None], shape)
    keep = valid & (W != 0)
    rows = dst.index[O[keep], Yo[keep], Xo[keep]]
    cols = src.index[I[keep], Yi[keep], Xi[keep]]
    matrix = sp.csr_matrix((W[keep], (rows, cols)), shape=(src.slots, src.slots))
    return matrix, _channel_bias(bias, dst)


def _channel_bias(bias: np.ndarray, dst: Layout) -> np.ndarray:
    out = np.zeros(dst.slots)
    out[dst.index.ravel()] = np.repeat(bias, dst.height * dst.width)
    return out


def pad_shortcut_matrix(src: Layout, dst: Layout, stride: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Option-A shortcut: every ``stride``-th pixel, channels zero-padded evenly on both sides."""
    pad = (dst.channels - src.channels) // 2
    c = np.arange(src.channels)[:, None, None]
    y = np.arange(dst.height)[None, :, None]
    x = np.arange(dst.width)[None, None, :]
    rows = dst.index[c + pad, y, x].ravel() if dst.channels else np.zeros(0, int)
    cols = src.index[c, stride * y, stride * x].ravel()
    matrix = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(src.slots, src.slots))
    return matrix, np.zeros(src.slots)


def pooled_linear_matrix(fc: nn.Linear, src: PooledLayout, dst: VectorLayout,
                         pixels: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """A dense layer reading per-channel sums (rotate-and-sum pooling of ``pixels`` pixels):
    the average's 1 / pixels is folded into the weights."""
    w = fc.weight.detach().double().numpy()  # (classes, channels)
    if w.shape[1] != src.channels:
        raise CompileError(f"linear layer expects {w.shape[1]} features, pooling gives {src.channels}")
    n_out = w.shape[0]
    rows = np.repeat(np.arange(n_out), src.channels)
    cols = np.tile(src.index, n_out)
    matrix = sp.csr_matrix((w.ravel() / pixels, (rows, cols)), shape=(src.slots, src.slots))
    bias = dst.pack(fc.bias.detach().double().numpy() if fc.bias is not None else np.zeros(n_out))
    return matrix, bias
