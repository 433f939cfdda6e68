"""Affine maps y = matrix @ x + bias: what every linear torch operation is, as sparse matrices.

:class:`Affine` is the deferred map the lowering rules compose (:mod:`ckksnet.compiler.lowerings`),
built from maps on *dense coordinates* (``conv_dense``, ``pad_dense``, ``select_dense``,
``channel_affine``, ``probe_dense``) and placed between two slot layouts at the end
(:meth:`Affine.slot_matrix`). The first functions below build slot matrices directly
(rows = output slots, columns = input slots; BN folding included): the reference forms the
tests check the kernels against.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
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


# ==================================================================== dense-coordinate maps
# Every linear operation is first built on *dense coordinates*: the row-major flattening of one
# sample's torch tensor ((C, H, W) or (K,)), independent of any slot layout. Consecutive linear
# operations (a convolution and its BatchNorm, a strided slice and its channel padding, a pool
# and the dense layer after it) compose there into one :class:`Affine` map, and only when a
# nonlinearity, an addition or the output needs the value is it placed between two slot layouts
# (:meth:`Affine.slot_matrix`): one plaintext matrix, one level.

PAD_MODES = ("zeros", "constant", "reflect", "replicate", "circular")


def pad_source(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """For each position of a size-``n`` axis padded by ``before`` / ``after`` (negative: cropped),
    the source position it copies, or -1 where the padding is a constant. ``mode``: "zeros" /
    "constant", "reflect" (mirror without repeating the edge, as torch), "replicate" (repeat the
    edge), "circular" (wrap around)."""
    j = np.arange(-before, n + after)
    if mode in ("zeros", "constant"):
        return np.where((j >= 0) & (j < n), j, -1)
    if mode == "reflect":
        if n < 2 and (before > 0 or after > 0):
            raise CompileError(f"reflect padding of an axis of size {n}")
        period = 2 * (n - 1)
        r = np.mod(j, period)
        return np.where(r < n, r, period - r)
    if mode == "replicate":
        return np.clip(j, 0, n - 1)
    if mode == "circular":
        return np.mod(j, n)
    raise CompileError(f"padding mode {mode!r} is not one of {', '.join(PAD_MODES)}")


def conv_dense(weight: np.ndarray, bias: np.ndarray | None, in_shape: tuple, out_shape: tuple,
               stride: tuple = (1, 1), dilation: tuple = (1, 1), pads: tuple = (0, 0, 0, 0),
               mode: str = "zeros", groups: int = 1) -> tuple[sp.csr_matrix, np.ndarray]:
    """A 2-D convolution on dense coordinates, exactly as torch computes it: any kernel shape,
    stride, dilation, groups; ``pads`` = (top, bottom, left, right), the input padded by
    ``mode`` first (zeros, reflect, replicate, circular). ``out_shape`` is (C', H', W') as torch
    gives it (checked against the arithmetic)."""
    co, cig, kh, kw = weight.shape
    c, h, w = in_shape
    top, bottom, left, right = pads
    ho = (h + top + bottom - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + left + right - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if tuple(out_shape) != (co, ho, wo) or c != cig * groups or co % groups:
        raise CompileError(f"convolution {c}x{h}x{w} -> {tuple(out_shape)} does not match its weights "
                           f"{tuple(weight.shape)}, groups {groups}, stride {stride}, padding {pads}")
    sy, sx = pad_source(h, top, bottom, mode), pad_source(w, left, right, mode)
    iy = sy[stride[0] * np.arange(ho)[None, :] + dilation[0] * np.arange(kh)[:, None]]  # (kh, H')
    ix = sx[stride[1] * np.arange(wo)[None, :] + dilation[1] * np.arange(kw)[:, None]]  # (kw, W')
    o = np.arange(co)
    ci = (o // (co // groups))[:, None] * cig + np.arange(cig)[None, :]  # (co, cig)
    # axes (co, cig, kh, kw, H', W')
    rows = (o[:, None, None, None, None, None] * ho + np.arange(ho)[None, None, None, None, :, None]) * wo \
        + np.arange(wo)[None, None, None, None, None, :]
    cols = (ci[:, :, None, None, None, None] * h + iy[None, None, :, None, :, None]) * w \
        + ix[None, None, None, :, None, :]
    shape = (co, cig, kh, kw, ho, wo)
    vals = np.broadcast_to(weight[:, :, :, :, None, None], shape)
    keep = (vals != 0) & (iy[None, None, :, None, :, None] >= 0) & (ix[None, None, None, :, None, :] >= 0)
    rows, cols = np.broadcast_to(rows, shape)[keep], np.broadcast_to(cols, shape)[keep]
    matrix = sp.csr_matrix((vals[keep], (rows, cols)), shape=(co * ho * wo, c * h * w))  # duplicates add up
    b = np.zeros(co) if bias is None else np.asarray(bias, dtype=np.float64)
    return matrix, np.repeat(b, ho * wo)


def pad_dense(in_shape: tuple, pads: list[tuple[int, int]], mode: str = "constant",
              value: float = 0.0) -> tuple[sp.csr_matrix, np.ndarray, tuple]:
    """``F.pad`` on dense coordinates: ``pads`` gives (before, after) per axis of ``in_shape``
    (negative crops). Returns (matrix, bias, out_shape); the constant ``value`` is the bias of
    padded positions. Modes other than constant pad only the spatial axes (as torch)."""
    sources = [pad_source(n, b, a, mode if axis >= len(in_shape) - 2 or mode == "constant" else "constant")
               for axis, (n, (b, a)) in enumerate(zip(in_shape, pads))]
    out_shape = tuple(len(s) for s in sources)
    grids = np.meshgrid(*sources, indexing="ij")
    valid = np.all([g >= 0 for g in grids], axis=0).ravel()
    cols = np.ravel_multi_index([np.maximum(g, 0) for g in grids], in_shape).ravel()
    rows = np.arange(int(np.prod(out_shape)))
    matrix = sp.csr_matrix((np.ones(int(valid.sum())), (rows[valid], cols[valid])),
                           shape=(len(rows), int(np.prod(in_shape))))
    return matrix, np.where(valid, 0.0, float(value)), out_shape


def select_dense(in_shape: tuple, indices: list[np.ndarray]) -> tuple[sp.csr_matrix, tuple]:
    """Indexing by one integer array per axis (slices with any step): (matrix, out_shape)."""
    grids = np.meshgrid(*indices, indexing="ij")
    out_shape = tuple(len(i) for i in indices)
    cols = np.ravel_multi_index(grids, in_shape).ravel() if grids[0].size else np.zeros(0, int)
    n = int(np.prod(out_shape))
    return sp.csr_matrix((np.ones(n), (np.arange(n), cols)), shape=(n, int(np.prod(in_shape)))), out_shape


def channel_affine(shape: tuple, scale: np.ndarray, shift: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """y[c, ...] = scale[c] x[c, ...] + shift[c] (BatchNorm, Normalize) on dense coordinates."""
    per = int(np.prod(shape[1:]))
    return sp.diags(np.repeat(scale, per)).tocsr(), np.repeat(shift, per)


def probe_dense(fn, in_shape: tuple) -> tuple[sp.csr_matrix, np.ndarray]:
    """The matrix of a per-channel linear torch operation (average pooling in any of its forms):
    ``fn`` applied to the H*W unit images (float64, one channel each) gives its columns, so the
    map is exactly what torch computes, options included (ceil_mode, count_include_pad,
    divisor_override). Returns (matrix over all channels, the one-channel matrix)."""
    c, h, w = in_shape
    with torch.no_grad():
        out = fn(torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w))
    per = out.reshape(h * w, -1).T.numpy()  # (outputs per channel, H*W)
    one = sp.csr_matrix(per)
    one.eliminate_zeros()
    return sp.kron(sp.identity(c, format="csr"), one, format="csr"), per


class Affine:
    """A deferred affine map y = matrix @ x + bias from the materialized value ``src`` (dense
    coordinates of its tensor) to a tensor of per-sample ``shape``; not yet a plan step.

    ``stride``: the spatial stride accumulated so far (a hint for the output layout);
    ``name``: the step name it will get (the first convolution or dense layer in it, else the
    first operation); ``heavy``: it holds such a layer (its rows mix many inputs)."""

    def __init__(self, src, matrix, bias, shape: tuple, name: str, stride=(1, 1), heavy: bool = False):
        self.src, self.shape, self.name, self.stride, self.heavy = src, tuple(shape), name, tuple(stride), heavy
        self.matrix = sp.csr_matrix(matrix)
        self.bias = np.asarray(bias, dtype=np.float64)
        if self.matrix.shape[0] != int(np.prod(self.shape)) or self.bias.shape != (self.matrix.shape[0],):
            raise CompileError(f"{name}: a map of {self.matrix.shape} does not give a {self.shape} tensor")

    @classmethod
    def identity(cls, src, shape: tuple, name: str) -> "Affine":
        n = int(np.prod(shape))
        return cls(src, sp.identity(n, format="csr"), np.zeros(n), shape, name)

    @property
    def simple(self) -> bool:
        """Each output reads at most one input (a selection, padding, per-channel scale): any
        layer may compose onto it without growing."""
        return bool(self.matrix.nnz == 0 or np.diff(self.matrix.indptr).max() <= 1)

    def then(self, matrix, bias, shape: tuple, name: str, stride=(1, 1), heavy: bool = False) -> "Affine":
        """This map followed by y' = matrix @ y + bias."""
        m = sp.csr_matrix(matrix)
        keep_name = self.heavy or not heavy
        return Affine(self.src, m @ self.matrix, m @ self.bias + np.asarray(bias, dtype=np.float64), shape,
                      self.name if keep_name else name,
                      (self.stride[0] * stride[0], self.stride[1] * stride[1]), self.heavy or heavy)

    def reshaped(self, shape: tuple) -> "Affine":
        return Affine(self.src, self.matrix, self.bias, shape, self.name, self.stride, self.heavy)

    def default_layout(self):
        """Where the output goes unless a consumer asks otherwise (see :meth:`Layout.resized`)."""
        src, slots = self.src.layout, self.src.layout.slots
        if len(self.shape) == 1:
            return VectorLayout(self.shape[0], slots)
        if len(self.shape) != 3:
            raise CompileError(f"{self.name}: a tensor of per-sample shape {self.shape} cannot be placed in "
                               "slots (feature maps are (C, H, W), vectors (K,))")
        if isinstance(src, Layout):
            return src.resized(*self.shape, self.stride)
        return Layout(*self.shape, 1, slots)

    def slot_matrix(self, dst) -> tuple[sp.csr_matrix, np.ndarray]:
        """(matrix, bias) on packed slots from ``src``'s layout to ``dst``: (dst ciphertexts *
        slots, src ciphertexts * slots) and (dst ciphertexts * slots,)."""
        src = self.src.layout
        shape = (dst.channels, dst.height, dst.width) if isinstance(dst, Layout) else (dst.length,)
        if int(np.prod(shape)) != int(np.prod(self.shape)):
            raise CompileError(f"{self.name}: layout {dst} does not hold a {self.shape} tensor")
        coo = self.matrix.tocoo()
        nz = coo.data != 0
        rows = np.asarray(dst.index).ravel()[coo.row[nz]]
        cols = np.asarray(src.index).ravel()[coo.col[nz]]
        slots = src.slots  # over several ciphertexts: tile t is rows/columns [t * slots, (t + 1) * slots)
        n_out, n_in = dst.ciphertexts * slots, src.ciphertexts * slots
        bias = np.zeros(n_out)
        bias[np.asarray(dst.index).ravel()] = self.bias
        return sp.csr_matrix((coo.data[nz], (rows, cols)), shape=(n_out, n_in)), bias
