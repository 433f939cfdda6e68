"""Models as people hold them, made ready for compiling or refused with what to do.

:func:`prepare_model` runs first in :func:`ckksnet.compile` and never touches the caller's
model: a ``DataParallel`` / ``DistributedDataParallel`` wrapper is unwrapped, weights in float16,
bfloat16 or float64 are converted on a copy to float32 (the precision calibration and the plan
use), each with a :class:`ModelFormWarning` saying so. TorchScript (traced or scripted, the whole
model or one block), quantized models (dynamic, static int8, QAT) and parameters that are NaN or infinite are refused with a
:class:`~ckksnet.errors.CompileError` naming the form or the tensor. (A checkpoint whose state
dict was saved from a wrapper, keys prefixed ``module.``, is read by
:func:`ckksnet.models.load_checkpoint` with the prefix removed and a warning.)
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from ckksnet.errors import CompileError

_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)
_CONVERTED = (torch.float16, torch.bfloat16, torch.float64)


class ModelFormWarning(UserWarning):
    """The model was compiled in another form than it was given (unwrapped, converted)."""


def prepare_model(model: nn.Module) -> nn.Module:
    """The model to compile: ``model`` itself, or an unwrapped / float32 copy (with a warning).
    Raises :class:`CompileError` for TorchScript or for a non-finite parameter or buffer."""
    if not isinstance(model, nn.Module):
        raise CompileError(f"compile takes a torch nn.Module, not {type(model).__name__}")
    while isinstance(model, _WRAPPERS):
        warnings.warn(f"compiling the model inside {type(model).__name__} (its .module); the wrapper only "
                      "spreads training over devices", ModelFormWarning, stacklevel=3)
        model = model.module
    refuse_quantized(model)
    _refuse_torchscript(model)
    _refuse_non_finite(model)
    dtypes = {t.dtype for t in _tensors(model) if t.is_floating_point()} & set(_CONVERTED)
    if dtypes:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        warnings.warn(f"the model's weights are {names}: compiling a float32 copy (calibration and the "
                      "encrypted plan compute in float32 and float64; your model is left as it is)",
                      ModelFormWarning, stacklevel=3)
        model = copy.deepcopy(model).float()
    return model


#: where torch's quantized, QAT and observer modules live (eager and FX graph mode)
_QUANTIZED_MODULES = ("torch.ao.nn.quantized", "torch.ao.nn.qat", "torch.ao.nn.intrinsic.qat",
                      "torch.ao.nn.intrinsic.quantized", "torch.ao.nn.quantizable", "torch.ao.quantization",
                      "torch.nn.quantized", "torch.nn.qat", "torch.nn.intrinsic.qat", "torch.nn.intrinsic.quantized",
                      "torch.quantization")
#: identity in a float model (eager-mode quantization marks its input and output with them)
_FLOAT_STUBS = ("QuantStub", "DeQuantStub", "QuantWrapper")


def refuse_quantized(model: nn.Module) -> None:
    """Raise :class:`CompileError` for a quantized model (dynamic, static int8, QAT or one prepared
    for quantization: observers, fake quantization), naming the first quantized module."""
    for name, module in model.named_modules():
        cls = type(module)
        if cls.__name__ in _FLOAT_STUBS and not any(True for _ in module.children()):
            continue
        if cls.__module__.startswith(_QUANTIZED_MODULES) and cls.__name__ not in _FLOAT_STUBS:
            where = "the model" if not name else f"module {name!r}"
            raise CompileError(f"{where} ({cls.__module__}.{cls.__name__}) is quantized: compile the float model "
                               "(the one before torch.ao.quantization's prepare/convert or quantize_dynamic, with "
                               "its float state dict); CKKS computes in fixed point of its own")
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t.is_quantized:
                raise CompileError(f"the model's {kind} {name!r} is a quantized tensor ({t.dtype}): quantized: "
                                   "compile the float model")


def _tensors(model: nn.Module):
    yield from model.parameters()
    yield from model.buffers()


def _refuse_torchscript(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            where = "the model is" if not name else f"the submodule {name!r} is"
            raise CompileError(f"{where} TorchScript (torch.jit.script or torch.jit.trace output): ckksnet compiles "
                               "the Python nn.Module itself, whose code torch.fx reads. Build the model from its "
                               "class and load the weights: model.load_state_dict(scripted.state_dict())")


def _refuse_non_finite(model: nn.Module) -> None:
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise CompileError(f"the model's {kind} {name!r} holds {bad} NaN or infinite value(s) of "
                                   f"{t.numel()}: the training diverged or the weights were damaged")
