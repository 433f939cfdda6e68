"""The lowering registry: torch module type, function or tensor method -> lowering function.

Keys, by the kind of torch.fx node they lower:

* ``call_module``: the module's type (``nn.Conv2d``);
* ``call_function``: the function object itself, as the node's target (``F.relu``,
  ``torch.relu``, ``torch.flatten``, ``operator.add``; spellings that are distinct objects are
  registered one by one);
* ``call_method``: the string ``"method:<name>"`` for ``tensor.<name>(...)`` (``"method:relu"``,
  ``"method:view"``).

Nodes whose result is not an activation (``x.size(3)``, ``x.shape[0]``, ``planes // 4``) need
no kernel: they are constants, read from a sample run of the traced model.

A lowering function ``lower(ctx, node, module, args) -> Value`` receives the already lowered
activation inputs (``args``: :class:`Value` objects, in argument order; ``module`` is None for
a function or method) and appends kernels to the plan through ``ctx``; the built-in ones also
read constants and shapes through the compiler's context
(:class:`ckksnet.compiler.lowerings.GraphContext`); they live in ``compiler/lowerings/<family>.py``,
one file per kernel family (:mod:`ckksnet.compiler.lowerings` says how to add one). Each kernel's
algorithm is written once (``evaluate``, :mod:`ckksnet.kernels.base`) and runs encrypted, traced
and as the twin.

    from ckksnet.kernels import register

    @register(nn.SiLU, activation=True)
    def lower_silu(ctx, node, module, args):
        src = materialize(ctx, args[0])
        return ctx.add_step(SiLUStep(node.target), [src], ctx.new_value(src.layout))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ckksnet.core.options import CompileOptions
from ckksnet.core.plan import Value

LOWERINGS: dict[Any, Callable] = {}  # module type, function or "method:<name>" -> lowering
ACTIVATION_TYPES: set = set()  # keys whose inputs' ranges are calibrated (bound B per step)


def register(*module_types: Any, activation: bool = False) -> Callable:
    """Decorator: use the function to lower modules of these types, or calls of these functions
    (later registrations win).

    ``activation=True``: calibration records the range of these nodes' inputs, which the
    step's ``input_bound`` receives as ``ranges[step name]``: the module's name for a module
    called once (``name@k`` for its k-th call when it is called several times), the torch.fx
    node name for a function or method (``relu_3``).
    """
    def deco(fn: Callable) -> Callable:
        for t in module_types:
            LOWERINGS[t] = fn
            if activation:
                ACTIVATION_TYPES.add(t)
        return fn
    return deco


@dataclass
class LoweringContext:
    """What a lowering function may use: the plan under construction and compile options."""

    plan: Any
    slots: int
    options: CompileOptions

    def new_value(self, layout, scale: float = 1.0) -> Value:
        return self.plan.new_value(layout, scale)

    def add_step(self, step, inputs: list[Value], output: Value) -> Value:
        self.plan.add_step(step, [v.id for v in inputs], output.id)
        return output

    def materialize(self, value: Value) -> Value:
        """The value itself once nothing is deferred; the compiler's context overrides this to
        turn a deferred linear map (a convolution waiting for its BatchNorm) into a step."""
        return value
