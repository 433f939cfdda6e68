"""Built-in kernels: how each supported torch operation becomes plan steps.

**Linear operations wait, then compose.** A convolution (any padding, padding mode, stride,
dilation, groups), BatchNorm, average pooling, ``F.pad`` and the padding modules, strided
slices, dense layers, shifts and scales by constants and reshapes do not become steps at once:
each leaves a *pending* :class:`~ckksnet.compiler.lower.Affine` map on dense coordinates (the
row-major flattening of one sample's tensor), and the next linear operation composes onto it:
BatchNorm folds into the convolution before it, the option-A shortcut's slice and channel
padding become one map, the pool's 1 / (H W) goes into the dense layer. A ReLU, an addition or
the output *materializes* it: one :class:`LinearStep` between two slot layouts, one level. A
convolution, partial pool or dense layer composes onto a pending map only when that map is
*simple* (each output reads at most one input), so two convolutions never merge into a larger
kernel.

**Global average pooling** (any spelling that averages whole maps: ``AdaptiveAvgPool2d(1)``,
``AvgPool2d(8)`` on an 8x8 map, ``F.avg_pool2d(x, x.size(3))``, ``x.mean((2, 3))``) sums by
rotations (no level) and leaves per-channel sums, which the dense layer after it reads (masks
and one box sum, :class:`PooledDense`, where its output windows fit and it pays).

**Spellings.** A module type, a function (``F.relu``, ``torch.flatten``, ``operator.add``) or a
tensor method (key ``"method:<name>"``, e.g. ``"method:view"``) is registered with
:func:`ckksnet.kernels.registry.register`. Lowering functions read the traced node's
arguments; constant ones (``x.size(3)``, ``planes // 4``) and every tensor's shape come from a
sample run of the traced model (:class:`GraphContext`). Each result's shape is checked
against torch's, so a lowering that would compute another tensor is refused, not approximated.
"""
from __future__ import annotations

import operator

import numpy as np
import scipy.sparse as sp
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ckksnet.compiler.lower import (PAD_MODES, Affine, channel_affine, conv_dense, pad_dense, probe_dense,
                                    select_dense)
from ckksnet.core.options import CompileOptions
from ckksnet.core.plan import Value
from ckksnet.kernels.registry import LoweringContext, register
from ckksnet.errors import CompileError, ShapeError
from ckksnet.kernels.add import AddStep
from ckksnet.kernels.linear import BlockLinearMap, LinearMap, LinearStep, tile_spans
from ckksnet.kernels.pool import SumPoolStep
from ckksnet.kernels.pooled_dense import PooledDense
from ckksnet.kernels.relu import ReluStep
from ckksnet.layout import Layout, PooledLayout, VectorLayout
from ckksnet.nn import Normalize, PadShortcut


class GraphContext(LoweringContext):
    """The lowering context of :func:`ckksnet.compiler.phases.lower`: the plan, the options, and
    what the traced graph's sample run saw.

    ``sample``: node name -> its value on the sample batch (tensors keep the batch axis first);
    ``acts``: names of nodes that carry activations (tensors computed from the input; every
    other node is a constant); ``names``: node name -> step name; ``where``: node -> its source
    line; ``env``: node name -> lowered :class:`Value`."""

    def __init__(self, plan, slots: int, options: CompileOptions, sample: dict, acts: set, names: dict, where,
                 modules: dict, client_normalize: str | None = None):
        super().__init__(plan, slots, options)
        self.sample, self.acts, self.names, self.where = sample, acts, names, where
        self.modules = modules
        self.client_normalize = client_normalize
        self.env: dict[str, Value] = {}
        self.cache: dict = {}
        self.used: set[str] = set()

    # ------------------------------------------------------------ reading the graph
    def is_act(self, arg) -> bool:
        return isinstance(arg, fx.Node) and arg.name in self.acts

    def value(self, arg) -> Value:
        if not self.is_act(arg):
            raise CompileError(f"expected an activation, got the constant {arg!r}")
        return self.env[arg.name]

    def shape(self, arg) -> tuple:
        """Per-sample shape of an activation node (the batch axis dropped)."""
        return tuple(self.sample[arg.name].shape[1:])

    def const(self, arg):
        """``arg`` with every node replaced by its sample value; activations are refused."""
        def get(n: fx.Node):
            if n.name in self.acts:
                raise CompileError(f"{n.name} is an activation where a constant is expected")
            return self.sample[n.name]
        return fx.node.map_arg(arg, get)

    def arg(self, node: fx.Node, i: int, name: str, default=None):
        """Positional argument ``i`` or keyword ``name`` of ``node``, resolved to a constant."""
        if len(node.args) > i:
            return self.const(node.args[i])
        return self.const(node.kwargs.get(name, default))

    def step_name(self, node: fx.Node) -> str:
        return self.names.get(node.name, node.name)

    def unique(self, name: str) -> str:
        out, k = name, 2
        while out in self.used:
            out, k = f"{name}@{k}", k + 1
        self.used.add(out)
        return out

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            what = f"module {node.target!r} ({type(self.modules.get(node.target)).__name__})"
        elif node.op == "call_method":
            what = f"method .{node.target}() (node {node.name})"
        else:
            what = f"function {getattr(node.target, '__name__', node.target)!r} (node {node.name})"
        loc = self.where(node)
        return what + (f" at {loc}" if loc else "")

    def fail(self, node: fx.Node, message: str) -> CompileError:
        return CompileError(f"{self.describe(node)}: {message}")

    def materialize(self, value: Value, layout=None) -> Value:
        return materialize(self, value, layout)


# ================================================================ pending maps
def _pending(aff: Affine) -> Value:
    try:
        layout = aff.default_layout()
    except (CompileError, ShapeError):
        layout = None
    return Value(-1, layout, pending={"affine": aff})


def _apply(ctx: GraphContext, node: fx.Node, x, matrix, bias, shape: tuple, stride=(1, 1),
           heavy: bool = False, name: str | None = None) -> Value:
    """The linear operation y = matrix @ x + bias (dense coordinates) on activation ``x``, as a
    pending map: composed onto x's pending map when x has one (and, for a ``heavy`` operation,
    that map is simple), else reading x materialized."""
    v = ctx.value(x)
    aff = v.pending.get("affine")
    name = name or ctx.step_name(node)
    if aff is not None and (not heavy or aff.simple):
        return _pending(aff.then(matrix, bias, shape, name, stride, heavy))
    src = materialize(ctx, v)
    return _pending(Affine(src, matrix, bias, shape, name, stride, heavy))


def _layout_shape(layout) -> tuple:
    if isinstance(layout, Layout):
        return layout.shape
    if isinstance(layout, PooledLayout):
        return (layout.channels,)
    return (layout.length,)


def _producer(ctx: LoweringContext, v: Value) -> str:
    for step, _, out in reversed(ctx.plan.steps):
        if out == v.id:
            return step.name
    return "input"


def _emit(ctx: LoweringContext, aff: Affine, layout) -> Value:
    """A pending map as one linear step into ``layout`` (None: its default)."""
    src = aff.src
    used = getattr(ctx, "unique", None)
    name = used(aff.name) if used else aff.name
    lanes = ctx.options.lanes
    if (layout is None and isinstance(src.layout, PooledLayout) and len(aff.shape) == 1
            and src.layout.ciphertexts == 1 and aff.shape[0] <= ctx.slots):
        dst = VectorLayout(aff.shape[0], ctx.slots)
        matrix, bias = aff.slot_matrix(dst)
        generic = LinearMap.fold(matrix, bias, name, src.layout.span, lanes)
        choice = ctx.options.pooled_dense
        try:  # masks and one box sum, when its output windows fit (and it is cheaper, unless forced)
            kernel = None if choice is False else PooledDense(aff.matrix.toarray(), aff.bias, src.layout.index,
                                                              src.layout.box, ctx.slots, name)
        except ValueError:
            kernel = None
        if kernel is None or (choice is None and kernel.cost() >= generic.cost()):
            return ctx.add_step(LinearStep(name, generic), [src], ctx.new_value(dst))
        dst = VectorLayout(aff.shape[0], ctx.slots, tuple(int(p) for p in kernel.outputs))
        return ctx.add_step(LinearStep(name, kernel), [src], ctx.new_value(dst))
    try:
        dst = layout if layout is not None else aff.default_layout()
    except ShapeError as exc:
        raise CompileError(f"{aff.name}: {exc}") from exc
    matrix, bias = aff.slot_matrix(dst)
    if src.layout.ciphertexts == 1 and dst.ciphertexts == 1:
        kernel = LinearMap.fold(matrix, bias, name, src.layout.span, lanes)
    else:  # several ciphertexts in or out: one block per (output, input) ciphertext pair
        kernel = BlockLinearMap.split(matrix, bias, ctx.slots, name, tile_spans(src.layout))
    return ctx.add_step(LinearStep(name, kernel), [src], ctx.new_value(dst))


def materialize(ctx: LoweringContext, v: Value, layout=None) -> Value:
    """The value as the output of a plan step: a pending map becomes one linear step (once per
    target layout); a materialized value is returned as is, or mapped into ``layout`` (one
    level) when it lives in another one."""
    aff = v.pending.get("affine")
    if aff is None:
        if layout is None or v.layout == layout:
            return v
        cache = ctx.__dict__.setdefault("cache", {})
        key = ("relayout", v.id, layout)
        if key not in cache:
            cache[key] = _emit(ctx, Affine.identity(v, _layout_shape(v.layout), f"{_producer(ctx, v)}:relayout"),
                               layout)
        return cache[key]
    done = v.pending.setdefault("done", {})
    if layout is None and None not in done:
        try:
            default = aff.default_layout()
        except (CompileError, ShapeError):
            default = None
        if default is not None and default in done and not isinstance(aff.src.layout, PooledLayout):
            done[None] = done[default]
    if layout not in done:
        out = _emit(ctx, aff, layout)
        done[layout] = out
        done.setdefault(out.layout, out)
    return done[layout]


def _common_layout(values: list[Value]):
    for v in values:
        if "affine" not in v.pending:
            return v.layout
    return values[0].pending["affine"].default_layout()


# ================================================================ modules
@register(Normalize)
def lower_normalize(ctx, node, module: Normalize, args):
    if node.name == ctx.client_normalize:
        return ctx.value(node.args[0])  # applied by the client before encryption (see Plan.set_input)
    shape = ctx.shape(node)
    mean = np.broadcast_to(module.mean.detach().double().numpy().ravel(), (shape[0],))
    std = np.broadcast_to(module.std.detach().double().numpy().ravel(), (shape[0],))
    return _apply(ctx, node, node.args[0], *channel_affine(shape, 1 / std, -mean / std), shape)


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
    return _apply(ctx, node, x, matrix, bias, ctx.shape(node), module.stride, heavy=True)


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
    return _apply(ctx, node, node.args[0], *channel_affine(shape, inv, shift), shape)


@register(nn.Linear)
def lower_linear(ctx, node, module: nn.Linear, args):
    x = node.args[0]
    w = module.weight.detach().double().numpy()
    b = module.bias.detach().double().numpy() if module.bias is not None else np.zeros(w.shape[0])
    rows = int(np.prod(ctx.shape(x)[:-1]))  # a Linear acts on the last axis
    matrix = sp.kron(sp.identity(rows, format="csr"), sp.csr_matrix(w), format="csr") if rows > 1 else w
    return _apply(ctx, node, x, matrix, np.tile(b, rows), ctx.shape(node), heavy=True)


@register(nn.ReLU, F.relu, torch.relu, torch.relu_, "method:relu", "method:relu_", activation=True)
def lower_relu(ctx, node, module, args):
    src = materialize(ctx, args[0])
    # the approximation is chosen once the bound B is known (phases.assign_scales / finalize)
    ext = ctx.options.relu_extension  # domain extension L (kernels/relu.py)
    return ctx.add_step(ReluStep(ctx.step_name(node), extension=ext), [src], ctx.new_value(src.layout))


@register(PadShortcut)
def lower_pad_shortcut(ctx, node, module: PadShortcut, args):
    x = node.args[0]
    c, h, w = ctx.shape(x)
    s = module.stride
    sel, shape = select_dense((c, h, w), [np.arange(c), np.arange(h)[::s], np.arange(w)[::s]])
    pad = module.out_ch - module.in_ch
    padm, bias, out = pad_dense(shape, [(pad // 2, pad - pad // 2), (0, 0), (0, 0)])
    return _apply(ctx, node, x, padm @ sel, bias, out, (s, s))


# ================================================================ pooling
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
            return _apply(ctx, node, x, matrix, np.zeros(matrix.shape[0]), out_shape, heavy=True)
        name = ctx.unique(ctx.step_name(node))
        pooled = ctx.add_step(SumPoolStep(name, src.layout), [src], ctx.new_value(PooledLayout(src.layout)))
        # per-channel sums; the 1 / (H W) waits for the next linear layer
        return _pending(Affine(pooled, sp.identity(c, format="csr") / (h * w), np.zeros(c), out_shape,
                               f"{name}:mean"))
    ho, wo = out_shape[-2:] if len(out_shape) == 3 else (1, 1)
    stride = (h // ho, w // wo) if len(out_shape) == 3 and h % ho == 0 and w % wo == 0 else (1, 1)
    return _apply(ctx, node, x, matrix, np.zeros(matrix.shape[0]), out_shape, stride, heavy=True)


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


# ================================================================ shapes
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
    aff = v.pending.get("affine")
    if aff is not None:
        return _pending(aff.reshaped(shape))
    return _pending(Affine.identity(v, shape, ctx.step_name(node)))


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
    return _apply(ctx, node, x, matrix, np.zeros(matrix.shape[0]), out_shape,
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
    return _apply(ctx, node, x, matrix, bias, out_shape)


@register(F.pad)
def lower_pad(ctx, node, module, args):
    return _pad(ctx, node, node.args[0], ctx.arg(node, 1, "pad"), ctx.arg(node, 2, "mode", "constant"),
                ctx.arg(node, 3, "value", None))


_PAD_MODULES = {nn.ZeroPad2d: "constant", nn.ConstantPad2d: "constant", nn.ReflectionPad2d: "reflect",
                nn.ReplicationPad2d: "replicate", nn.CircularPad2d: "circular"}


@register(*_PAD_MODULES)
def lower_pad_module(ctx, node, module, args):
    return _pad(ctx, node, node.args[0], module.padding, _PAD_MODULES[type(module)], getattr(module, "value", 0.0))


# ================================================================ arithmetic
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
    """Residual additions (two activations), and shifts / scales by constants (pending maps)."""
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
        return _apply(ctx, node, operands[0], -eye, np.zeros(n), shape)
    if all(acts):
        if op in ("mul", "div"):
            raise ctx.fail(node, "a product of two activations is not a linear map (register a kernel for it)")
        if ctx.shape(operands[0]) != shape or ctx.shape(operands[1]) != shape:
            raise ctx.fail(node, f"adding shapes {ctx.shape(operands[0])} and {ctx.shape(operands[1])} "
                                 "broadcasts; only equal shapes are added")
        a, b = ctx.value(operands[0]), ctx.value(operands[1])
        factor = float(alpha) * (-1.0 if op == "sub" else 1.0)
        if factor != 1.0:
            b = _apply(ctx, node, operands[1], factor * eye, np.zeros(n), shape, name=f"{ctx.step_name(node)}:scale")
        target = _common_layout([a, b])
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
    return _apply(ctx, node, x, m, b, shape)
