"""Deferred linear maps: how linear operations wait, compose, and become one linear step.

A linear lowering rule does not add a step: it returns a value whose ``Value.deferred["affine"]``
is an :class:`~ckksnet.compiler.affine.Affine` map from an already computed value (dense
coordinates), through :func:`apply_linear`, which composes it onto its input's deferred map when
it can. :func:`materialize` (called by every nonlinear rule on its inputs, by additions and for
the output) turns a deferred map into one :class:`~ckksnet.kernels.LinearStep` between two slot
layouts: one plaintext matrix, one level; a dense layer reading per-channel sums may become
:class:`~ckksnet.kernels.PooledDense` instead (:mod:`.pooled_dense`).
"""
from __future__ import annotations

import torch.fx as fx

from ckksnet.compiler.affine import Affine
from ckksnet.compiler.lowerings.pooled_dense import emit_pooled_dense
from ckksnet.core.plan import Value
from ckksnet.errors import CompileError, ShapeError
from ckksnet.kernels.linear import BlockLinearMap, LinearMap, LinearStep, tile_spans
from ckksnet.kernels.registry import LoweringContext
from ckksnet.layout import Layout, PooledLayout


def defer(aff: Affine) -> Value:
    """A value defined by the deferred map ``aff`` (no step computes it yet)."""
    try:
        layout = aff.default_layout()
    except (CompileError, ShapeError):
        layout = None
    return Value(-1, layout, deferred={"affine": aff})


def apply_linear(ctx, node: fx.Node, x, matrix, bias, shape: tuple, stride=(1, 1),
                 heavy: bool = False, name: str | None = None) -> Value:
    """The linear operation y = matrix @ x + bias (dense coordinates) on activation ``x``, as a
    deferred map: composed onto x's deferred map when x has one (and, for a ``heavy`` operation,
    that map is simple), else reading x materialized."""
    v = ctx.value(x)
    aff = v.deferred.get("affine")
    name = name or ctx.step_name(node)
    if aff is not None and (not heavy or aff.simple):
        return defer(aff.then(matrix, bias, shape, name, stride, heavy))
    src = materialize(ctx, v)
    return defer(Affine(src, matrix, bias, shape, name, stride, heavy))


def layout_shape(layout) -> tuple:
    """The per-sample tensor shape a layout holds."""
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
    """A deferred map as one linear step into ``layout`` (None: its default)."""
    src = aff.src
    used = getattr(ctx, "unique", None)
    name = used(aff.name) if used else aff.name
    lanes = ctx.options.lanes
    if (layout is None and isinstance(src.layout, PooledLayout) and len(aff.shape) == 1
            and src.layout.ciphertexts == 1 and aff.shape[0] <= ctx.slots):
        return emit_pooled_dense(ctx, aff, name)  # a dense layer reading per-channel sums
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
    """The value as the output of a plan step: a deferred map becomes one linear step (once per
    target layout); a materialized value is returned as is, or mapped into ``layout`` (one
    level) when it lives in another one."""
    aff = v.deferred.get("affine")
    if aff is None:
        if layout is None or v.layout == layout:
            return v
        cache = ctx.__dict__.setdefault("cache", {})
        key = ("relayout", v.id, layout)
        if key not in cache:
            cache[key] = _emit(ctx, Affine.identity(v, layout_shape(v.layout), f"{_producer(ctx, v)}:relayout"),
                               layout)
        return cache[key]
    done = v.deferred.setdefault("done", {})
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


def common_layout(values: list[Value]):
    """Where operands meet (an addition): the first materialized one's layout, else the default
    layout of the first one's deferred map."""
    for v in values:
        if "affine" not in v.deferred:
            return v.layout
    return values[0].deferred["affine"].default_layout()
