"""The kernel registry: torch module type -> lowering function.

A lowering function ``lower(ctx, node, module, args) -> Value`` receives the already lowered
inputs (``args``: :class:`Value` objects) and appends steps to the plan through ``ctx``. Every
step kind implements ``encrypted(server, values, refresh)`` and ``twin(values)``, sharing its
parameters, so the encrypted run and the cleartext twin cannot drift.

    from ckksnet.compiler import register

    @register(nn.SiLU)
    def lower_silu(ctx, node, module, args):
        return ctx.add_step(MyActivationStep(...), args)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ckksnet.layout import Layout, VectorLayout

KERNELS: dict[type, Callable] = {}
ACTIVATION_TYPES: set[type] = set()  # their inputs' ranges are calibrated (bound B per module)


def register(*module_types: type, activation: bool = False) -> Callable:
    """Decorator: use the function to lower modules of these types (later registrations win).

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
