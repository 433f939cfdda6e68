"""The kernel registry: torch module type or function -> lowering function.

A lowering function ``lower(ctx, node, module, args) -> Value`` receives the already lowered
inputs (``args``: :class:`Value` objects; ``module`` is None for a function such as
``operator.add``) and appends kernels to the plan through ``ctx``. Each kernel's algorithm is
written once (``evaluate``, :mod:`ckksnet.kernels.base`) and runs encrypted, traced and as the twin.

    from ckksnet.kernels import register

    @register(nn.SiLU, activation=True)
    def lower_silu(ctx, node, module, args):
        src = materialize(ctx, args[0])
        return ctx.add_step(SiLUStep(node.target), [src], ctx.new_value(src.layout))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ckksnet.layout import Layout, VectorLayout

KERNELS: dict[Any, Callable] = {}  # module type or function (call_function target) -> lowering
ACTIVATION_TYPES: set[type] = set()  # their inputs' ranges are calibrated (bound B per module)


def register(*module_types: Any, activation: bool = False) -> Callable:
    """Decorator: use the function to lower modules of these types, or calls of these functions
    (later registrations win).

    ``activation=True``: calibration records the range of these modules' inputs, which the
    step's ``input_bound`` receives as ``ranges[module name]``.
    """
    def deco(fn: Callable) -> Callable:
        for t in module_types:
            KERNELS[t] = fn
            if activation:
                ACTIVATION_TYPES.add(t)
        return fn
    return deco


@dataclass
class Value:
    """A tensor of the plan: its layout and its scale (stored slot value = true value / scale).
    ``pending`` holds lowering state while compiling: a convolution waiting for its BatchNorm,
    a pooled tensor waiting for its Linear."""

    id: int
    layout: Layout | VectorLayout
    scale: float = 1.0
    pending: dict = field(default_factory=dict)


@dataclass
class LoweringContext:
    """What a lowering function may use: the plan under construction and compile options."""

    plan: Any
    slots: int
    options: dict

    def new_value(self, layout, scale: float = 1.0) -> Value:
        return self.plan.new_value(layout, scale)

    def add_step(self, step, inputs: list[Value], output: Value) -> Value:
        self.plan.add_step(step, [v.id for v in inputs], output.id)
        return output
