"""``compile``: a trained torch model -> a complete :class:`~ckksnet.core.plan.Plan`, in
named phases, one function each:

    trace -> lower -> assign scales -> finalize -> schedule

* :func:`~ckksnet.compiler.graph.trace`: torch.fx graph of the model (registered module types
  are leaves), then a sample run of the traced graph: every tensor's shape, every constant
  (``x.size(3)``), and a check that the graph computes what the model computes;
* :func:`lower`: each node becomes plan steps through the lowering rule registered for its
  module type, function or tensor method (:mod:`ckksnet.compiler.lowerings`, one file per kernel
  family); linear operations compose into one deferred map before they become a step
  (BatchNorm folded into the convolution before it);
* :func:`assign_scales`: each value's scale: activations' bounds B from calibration (times a
  margin), shared along identity shortcuts so residual additions need no rescaling;
* :func:`finalize`: every kernel folds its scales in (and picks its approximation);
* :func:`ckksnet.core.schedule.schedule_plan`: keys, baby steps, bootstraps, levels, costs.

The caller's model is left as it was (every module's training mode included).

Input normalisation is the client's preprocessing, taken from (in this order of precedence,
conflicts refused): a :class:`ckksnet.nn.Normalize` module applied to the model's input; the
``mean`` / ``std`` arguments of :func:`compile_model`; else none (mean 0, std 1: the model
reads pixels in [0, 1] as they are).
"""
from __future__ import annotations

import fnmatch
import hashlib
import operator
import warnings
import weakref

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from ckksnet.approx.relu import extension_bits
from ckksnet.compiler.calibrate import calibrate
from ckksnet.compiler.graph import lowering_key, source_line, step_names, trace
from ckksnet.compiler.model_forms import prepare_model
from ckksnet.core.backend import get_backend
from ckksnet.core.options import CompileOptions
from ckksnet.core.preset import Preset, get_preset
from ckksnet.compiler.lowerings import poly as lower_poly
from ckksnet.core.plan import Plan
from ckksnet.compiler.affine import Affine
from ckksnet.compiler.lowerings import GraphContext, layout_shape, materialize
from ckksnet.core.plan import Value
from ckksnet.kernels.registry import LOWERINGS
from ckksnet.core.schedule import schedule_plan
from ckksnet.errors import CkksnetError, CompileError
from ckksnet.inputs import as_images
from ckksnet.layout import Layout, VectorLayout
from ckksnet.nn import Normalize
from ckksnet.compiler import user_checks  # what users write: subclasses, hints, channels, ranges

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


SAMPLE_BATCH = 2  #: images in the sample run (two, so that an operation mixing images shows)

#: in-place operations: their first argument is mutated (later readers see the result)
_INPLACE_FUNCTIONS = {torch.relu_}
#: operations whose result shares its input's storage in another shape
_VIEW_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "expand", "transpose", "permute",
                 "narrow", "view_as", "reshape_as", "t"}
_VIEW_FUNCTIONS = {operator.getitem, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}


#: what to use instead, for layers people often try that have no encrypted kernel
_UNSUPPORTED_HINTS = {
    nn.MaxPool2d: "max pooling has no cheap polynomial form here: use nn.AvgPool2d (same kernel and stride), "
                  "or register a kernel with ckksnet.kernels.register",
    nn.AdaptiveMaxPool2d: "use nn.AdaptiveAvgPool2d, or register a kernel with ckksnet.kernels.register",
    **user_checks.ACTIVATION_HINTS,  # GELU, SiLU, ...: ReLU, a polynomial activation, or a kernel of one's own
}



def compile_model(model: nn.Module, calibration: np.ndarray | dict | None = None,
                  preset: str | Preset = "secure", image_size: tuple[int, int] | None = None,
                  alpha: int = 13, eps_bits: int = 9, margin: float = 1.5,
                  relu_alpha: dict[str, int | tuple[int, int]] | None = None, rotation_key_policy: str = "reuse",
                  lanes: bool | None = None, pooled_dense: bool | None = None,
                  classes: tuple[str, ...] | None = None, mean=None, std=None,
                  relu_extension: float = 1.0, input_shape: tuple[int, int, int] | None = None,
                  backend: str = "openfhe") -> Plan:
    """Compile a trained model into a complete encrypted-inference plan (schedule included).

    Takes the model (left as it was) and ``calibration``: images (uint8 NHWC 0..255 or float NCHW
    in [0, 1], as ``twin`` and ``encrypt`` take them), on which each activation's input range is
    measured, or a dict {step name: {"max_abs": ...}} as checkpoints store it. ``preset``: a name
    or a :class:`Preset`. ``input_shape`` (C, H, W), or ``image_size`` (H, W; default 32 x 32)
    where the model tells its channels; the plan records the shape. ``mean`` / ``std``: the input
    normalisation of a model without a :class:`~ckksnet.nn.Normalize` module (default: pixels in
    [0, 1] as they are). ``classes``: output class names (default: CIFAR-10's for 10 outputs).
    ``backend``: the name of the backend the plan runs on (:func:`ckksnet.core.backend.get_backend`;
    its bootstrapping keys and cost constants shape the schedule; the plan records it).
    ``rotation_key_policy``: see :attr:`Plan.rotation_key_policy`. Every other keyword is a
    field of :class:`~ckksnet.core.options.CompileOptions`, documented there.

    Returns the :class:`Plan`. Raises :class:`CompileError` naming the module or node (and its
    source line) for anything it cannot compute exactly, for missing calibration, for a
    Normalize module together with ``mean`` / ``std``, for an input shape the model contradicts
    and for a plan the preset cannot run (levels needed and available).
    """
    if rotation_key_policy not in ("reuse", "pow2", "direct"):
        raise CompileError(f"rotation_key_policy must be 'reuse', 'pow2' or 'direct', not {rotation_key_policy!r}")
    preset = get_preset(preset) if isinstance(preset, str) else preset
    runs_on = get_backend(backend)
    try:
        extension_bits(relu_extension)
    except CkksnetError as exc:
        raise CompileError(str(exc)) from exc
    options = CompileOptions(alpha, eps_bits, lanes, pooled_dense, dict(relu_alpha or {}), margin,
                             float(relu_extension))
    model = prepare_model(model)  # unwrapped, float32; TorchScript and NaN weights refused
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        graph = trace(model)
        modules = dict(model.named_modules())
        channels, image_size = _input_size(input_shape, image_size)
        norm, mean, std = _normalization(model, graph, modules, mean, std, channels, calibration, image_size)
        image_shape = (len(mean), int(image_size[0]), int(image_size[1]))
        calibration = user_checks.calibration_batch(calibration, image_shape)  # one image: a batch of one
        ranges = _ranges(model, calibration, image_shape, None if norm else (mean, std))
        plan = Plan(preset=preset, rotation_key_policy=rotation_key_policy, model_id=model_identity(model),
                    options=options.record(), backend=runs_on.name)
        names = lower(plan, graph, model, image_size, options, mean=mean, std=std, client_normalize=norm)
    finally:
        for m, training in modes.items():
            m.training = training
    user_checks.check_ranges([step for step, _, _ in plan.steps], _complete_ranges(ranges, names))  # none zero
    lower_poly.split_poly_readers(plan)  # degree-2 polynomials read by a shortcut too: fold them anyway
    assign_scales(plan, _complete_ranges(ranges, names), margin)
    finalize(plan, options)
    plan.schedule, plan.steps = schedule_plan(plan, runs_on, optimise=lanes is None)  # an explicit lanes choice is kept
    outputs = plan.output_layout.length
    user_checks.check_classes(classes, outputs)
    plan.classes = tuple(classes) if classes else (CIFAR10_CLASSES if outputs == 10 else
                                                    tuple(str(i) for i in range(outputs)))
    if not isinstance(calibration, dict):
        check_depth(plan, model, calibration, image_shape, None if norm else (mean, std), options)
    return plan


class ApproximationDriftWarning(UserWarning):
    """The compiled plan's cleartext twin is further from the model than deep networks should be."""


#: thresholds of :func:`check_depth`: max |twin - torch| logit difference, top-1 agreement
DRIFT_LOGIT_ERROR = 1e-2
DRIFT_AGREEMENT = 1.0
FINEST_SIGN_TABLE = (13, 12)


def check_depth(plan: Plan, model: nn.Module, images, image_shape: tuple, pipeline, options: CompileOptions,
                n: int = 16) -> dict:
    """The twin against torch on the first ``n`` calibration images (the approximation error grows
    with depth); warns (:class:`ApproximationDriftWarning`) when the largest logit difference
    passes DRIFT_LOGIT_ERROR or a top-1 prediction differs, naming the finer sign table to try.
    Returns {"max_logit_error", "agreement", "images"}."""
    x, _ = as_images(np.asarray(images)[:n], *image_shape)
    if pipeline is not None:
        mean, std = (np.asarray(v, dtype=np.float64) for v in pipeline)
        x = (x - mean[None, :, None, None]) / std[None, :, None, None]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            want = model(torch.from_numpy(np.ascontiguousarray(x)).float()).double().numpy()
    finally:
        for m, training in modes.items():
            m.training = training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ranges beyond B are the twin's own report, not this check's
        twin = plan.twin(np.asarray(images)[:n])
    err = float(np.max(np.abs(twin - want)))
    agree = float(np.mean(twin.argmax(1) == want.argmax(1)))
    if err > DRIFT_LOGIT_ERROR or agree < DRIFT_AGREEMENT:
        finest = (options.alpha, options.eps_bits) == FINEST_SIGN_TABLE and not options.relu_alpha
        hint = ("the finest shipped table is in use already: a larger margin or relu_extension may help" if finest
                else f"try the finest shipped sign table: alpha={FINEST_SIGN_TABLE[0]}, "
                     f"eps_bits={FINEST_SIGN_TABLE[1]} (--alpha {FINEST_SIGN_TABLE[0]} --eps-bits {FINEST_SIGN_TABLE[1]})")
        warnings.warn(f"on {len(x)} calibration images the compiled plan's cleartext twin is up to {err:.2e} off the "
                      f"model's logits (top-1 agreement {100 * agree:.0f}%; thresholds {DRIFT_LOGIT_ERROR:g} and "
                      f"{100 * DRIFT_AGREEMENT:.0f}%): each ReLU's approximation error grows through the layers; "
                      f"{hint}", ApproximationDriftWarning, stacklevel=3)
    return {"max_logit_error": err, "agreement": agree, "images": len(x)}


def relu_overrides(specs: list, names) -> dict[str, tuple[int, int]]:
    """{ReLU step name: (alpha, eps_bits)} from ``--relu-sign`` specs matched (fnmatch) against
    ``names``, later specs winning. Raises :class:`CompileError` for a pattern matching no ReLU."""
    out: dict[str, tuple[int, int]] = {}
    for pattern, table in specs:
        hits = fnmatch.filter(list(names), pattern)
        if not hits:
            raise CompileError(f"--relu-sign {pattern!r} matches no ReLU; ReLUs: {', '.join(names)}")
        out.update((h, table) for h in hits)
    return out


def model_identity(model: nn.Module) -> str:
    """SHA-256 over the model's class name and state dict (names, dtypes, shapes, values)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in sorted(model.state_dict().items()):
        arr = t.detach().cpu().contiguous().numpy()
        h.update(f"{name}|{arr.dtype}|{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _input_size(input_shape, image_size) -> tuple[int | None, tuple[int, int]]:
    """(channels or None, (H, W)) from compile's ``input_shape`` (C, H, W) and ``image_size``
    (H, W); CompileError for a malformed shape or two that disagree."""
    def positive(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0

    size = None
    if image_size is not None:
        size = tuple(image_size)
        if len(size) != 2 or not all(positive(v) for v in size):
            raise CompileError(f"image_size must be (height, width), two positive integers, not {image_size!r}")
    if input_shape is None:
        return None, tuple(int(v) for v in (size or (32, 32)))
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(positive(v) for v in shape):
        raise CompileError(f"input_shape must be (channels, height, width), three positive integers, "
                           f"not {input_shape!r}")
    if size is not None and tuple(int(v) for v in size) != tuple(int(v) for v in shape[1:]):
        raise CompileError(f"image_size {tuple(size)} disagrees with input_shape {shape} (pass one of them)")
    return int(shape[0]), (int(shape[1]), int(shape[2]))


def input_normalization(graph: fx.Graph, modules: dict, mean=None, std=None, expected: int | None = None):
    """(name of the Normalize node the client applies or None, mean, std) per input channel.
    ``expected``: the channel count the caller gives (compile's ``input_shape``); a model or
    mean/std that says otherwise is refused."""
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise CompileError(f"the model's forward must take one tensor (the images), not {len(inputs)} arguments")
    users = list(inputs[0].users)
    norm = None
    if len(users) == 1 and users[0].op == "call_module" and isinstance(modules[users[0].target], Normalize):
        norm = users[0]
        if mean is not None or std is not None:
            raise CompileError(f"the model normalises its input with its Normalize module {norm.target!r}; "
                               "pass mean/std only for a model without one (or remove the module)")
        mod = modules[norm.target]
        mean = mod.mean.detach().double().numpy().ravel()
        std = mod.std.detach().double().numpy().ravel()
    channels = set()
    for v in (mean, std):
        if v is not None and np.size(v) > 1:
            channels.add(int(np.size(v)))
    if not channels:
        convs = [modules[n.target] for n in graph.nodes
                 if n.op == "call_module" and isinstance(modules[n.target], nn.Conv2d)]
        if convs:
            channels.add(convs[0].in_channels)
    if expected is not None:
        if channels and channels != {expected}:
            raise CompileError(f"input_shape (--input-shape) gives {expected} input channel(s) but the model (its first "
                               f"convolution or its mean/std) takes {sorted(channels)[0] if len(channels) == 1 else sorted(channels)}")
        channels = {int(expected)}
    if len(channels) != 1:
        raise CompileError("cannot tell how many channels the input has" + (
            f" (mean/std and the model say {sorted(channels)})" if channels else
            ": pass input_shape=(channels, height, width) (--input-shape C H W), or mean and std with "
            "one value per channel"))
    c = channels.pop()
    out = []
    for name, v, default in (("mean", mean, 0.0), ("std", std, 1.0)):
        arr = np.asarray(default if v is None else v, dtype=np.float64).ravel()
        if arr.size not in (1, c) or not np.all(np.isfinite(arr)):
            raise CompileError(f"{name} must be one finite value or {c} (one per channel), got {v!r}")
        out.append(np.broadcast_to(arr, (c,)).copy())
    if np.any(out[1] <= 0):
        raise CompileError(f"std must be positive, got {out[1].tolist()}")
    return (norm.name if norm is not None else None), out[0], out[1]


def _normalization(model, graph, modules: dict, mean, std, channels, calibration, image_size):
    """:func:`input_normalization`, with the channels of a model that does not tell them (an MLP)
    inferred from its first dense layer or the calibration images, and mean/std in 0..255 units
    refused."""
    try:
        norm, mean, std = input_normalization(graph, modules, mean, std, channels)
    except CompileError:
        inferred = None if channels is not None else user_checks.infer_channels(model, graph, modules, calibration,
                                                                                image_size)
        if inferred is None:
            raise
        norm, mean, std = input_normalization(graph, modules, mean, std, inferred)
    user_checks.check_normalisation_units(
        mean, std, f"the Normalize module {norm!r}'s mean/std" if norm else "mean/std")
    return norm, mean, std


def _sample_run(model: nn.Module, gm: fx.GraphModule, shape: tuple) -> dict:
    """Every node's value on a sample batch (random pixels), after checking that the traced graph
    computes what the model computes."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((SAMPLE_BATCH,) + tuple(shape), generator=gen)
    interp = fx.Interpreter(gm, garbage_collect_values=False)
    try:
        with torch.no_grad(), torch.random.fork_rng():  # the same random draws in both runs
            torch.manual_seed(0)
            out = interp.run(x.clone())
            torch.manual_seed(0)
            eager = model(x.clone())
    except Exception as exc:
        raise CompileError(f"the model does not run on a batch of {shape} images: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, torch.Tensor) or not isinstance(eager, torch.Tensor):
        raise CompileError(f"the model must return one tensor of logits, not {type(eager).__name__}")
    if out.shape != eager.shape or not torch.allclose(out, eager, rtol=1e-4, atol=1e-5):
        raise CompileError("the traced graph does not compute what the model computes (in-place operations on "
                           "aliased tensors, or Python control flow torch.fx cannot see)")
    return {n.name: v for n, v in interp.env.items()}


def _activations(graph: fx.Graph, sample: dict, ctx_fail) -> set[str]:
    """Nodes that carry activations: tensors computed from the input (their batch axis intact)."""
    acts: set[str] = set()
    for n in graph.nodes:
        if n.op == "placeholder":
            acts.add(n.name)
        elif n.op in ("call_module", "call_function", "call_method"):
            if any(a.name in acts for a in n.all_input_nodes) and isinstance(sample.get(n.name), torch.Tensor):
                t = sample[n.name]
                if t.dim() == 0 or t.shape[0] != SAMPLE_BATCH:
                    raise ctx_fail(n, f"its result {tuple(t.shape)} mixes the images of a batch "
                                      f"(a batch of {SAMPLE_BATCH} should keep its first axis)")
                acts.add(n.name)
    return acts


def _mutated(node: fx.Node, modules: dict) -> fx.Node | None:
    """The argument an in-place operation overwrites, or None."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    if node.op == "call_method" and node.target.endswith("_") and not node.target.endswith("__"):
        return node.args[0]
    if node.op == "call_function" and (node.target in _INPLACE_FUNCTIONS or node.kwargs.get("inplace") is True):
        return node.args[0]
    if node.op == "call_module" and getattr(modules[node.target], "inplace", False) is True:
        return node.args[0]
    return None


def _is_view(node: fx.Node, modules: dict) -> bool:
    return (node.op == "call_method" and node.target in _VIEW_METHODS) or \
        (node.op == "call_function" and node.target in _VIEW_FUNCTIONS) or \
        (node.op == "call_module" and isinstance(modules[node.target], nn.Flatten))


def _live(graph: fx.Graph, acts: set, modules: dict) -> set[str]:
    """Nodes the output depends on, in-place operations on needed tensors included (steps that
    turn out unread are pruned after lowering)."""
    live: set[str] = set()
    stack = [n for n in graph.nodes if n.op == "output"]
    inplace = [n for n in graph.nodes if n.name in acts and _mutated(n, modules) is not None]
    while stack:
        while stack:
            n = stack.pop()
            if n.name not in live:
                live.add(n.name)
                stack.extend(n.all_input_nodes)
        for n in inplace:  # it may change what a later reader of its target (or a view of it) sees
            if n.name not in live and _mutated(n, modules).name in live:
                stack.append(n)
    return live


def lower(plan: Plan, graph: fx.Graph, model: nn.Module, image_size, options: CompileOptions, mean=None, std=None,
          client_normalize: str | None = None) -> dict[str, str]:
    """Each live node -> plan steps, through the registry (module types, functions, methods).
    Returns node name -> step name. ``mean`` / ``std``: the client's normalisation (default:
    from a Normalize module on the input, else none)."""
    modules = dict(model.named_modules())
    if mean is None or std is None:
        client_normalize, mean, std = input_normalization(graph, modules, mean, std)
    image_shape = (len(mean), int(image_size[0]), int(image_size[1]))
    gm = fx.GraphModule(model, graph)
    names = step_names(graph, modules)
    where = source_line
    sample = _sample_run(model, gm, image_shape)
    ctx = GraphContext(plan, plan.preset.slots, options, sample, set(), names, where, modules,
                                 client_normalize)
    ctx.acts = _activations(graph, sample, ctx.fail)
    ctx.nodes = {n.name: n for n in graph.nodes}
    live = _live(graph, ctx.acts, modules)
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    last = {n.name: max((order[u.name] for u in n.users if u.name in live), default=-1) for n in graph.nodes}
    views: dict[str, weakref.ref] = {}  # view node -> the Value it views
    env = ctx.env
    for node in graph.nodes:
        if node.op == "placeholder":
            env[node.name] = _input_value(plan, image_shape, mean, std)
        elif node.op == "output":
            plan.output = _output_value(ctx, node).id
        elif node.op in ("call_module", "call_function", "call_method") and node.name in ctx.acts:
            if node.name not in live:
                continue
            module = modules[node.target] if node.op == "call_module" else None
            fn = LOWERINGS.get(lowering_key(node, modules))
            if fn is None:
                raise ctx.fail(node, "unsupported operation: " + _UNSUPPORTED_HINTS.get(
                    lowering_key(node, modules), "register a kernel for it with ckksnet.kernels.register"))
            args = [env[a.name] for a in node.args if isinstance(a, fx.Node) and a.name in ctx.acts]
            try:
                out = fn(ctx, node, module, args)
            except CompileError as exc:
                if node.name in str(exc) or str(node.target) in str(exc):
                    raise
                raise ctx.fail(node, str(exc)) from exc
            except (CkksnetError, ValueError, TypeError, RuntimeError) as exc:
                raise ctx.fail(node, f"{type(exc).__name__}: {exc}") from exc
            _check_shape(ctx, node, out)
            target = _mutated(node, modules)
            if target is not None and target.name in env:
                _rebind(ctx, node, target, out, views, order)
            if _is_view(node, modules):
                views[node.name] = weakref.ref(env[node.args[0].name])
            env[node.name] = out
            for a in node.all_input_nodes:  # deferred maps hold large matrices: drop them when read
                if last[a.name] <= order[node.name] and a.name != node.name:
                    env.pop(a.name, None)
        elif node.op == "get_attr" or node.name not in ctx.acts:
            continue
        else:
            raise ctx.fail(node, f"unsupported operation {node.op}")
    _prune(plan)
    for v in plan.values:
        v.deferred = {}  # compile-time state (torch modules) does not stay in the plan
    return names


def _rebind(ctx, node: fx.Node, target: fx.Node, out: Value, views: dict, order: dict) -> None:
    """After an in-place operation, later readers of its target (and of the target's identity
    aliases) read its result; a view of the target read later is refused."""
    env = ctx.env
    old = env[target.name]
    if target.name in views:
        raise ctx.fail(node, "an in-place operation on a view of another tensor is not supported")
    for name, ref in views.items():
        if ref() is old and any(order[u.name] > order[node.name] for u in ctx.nodes[name].users):
            raise ctx.fail(node, f"it changes a tensor that the view {name} reads later; "
                                 "use the out-of-place form")
    for name, v in list(env.items()):
        if v is old:
            env[name] = out


def _check_shape(ctx, node: fx.Node, out: Value) -> None:
    """The lowered value must be the tensor torch computes (shape per image)."""
    want = ctx.shape(node)
    aff = out.deferred.get("affine")
    got = aff.shape if aff is not None else layout_shape(out.layout)
    if tuple(got) != tuple(want):
        raise ctx.fail(node, f"lowered to a {tuple(got)} tensor where torch computes {tuple(want)}; "
                             "refused rather than approximated")


def _output_value(ctx, node: fx.Node) -> Value:
    arg = node.args[0]
    if not ctx.is_act(arg):
        raise CompileError("the model's output must be one tensor computed from its input")
    shape = ctx.shape(arg)
    if len(shape) != 1 and not (len(shape) == 3 and shape[1:] == (1, 1)):
        raise ctx.fail(arg, f"the output must be logits, (N, classes) or (N, classes, 1, 1), not (N, {shape})")
    v = ctx.value(arg)
    k = shape[0]
    aff = v.deferred.get("affine")
    if aff is not None:
        return materialize(ctx, Value(-1, None, deferred={"affine": aff.reshaped((k,))}))
    if isinstance(v.layout, VectorLayout):
        return v
    return materialize(ctx, Value(-1, None, deferred={"affine": Affine.identity(v, (k,), "output")}))


def _prune(plan: Plan) -> None:
    """Drop steps the output does not read (results of dead branches)."""
    live = {plan.output}
    keep = []
    for step, ins, out in reversed(plan.steps):
        if out in live:
            keep.append((step, ins, out))
            live.update(ins)
    plan.steps = keep[::-1]


def _ranges(model: nn.Module, calibration, image_shape: tuple, pipeline=None) -> dict[str, float]:
    """ReLU step name -> calibrated max |input|; ``pipeline``: (mean, std) the data pipeline
    applies before the model (calibration images are normalised with it), or None."""
    if calibration is None:
        raise CompileError("calibration data is required: images (uint8 NHWC or float NCHW) or a calibration dict")
    if isinstance(calibration, dict):
        return {k: float(v["max_abs"] if isinstance(v, dict) else v) for k, v in calibration.items()}
    mean, std = pipeline or (None, None)
    return {k: v["max_abs"] for k, v in calibrate(model, calibration, q=1.0, image_shape=image_shape,
                                                  mean=mean, std=std).items()}


def _complete_ranges(ranges: dict[str, float], names: dict[str, str]) -> dict[str, float]:
    """A calibration dict keyed by module name also serves each call of a module called several
    times (``relu@2`` reads ``relu``'s range: the max over all its calls)."""
    out = dict(ranges)
    for step in names.values():
        base = step.split("@", 1)[0]
        if step not in out and base in ranges:
            out[step] = ranges[base]
    return out


def _input_value(plan: Plan, image_shape: tuple, mean: np.ndarray, std: np.ndarray) -> Value:
    # an input larger than one ciphertext spans several (ckksnet.core.tiles)
    layout = Layout(*image_shape, 1, plan.preset.slots)
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
        out_bound = getattr(step, "output_bound", None)  # a step whose output needs a scale of its own
        if out_bound is not None:
            need[find(out)] = max(need.get(find(out), 0.0), out_bound(ranges, margin))
    for v in plan.values:
        v.scale = need.get(find(v.id), 1.0)


def finalize(plan: Plan, options: CompileOptions) -> None:
    """Every kernel folds its input and output scales in (and picks its approximation)."""
    readers: dict[int, list] = {}
    for step, ins, out in plan.steps:
        for v in ins:
            readers.setdefault(v, []).append(step)
    for i, (step, ins, out) in enumerate(plan.steps):  # replaced one by one: old matrices go at once
        free = getattr(step, "free_output", None)  # only linear maps read the output: its scale may change
        if free is not None and out != plan.output and readers.get(out) and \
                all(r.kind == "linear" for r in readers[out]):
            step = free()
        new = step.finalize(plan.values[ins[0]].scale, plan.values[out].scale, options)
        plan.steps[i] = (step if new is None else new, ins, out)  # None: finalized in place
        if getattr(new, "output_scale", None) is not None:  # a step that folds a factor into its readers
            plan.values[out].scale = new.output_scale
