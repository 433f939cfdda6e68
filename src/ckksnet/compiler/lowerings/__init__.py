"""Lowering rules: how each supported torch operation becomes plan steps, one file per kernel
family, named as in ``kernels/``: the rules in ``lowerings/<family>.py`` lower to the kernel of
``kernels/<family>.py``.

* ``linear.py``: convolutions, BatchNorm, dense layers, padding, slices, reshapes, Normalize,
  PadShortcut, identity and dropout -> :class:`~ckksnet.kernels.LinearStep`;
* ``pooled_dense.py``: a dense layer after global pooling -> :class:`~ckksnet.kernels.PooledDense`;
* ``pool.py``: average pooling, any spelling -> :class:`~ckksnet.kernels.SumPoolStep` (or a
  linear map);
* ``relu.py``: ReLU, any spelling -> :class:`~ckksnet.kernels.ReluStep`;
* ``poly.py``: :class:`ckksnet.nn.PolyAct` -> :class:`~ckksnet.kernels.PolyStep` (and the identity
  maps that let a degree-2 polynomial read by a shortcut fold its leading coefficient);
* ``add.py``: arithmetic operators: residual additions -> :class:`~ckksnet.kernels.AddStep`
  (with a constant: a linear map);
* not rules: ``deferred.py`` (deferred linear maps, :func:`apply_linear`, and
  :func:`materialize`, which makes their steps) and ``context.py`` (:class:`GraphContext`, what
  every rule receives as ``ctx``).

**Adding an activation (or any layer family)** takes one kernel file, one rules file and one line:

1. ``kernels/<family>.py``: the kernel, a dataclass subclassing :class:`ckksnet.kernels.Kernel`
   (its algorithm written once, ``evaluate(ev, inputs, refresh)``; an activation approximated by a
   polynomial declares ``approximates = "<activation>"`` and ``domain``, so the twin and the
   fidelity report check its inputs).
2. ``compiler/lowerings/<family>.py``: its rules, each registered for the torch spellings it
   lowers (``activation=True``: calibration measures its input range, which the kernel's
   ``input_bound`` reads as ``ranges[step name]``)::

       from ckksnet.compiler.lowerings.deferred import materialize
       from ckksnet.kernels.registry import register
       from ckksnet.kernels.silu import SiLUStep

       @register(nn.SiLU, F.silu, activation=True)
       def lower_silu(ctx, node, module, args):
           src = materialize(ctx, args[0])  # a deferred linear map becomes its step first
           return ctx.add_step(SiLUStep(ctx.step_name(node)), [src], ctx.new_value(src.layout))

3. here: one import line for ``<family>`` below, so its rules register when the compiler loads.

A rule ``rule(ctx, node, module, args) -> Value`` gets the lowered activation inputs (``args``,
in argument order; ``module`` is None for a function or method), reads constants and shapes
through ``ctx`` (:class:`GraphContext`) and returns the value it computes. Each result's shape is
checked against torch's, so a rule that would compute another tensor is refused, not approximated.
Registry keys: :mod:`ckksnet.kernels.registry`. A kernel defined outside ckksnet registers its rule
the same way from its own module (``examples/silu_kernel.py``).
"""
from __future__ import annotations

# the families: importing each registers its rules (one line per file in this folder)
from ckksnet.compiler.lowerings import add  # noqa: F401
from ckksnet.compiler.lowerings import linear  # noqa: F401
from ckksnet.compiler.lowerings import poly  # noqa: F401
from ckksnet.compiler.lowerings import pool  # noqa: F401
from ckksnet.compiler.lowerings import pooled_dense  # noqa: F401
from ckksnet.compiler.lowerings import relu  # noqa: F401
from ckksnet.compiler.lowerings.context import GraphContext
from ckksnet.compiler.lowerings.deferred import apply_linear, defer, layout_shape, materialize

__all__ = ["GraphContext", "apply_linear", "defer", "layout_shape", "materialize"]
