"""Lowered to :class:`~ckksnet.kernels.PooledDense`: a dense layer after global pooling.

No torch layer is registered here: ``nn.Linear`` (in :mod:`.linear`) composes onto the pooling's
deferred map (per-channel sums times 1 / (H W)); when that map is materialized from the sums
(:func:`ckksnet.compiler.lowerings.deferred.materialize`), this picks masks and one box sum where
its output windows fit and it pays (``CompileOptions.pooled_dense``), else the generic linear map.
"""
from __future__ import annotations

from ckksnet.compiler.affine import Affine
from ckksnet.core.plan import Value
from ckksnet.kernels.linear import LinearMap, LinearStep
from ckksnet.kernels.pooled_dense import PooledDense
from ckksnet.kernels.registry import LoweringContext
from ckksnet.layout import VectorLayout


def emit_pooled_dense(ctx: LoweringContext, aff: Affine, name: str) -> Value:
    """The step for ``aff``, a map from per-channel sums (one ciphertext) to a vector that fits one
    ciphertext: :class:`PooledDense` or the generic folded :class:`LinearMap`, named ``name``."""
    src = aff.src
    dst = VectorLayout(aff.shape[0], ctx.slots)
    matrix, bias = aff.slot_matrix(dst)
    generic = LinearMap.fold(matrix, bias, name, src.layout.span, ctx.options.lanes)
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
