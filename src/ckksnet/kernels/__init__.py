"""Encrypted kernels: one class per plan step, its algorithm written once against the evaluator
interface (:mod:`ckksnet.core.evaluator`), plus everything a kernel author needs.

Adding a kernel is one class and one registration (``examples/silu_kernel.py``)::

    from ckksnet.kernels import Kernel, activation_bound, depth_of, eval_odd, materialize, register

    @dataclass
    class SiLUStep(Kernel):
        name: str
        ...
        approximates = "silu"  # a polynomial approximation of an activation (None: exact)
        def evaluate(self, ev: Evaluator, inputs: list, refresh: Refresh): ...

    @register(nn.SiLU, activation=True)
    def lower_silu(ctx, node, module, args):
        src = materialize(ctx, args[0])
        return ctx.add_step(SiLUStep(node.target), [src], ctx.new_value(src.layout))

Built in: :class:`LinearStep` (convolutions at any stride, shortcuts and dense layers, by
diagonals with baby-step giant-step rotations, or masks and a box sum after pooling),
:class:`ReluStep` (minimax composite ReLU), :class:`PolyStep` (a trainable polynomial activation,
``ckksnet.nn.PolyAct``, degree 2 to 4), :class:`SumPoolStep` (rotate-and-sum pooling),
:class:`AddStep` (residual additions). Their lowering rules live in
``compiler/lowerings/<family>.py``, one file per kernel file here.
"""
from __future__ import annotations

from ckksnet.approx.evaluate import depth_of, eval_odd
from ckksnet.core.evaluator import Evaluator
from ckksnet.core.options import CompileOptions
from ckksnet.core.plan import Value
from ckksnet.kernels.registry import LoweringContext, register
from ckksnet.core.encode import PLAN_TYPES
from ckksnet.kernels.base import Kernel, Refresh, activation_bound
from ckksnet.kernels.add import AddStep
from ckksnet.kernels.linear import LinearMap, LinearStep
from ckksnet.kernels.poly import PolyStep
from ckksnet.kernels.pool import SumPoolStep
from ckksnet.kernels.pooled_dense import PooledDense
from ckksnet.kernels.relu import ReluStep
from ckksnet.layout import Layout


def materialize(ctx: LoweringContext, value: Value) -> Value:
    """A value still defined by a deferred linear map (a convolution waiting for its BatchNorm,
    ``Value.deferred``) becomes a step; call it on every input of a new kernel's lowering."""
    return ctx.materialize(value)


__all__ = ["AddStep", "CompileOptions", "Evaluator", "Kernel", "Layout", "LinearMap", "LinearStep",
           "LoweringContext", "PLAN_TYPES", "PolyStep", "PooledDense", "Refresh", "ReluStep", "SumPoolStep", "Value",
           "activation_bound", "depth_of", "eval_odd", "materialize", "register"]
