"""Tracing, lowering and scale assignment: ``compile_model(model, calibration, preset)``."""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from ckksnet.backend.presets import Preset, get_preset
from ckksnet.compiler import lowerings  # noqa: F401  (registers the built-in kernels)
from ckksnet.compiler.plan import Plan
from ckksnet.compiler.registry import ACTIVATION_TYPES, KERNELS, LoweringContext, Value
from ckksnet.compiler.steps import AddStep
from ckksnet.errors import CompileError
from ckksnet.layout import Layout
from ckksnet.nn import Normalize


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) in KERNELS or super().is_leaf_module(m, qualname)


def compile_model(model: nn.Module, calibration: np.ndarray | dict | None = None,
                  preset: str | Preset = "secure", image_size: tuple[int, int] = (32, 32),
                  alpha: int = 13, eps_bits: int = 9, margin: float = 1.5,
                  relu_alpha: dict[str, int] | None = None, rotation_keys: str = "reuse",
                  lanes: bool | None = None, pooled_dense: bool | None = None) -> Plan:
    """Compile a trained model (eval mode) into an encrypted-inference plan.

    calibration: uint8 NHWC images (ReLU input ranges are measured on them) or a dict
    {relu module name: {"max_abs": ...}} as stored in checkpoint metadata. Each ReLU's bound is
    ``margin`` x max |input| (1.5: on the CIFAR-10 test split one ReLU of the bundled model
    reaches 1.33 x its max over the calibration images, and outside [-B, B] the polynomial
    diverges). ``alpha`` / ``eps_bits`` pick the sign table for every ReLU;
    ``relu_alpha`` overrides alpha per ReLU (module name -> alpha). ``rotation_keys``: "reuse"
    (default) chains every rotation from the ~60 rotation keys bootstrapping generates anyway
    (at most 4 key switches at the secure preset, no extra key memory); "pow2" adds keys for
    +-2^i (up to 27 keys, ~3 GB at the secure preset); "direct" one key per rotation index the
    kernels use (fewest key switches, but ~200 keys for ResNet-20: too much memory at N = 2^16).
    ``lanes``: evaluate folded linear maps in lanes (2 levels instead of 1, a quarter of the
    products for ResNet-20's stage 3; see :mod:`ckksnet.kernels.linear`): None where the cost
    model says it pays, True wherever possible, False never. ``pooled_dense``: a Linear after
    global pooling as masks and one box sum (:mod:`ckksnet.kernels.pooled_dense`; ResNet-20's
    fc: 10 products, not 208): None where the cost model says it pays, True wherever its
    output windows fit, False never (the diagonal method).
    """
    if rotation_keys not in ("reuse", "pow2", "direct"):
        raise CompileError(f"rotation_keys must be 'reuse', 'pow2' or 'direct', not {rotation_keys!r}")
    model = model.eval()
    preset = get_preset(preset) if isinstance(preset, str) else preset
    ranges = _ranges(model, calibration)
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    plan = Plan(preset=preset, rotation_keys=rotation_keys)
    ctx = LoweringContext(plan, preset.slots, {"alpha": alpha, "eps_bits": eps_bits, "lanes": lanes,
                                                  "pooled_dense": pooled_dense})
    env: dict[str, Value] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            env[node.name] = _input_value(plan, modules, graph, image_size, preset.slots)
        elif node.op == "call_module":
            module = modules[node.target]
            lower = KERNELS.get(type(module))
            if lower is None:
                raise CompileError(f"unsupported module {node.target!r} ({type(module).__name__}): "
                                   "register a kernel for it with ckksnet.compiler.register")
            args = [env[a.name] for a in node.args if isinstance(a, fx.Node)]
            env[node.name] = lower(ctx, node, module, args)
        elif node.op == "call_function" and node.target in (operator.add, torch.add):
            a, b = (env[x.name] for x in node.args)
            a, b = lowerings.materialize(ctx, a), lowerings.materialize(ctx, b)
            if a.layout != b.layout:
                raise CompileError(f"addition {node.name}: operands have layouts {a.layout} and {b.layout}")
            env[node.name] = ctx.add_step(AddStep(node.name), [a, b], ctx.new_value(a.layout))
        elif node.op == "output":
            out = lowerings.materialize(ctx, env[node.args[0].name])
            plan.output = out.id
        else:
            raise CompileError(f"unsupported operation {node.op} {getattr(node.target, '__name__', node.target)!r} "
                               f"at {node.name}")
    _assign_scales(plan, ranges, margin, {"alpha": alpha, "eps_bits": eps_bits, "relu_alpha": relu_alpha or {}})
    return plan


def _ranges(model: nn.Module, calibration) -> dict[str, float]:
    if calibration is None:
        raise CompileError("calibration data is required: images (uint8 NHWC) or a calibration dict")
    if isinstance(calibration, dict):
        return {k: float(v["max_abs"]) for k, v in calibration.items()}
    from ckksnet.training.calibrate import calibrate

    types = tuple(t for t in KERNELS if t in ACTIVATION_TYPES)
    return {k: v["max_abs"] for k, v in calibrate(model, np.asarray(calibration), q=1.0, types=types).items()}


def _input_value(plan: Plan, modules: dict, graph: fx.Graph, image_size, slots: int) -> Value:
    norm = [m for m in modules.values() if isinstance(m, Normalize)]
    first = next(n for n in graph.nodes if n.op == "call_module")
    if not norm or not isinstance(modules[first.target], Normalize):
        raise CompileError("the model must start with a Normalize module (its constants are the "
                           "client's preprocessing)")
    mean = norm[0].mean.detach().double().numpy().ravel()
    std = norm[0].std.detach().double().numpy().ravel()
    layout = Layout(len(mean), image_size[0], image_size[1], 1, slots)
    plan.set_input(layout, mean, std)
    return plan.values[plan.input]


def _assign_scales(plan: Plan, ranges: dict[str, float], margin: float, options: dict) -> None:
    """Union values that must share a scale (activation in/out, addition operands), give each
    group the largest bound its steps need, then let every step fold its scales in."""
    parent = list(range(len(plan.values)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for step, ins, out in plan.steps:
        if step.shares_scale:
            for i in ins:
                parent[find(i)] = find(out)
    need: dict[int, float] = {find(plan.input): plan.input_bound}
    for step, ins, out in plan.steps:
        bound = step.input_bound(ranges, margin)
        if bound is not None:
            need[find(ins[0])] = max(need.get(find(ins[0]), 0.0), bound)
    for v in plan.values:
        v.scale = need.get(find(v.id), 1.0)
    for step, ins, out in plan.steps:
        step.finalize(plan.values[ins[0]].scale, plan.values[out].scale, options)
