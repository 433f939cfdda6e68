"""``compile``: a trained torch model -> a complete :class:`~ckksnet.compiler.plan.Plan`, in
named phases, one function each:

    trace -> lower -> assign scales -> finalize -> schedule

* :func:`trace`: torch.fx graph of the model (registered module types are leaves);
* :func:`lower`: each node becomes plan steps through the kernel registered for its module type
  or function (``operator.add`` included), BatchNorm folded into the convolution before it;
* :func:`assign_scales`: each value's scale: activations' bounds B from calibration (times a
  margin), shared along identity shortcuts so residual additions need no rescaling;
* :func:`finalize`: every kernel folds its scales in (and picks its approximation);
* :func:`ckksnet.compiler.schedule.schedule_plan`: keys, baby steps, bootstraps, levels, costs.

The caller's model is left as it was (training mode included).
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from ckksnet.backend.presets import Preset, get_preset
from ckksnet.compiler import lowerings
from ckksnet.compiler.plan import Plan
from ckksnet.compiler.registry import ACTIVATION_TYPES, KERNELS, LoweringContext, Value
from ckksnet.compiler.schedule import schedule_plan
from ckksnet.errors import CompileError
from ckksnet.layout import Layout
from ckksnet.nn import Normalize

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) in KERNELS or super().is_leaf_module(m, qualname)


def compile_model(model: nn.Module, calibration: np.ndarray | dict | None = None,
                  preset: str | Preset = "secure", image_size: tuple[int, int] = (32, 32),
                  alpha: int = 13, eps_bits: int = 9, margin: float = 1.5,
                  relu_alpha: dict[str, int] | None = None, rotation_keys: str = "reuse",
                  lanes: bool | None = None, pooled_dense: bool | None = None,
                  classes: tuple[str, ...] | None = None) -> Plan:
    """Compile a trained model into a complete encrypted-inference plan (schedule included).

    calibration: uint8 NHWC images (ReLU input ranges are measured on them) or a dict
    {relu module name: {"max_abs": ...}} as stored in checkpoint metadata. Each ReLU's bound is
    ``margin`` x max |input| (1.5: on the CIFAR-10 test split one ReLU of the bundled model
    reaches 1.33 x its max over the calibration images, and outside [-B, B] the polynomial
    diverges). ``alpha`` / ``eps_bits`` pick the sign table for every ReLU; ``relu_alpha``
    overrides alpha per ReLU (module name -> alpha). ``rotation_keys``: "reuse" (default) chains
    every rotation from the ~60 rotation keys bootstrapping generates anyway (no extra key
    memory); "pow2" adds keys for +-2^i; "direct" one key per rotation index. ``lanes``: evaluate
    folded linear maps in lanes (see :mod:`ckksnet.kernels.linear`): None where the cost model
    says it pays, True wherever possible, False never. ``pooled_dense``: a Linear after global
    pooling as masks and one box sum (:mod:`ckksnet.kernels.pooled_dense`): None where it pays,
    True wherever its output windows fit, False never. ``classes``: output class names (default:
    CIFAR-10's for 10 outputs).

    Raises :class:`CompileError` for a module without a kernel (named), missing calibration, or a
    plan the preset cannot run (levels needed and available).
    """
    if rotation_keys not in ("reuse", "pow2", "direct"):
        raise CompileError(f"rotation_keys must be 'reuse', 'pow2' or 'direct', not {rotation_keys!r}")
    preset = get_preset(preset) if isinstance(preset, str) else preset
    options = {"alpha": alpha, "eps_bits": eps_bits, "lanes": lanes, "pooled_dense": pooled_dense,
               "relu_alpha": dict(relu_alpha or {}), "margin": margin}
    was_training = model.training
    model.eval()
    try:
        ranges = _ranges(model, calibration)
        graph = trace(model)
        plan = Plan(preset=preset, rotation_keys=rotation_keys, model_id=model_identity(model),
                    options={k: v for k, v in options.items() if v is not None})
        lower(plan, graph, model, image_size, options)
    finally:
        model.train(was_training)
    assign_scales(plan, ranges, margin)
    finalize(plan, options)
    plan.schedule = schedule_plan(plan)
    outputs = plan.output_layout.length
    plan.classes = tuple(classes) if classes else (CIFAR10_CLASSES if outputs == 10 else
                                                    tuple(str(i) for i in range(outputs)))
    return plan


def model_identity(model: nn.Module) -> str:
    """SHA-256 over the model's class name and state dict (names, dtypes, shapes, values)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in sorted(model.state_dict().items()):
        arr = t.detach().cpu().contiguous().numpy()
        h.update(f"{name}|{arr.dtype}|{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def trace(model: nn.Module) -> fx.Graph:
    """The model's torch.fx graph; registered module types stay leaves."""
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # fx raises plain errors for data-dependent control flow
        raise CompileError(f"torch.fx cannot trace the model: {exc}") from exc


def lower(plan: Plan, graph: fx.Graph, model: nn.Module, image_size, options: dict) -> None:
    """Each node -> plan steps, through the registry (module types and functions)."""
    modules = dict(model.named_modules())
    ctx = LoweringContext(plan, plan.preset.slots, options)
    env: dict[str, Value] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            env[node.name] = _input_value(plan, modules, graph, image_size, plan.preset.slots)
        elif node.op in ("call_module", "call_function"):
            module = modules[node.target] if node.op == "call_module" else None
            key = type(module) if module is not None else node.target
            fn = KERNELS.get(key)
            if fn is None:
                what = f"module {node.target!r} ({type(module).__name__})" if module is not None else \
                    f"function {getattr(node.target, '__name__', node.target)!r} at {node.name}"
                raise CompileError(f"unsupported {what}: register a kernel for it with ckksnet.kernels.register")
            args = [env[a.name] for a in node.args if isinstance(a, fx.Node)]
            env[node.name] = fn(ctx, node, module, args)
        elif node.op == "output":
            out = lowerings.materialize(ctx, env[node.args[0].name])
            plan.output = out.id
        else:
            raise CompileError(f"unsupported operation {node.op} {getattr(node.target, '__name__', node.target)!r} "
                               f"at {node.name}")
    for v in plan.values:
        v.pending = {}  # compile-time state (torch modules) does not stay in the plan


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


def assign_scales(plan: Plan, ranges: dict[str, float], margin: float) -> None:
    """Union values that must share a scale (activation in/out, addition operands) and give each
    group the largest bound its steps need."""
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


def finalize(plan: Plan, options: dict) -> None:
    """Every kernel folds its input and output scales in (and picks its approximation)."""
    done = []
    for step, ins, out in plan.steps:
        new = step.finalize(plan.values[ins[0]].scale, plan.values[out].scale, options)
        done.append((step if new is None else new, ins, out))  # None: finalized in place
    plan.steps = done
