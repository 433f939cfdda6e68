"""What users write and hand to ``compile`` that would otherwise fail obscurely or silently (issue 38):

* :func:`registered_type`: a subclass of a standard layer (``class MyConv(nn.Conv2d)`` that only
  changes initialisation) compiles as that layer when it inherits ``forward``; one that overrides
  ``forward`` is refused naming the class and the line of its ``forward``;
* :func:`trace_failure`: a torch.fx tracing failure names the user's function and line;
* :data:`ACTIVATION_HINTS`: what compiles instead of GELU, SiLU, tanh, ...;
* :func:`infer_channels`: an MLP (no convolution, one-value or no mean/std) gets its input
  channels from its first dense layer, or from calibration images that show them;
* :func:`check_normalisation_units`: mean/std in 0..255 units for pixels in [0, 1] are refused;
* :func:`calibration_batch`: one image given as calibration is a batch of one;
* :func:`check_ranges`: an activation whose calibrated range is (nearly) zero is refused, naming it.

Nothing here imports :mod:`ckksnet.compiler.phases` (phases imports this module).
"""
from __future__ import annotations

import inspect
import linecache
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ckksnet.errors import CompileError
from ckksnet.inputs import _to_array

_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
_CKKSNET_DIR = str(Path(__file__).resolve().parent.parent)

#: methods a subclass of a standard layer may not override and still compute as that layer
_COMPUTING_METHODS = ("forward", "_conv_forward")


# ------------------------------------------------------------------ subclasses of standard layers
def registered_type(module: nn.Module, registry, name: str | None = None):
    """The registered module type ``module`` computes as: its own type if registered, else the
    nearest registered base class whose ``forward`` it inherits; None for a type with no
    registered base. A subclass of a registered type that overrides ``forward`` is refused with
    a :class:`CompileError` naming the class and the file and line of its ``forward``."""
    cls = type(module)
    if cls in registry:
        return cls
    for base in cls.__mro__[1:]:
        if base in registry:
            for meth in _COMPUTING_METHODS:
                mine, theirs = getattr(cls, meth, None), getattr(base, meth, None)
                if mine is not theirs:
                    where = _definition(mine)
                    label = f"module {name!r} ({cls.__name__})" if name else cls.__name__
                    raise CompileError(
                        f"{label} subclasses {_qualified(base)} but overrides {meth}{where}: ckksnet computes a "
                        f"{base.__name__} by its own kernel and cannot tell what the overriding code does. "
                        f"Keep {base.__name__}'s {meth} (do the extra work in the parent module's forward), "
                        f"or register a kernel for {cls.__name__} with ckksnet.kernels.register")
            return base
    return None


def _qualified(cls) -> str:
    """'nn.Conv2d' for torch's layers, 'module.Class' otherwise."""
    if cls.__module__.startswith("torch.nn."):
        return f"nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__name__}"


def _definition(fn) -> str:
    """' at file.py:LINE (`code`)' of a function's def line (empty where unknown)."""
    try:
        fn = inspect.unwrap(fn)
        path = inspect.getsourcefile(fn)
        line = fn.__code__.co_firstlineno
    except (TypeError, AttributeError, OSError):
        return ""
    code = linecache.getline(path, line).strip() if path else ""
    return f" at {Path(path).name}:{line}" + (f" (`{code}`)" if code else "")


# ------------------------------------------------------------------ torch.fx tracing failures
def trace_failure(exc: BaseException) -> CompileError:
    """A :class:`CompileError` for a torch.fx tracing failure, naming the user's function and
    line where the traceback reaches them (the deepest frame outside torch and ckksnet)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not str(Path(f.filename).resolve()).startswith((_TORCH_DIR, _CKKSNET_DIR))]
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    where = ""
    if frames:
        f = frames[-1]
        where = f" in {f.name}() at {Path(f.filename).name}:{f.lineno}" + (f" (`{f.line.strip()}`)" if f.line else "")
    return CompileError(
        f"torch.fx cannot trace the model{where}: {first}. torch.fx records forward with symbolic "
        "tensors: Python branches or loops on tensor values, data-dependent shapes and non-torch calls "
        "(numpy, .item(), .tolist()) cannot be recorded; compute that part with torch operations, or "
        "decide it from module attributes set in __init__")


# ------------------------------------------------------------------ activations without a kernel
def _activation_hint(name: str) -> str:
    return (f"{name} has no encrypted kernel; what compiles instead: nn.ReLU (retrain or fine-tune with it), "
            "a polynomial activation (ckksnet.nn.PolyAct), or a kernel of your own registered with "
            "ckksnet.kernels.register (examples/silu_kernel.py does SiLU)")


def _activation_hints() -> dict:
    modules = ("GELU", "SiLU", "Sigmoid", "Tanh", "ELU", "SELU", "CELU", "LeakyReLU", "PReLU", "RReLU",
               "Softplus", "Mish", "Hardswish", "Hardsigmoid", "ReLU6", "Hardtanh", "LogSigmoid", "Softsign",
               "Tanhshrink", "GLU")
    functions = ("gelu", "silu", "elu", "selu", "celu", "leaky_relu", "prelu", "rrelu", "softplus", "mish",
                 "hardswish", "hardsigmoid", "relu6", "hardtanh", "logsigmoid", "softsign", "tanhshrink", "glu",
                 "sigmoid", "tanh")
    out: dict = {}
    for n in modules:
        if hasattr(nn, n):
            out[getattr(nn, n)] = _activation_hint(f"nn.{n}")
    for n in functions:
        if hasattr(F, n):
            out[getattr(F, n)] = _activation_hint(f"F.{n}")
    for n in ("sigmoid", "tanh"):
        out[getattr(torch, n)] = _activation_hint(f"torch.{n}")
        out[f"method:{n}"] = _activation_hint(f".{n}()")
    return out


#: registry key -> what to use instead, for activations that have no kernel
ACTIVATION_HINTS = _activation_hints()


# ------------------------------------------------------------------ input channels of an MLP
def infer_channels(model: nn.Module, graph, modules: dict, calibration, image_size) -> int | None:
    """The input channels of a model that does not tell them itself (no convolution, no
    per-channel mean/std): C such that the first dense layer reads C x H x W values and the
    model runs on (C, H, W), else the channels the calibration images show; None if neither."""
    h, w = (int(v) for v in image_size)
    dense = next((modules[n.target] for n in graph.nodes
                  if n.op == "call_module" and isinstance(modules.get(n.target), nn.Linear)), None)
    candidates = []
    if dense is not None and dense.in_features % (h * w) == 0:
        candidates.append(dense.in_features // (h * w))
    shown = _calibration_channels(calibration, h, w)
    if shown is not None and shown not in candidates:
        candidates.append(shown)
    for c in candidates:
        if _runs(model, (c, h, w)):
            return c
    return None


def _calibration_channels(calibration, h: int, w: int) -> int | None:
    """The channel count calibration images show unambiguously: uint8 (N, H, W, C), float
    (N, C, H, W), or (N, H, W) grayscale; None for a dict, a single image or another shape."""
    if calibration is None or isinstance(calibration, dict):
        return None
    try:
        shape = tuple(np.shape(calibration))
        uint8 = np.asarray(calibration).dtype == np.uint8 if not isinstance(calibration, torch.Tensor) else \
            calibration.dtype == torch.uint8
    except Exception:
        return None
    if len(shape) == 4:
        if uint8 and shape[1:3] == (h, w):
            return shape[3]
        if not uint8 and shape[2:] == (h, w):
            return shape[1]
    if len(shape) == 3 and shape[1:] == (h, w):
        return 1
    return None


def _runs(model: nn.Module, shape: tuple) -> bool:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((2,) + tuple(shape)))
        return True
    except Exception:
        return False
    finally:
        for m, training in modes.items():
            m.training = training


# ------------------------------------------------------------------ normalisation constants
def check_normalisation_units(mean, std, source: str = "mean/std") -> None:
    """Refuse mean/std in 0..255 units (ImageNet's 123.675 / 58.395): ckksnet feeds the model pixels
    in [0, 1], so every input would be about -2. Raises :class:`CompileError` saying how to pass them."""
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    if np.any(np.abs(mean) > 1.0) or np.any(std > 1.0):
        def fmt(v):
            return "(" + ", ".join(f"{x:.6g}" for x in v) + ")"

        raise CompileError(
            f"{source} {fmt(mean)} / {fmt(std)} look like 0..255 pixel units, but ckksnet gives the model pixels "
            f"in [0, 1] (uint8 images are divided by 255 first), so every input would be about "
            f"{float(np.mean((0.5 - mean) / std)):.2g}: pass them divided by 255, mean={fmt(mean / 255)}, "
            f"std={fmt(std / 255)}")


# ------------------------------------------------------------------ calibration images
def calibration_batch(calibration, image_shape: tuple):
    """Calibration as a batch: one image ((H, W, C) uint8 or (C, H, W) float, as ``encrypt`` takes
    one) becomes a batch of one; anything else is returned as it is (checked later)."""
    if calibration is None or isinstance(calibration, dict):
        return calibration
    arr = _to_array(calibration)
    c, h, w = image_shape
    if arr.ndim == 3 and c > 1:
        single = (h, w, c) if arr.dtype == np.uint8 else (c, h, w)
        if tuple(arr.shape) == single:
            return arr[None]
    if arr.ndim == 2 and c == 1 and tuple(arr.shape) == (h, w):
        return arr[None]
    return arr


# ------------------------------------------------------------------ class names
def check_classes(classes, outputs: int) -> None:
    """Class names must be one per output (``compile(..., classes=)``, ``--classes``)."""
    if classes is None:
        return
    if isinstance(classes, str) or len(tuple(classes)) != outputs:
        given = f"the string {classes!r}" if isinstance(classes, str) else f"{len(tuple(classes))} name(s)"
        raise CompileError(f"classes (--classes) gives {given} but the model has {outputs} outputs: give one name "
                           "per output, in order")


# ------------------------------------------------------------------ calibrated ranges
#: an activation's calibrated max |input| at or below this is no range (blank images, max_abs 0)
MIN_RANGE = 1e-6
#: a polynomial activation whose calibrated max |input| passes this x its trained bound B diverges:
#: a degree-d polynomial grows like |x|^d beyond B, layer after layer (a partly trained polynomial
#: ResNet-20 reached 5e28 x at its last activation on some training images)
MAX_BOUND_RATIO = 100.0


def check_ranges(steps, ranges: dict) -> None:
    """Refuse, naming the activation, a calibrated range that is zero, nearly zero or not finite
    (its bound B would be 0: the twin NaN, the encrypted result undecryptable), or, for a
    polynomial activation, beyond :data:`MAX_BOUND_RATIO` x its trained bound (a diverging
    network: OpenFHE then fails mid-run, "Scaling factor too small"). ``steps``: the
    plan's kernels; those with a calibrated bound (activations) are checked."""
    for step in steps:
        name = getattr(step, "name", None)
        if name not in ranges or not _is_activation(step):
            continue
        r = float(ranges[name])
        trained = getattr(step, "bound", None) if getattr(step, "kind", "").startswith("poly") else None
        if trained and np.isfinite(r) and r > MAX_BOUND_RATIO * float(trained):
            raise CompileError(
                f"polynomial activation {name!r}: its inputs on the calibration images reach max |x| = {r:.3g}, "
                f"{r / float(trained):.3g} x the bound B = {float(trained):.4g} it was trained for: the network "
                "diverges on some inputs (a polynomial grows without limit beyond its bound), and an encrypted "
                "run would compute nothing usable. Train it further with a boundary loss (ckksnet train "
                "--boundary-weight W --boundary-reduce max), or calibrate on inputs like the real ones")
        if not np.isfinite(r) or r <= MIN_RANGE:
            raise CompileError(
                f"activation {name!r}: its calibrated input range is max |x| = {r:.3g} (blank or constant "
                "calibration images, or a calibration dict with max_abs 0), so it has no bound to approximate "
                "it on: calibrate on images like the real inputs (a few hundred training images), or give "
                f"{name!r} its real max_abs")


def _is_activation(step) -> bool:
    try:
        return step.input_bound({step.name: 1.0}, 1.0) is not None
    except Exception:
        return False
