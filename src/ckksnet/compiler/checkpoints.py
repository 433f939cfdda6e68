"""Checkpoint -> compiled plan: the one road every command takes (plan, compile, infer, demo,
fidelity, the benchmarks).

:class:`SignTables` is the typed form of ``--alpha``, ``--eps-bits`` and ``--relu-sign``;
:func:`compile_checkpoint` loads a checkpoint (the bundled ResNet-20 by default), compiles it
with the ReLU calibration stored in it and returns the plan with the model and its metadata.

Any other ``nn.Module`` comes from a factory instead (``--model package.module:factory``,
:func:`load_factory_model`): a callable taking no arguments that returns the model, its weights
from a state dict (``--weights``, :func:`load_weights`), its ReLU bounds measured on calibration
images (``--calibration images.npz|.npy|DIR``, :func:`read_calibration`), its input shape given
(``--input-shape C H W``) or told by the model (its first convolution, its Normalize module).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ckksnet.compiler.graph import activation_nodes, trace
from ckksnet.compiler.model_forms import ModelFormWarning, refuse_quantized
from ckksnet.compiler.phases import _input_size, compile_model, input_normalization, relu_overrides
from ckksnet.compiler.user_checks import infer_channels
from ckksnet.core.plan import Plan
from ckksnet.errors import CompileError, DataError, InputError
from ckksnet.imagefile import PIL_SUFFIXES, read_image
from ckksnet.inputs import as_images
from ckksnet.models import load_bundled, load_checkpoint


@dataclass(frozen=True)
class SignTables:
    """The minimax sign table of every ReLU: ``alpha`` (precision bits) and ``eps_bits`` by
    default, and ``relu_sign``: [(glob over ReLU step names, (alpha, eps_bits))], later entries
    winning (``--relu-sign 'layers.*.relu1=10/7'``)."""

    alpha: int = 13
    eps_bits: int = 9
    relu_sign: list = field(default_factory=list)

    def compile_kwargs(self, relu_names) -> dict:
        """Keyword arguments of :func:`ckksnet.compile` for ReLUs named ``relu_names``; raises
        :class:`ckksnet.errors.CompileError` for a pattern matching none of them."""
        return {"alpha": self.alpha, "eps_bits": self.eps_bits,
                "relu_alpha": relu_overrides(list(self.relu_sign), relu_names)}


def load_model(checkpoint: str | None = None, factory: str | None = None, weights: str | None = None,
               trust_pickle: bool = False):
    """(model, metadata) of a checkpoint folder, of a factory (``package.module:attr`` with an
    optional weights file ``weights``, see :func:`load_weights`; ``trust_pickle``: it may be
    unpickled beyond tensors; metadata: {"model": factory, "weights": weights}), or
    of the bundled ResNet-20 when neither is given. Raises :class:`CompileError` (a factory that
    cannot be imported, called or gives no ``nn.Module``; both sources given; weights without a
    factory) and :class:`DataError` (a checkpoint or weights file missing, unreadable or not fitting)."""
    if factory is None:
        if weights is not None:
            raise CompileError("--weights loads a state dict into the model of --model package.module:factory; "
                               "give --model too (a checkpoint folder holds its own weights)")
        return load_checkpoint(checkpoint) if checkpoint else load_bundled()
    if checkpoint is not None:
        raise CompileError(f"give either --checkpoint ({checkpoint}) or --model ({factory}), not both")
    model = load_factory_model(factory)
    refuse_quantized(model)  # before anything traces it: one clear refusal
    if weights is not None:
        load_weights(model, weights, factory, trust_pickle)
    return model.eval(), {"model": factory, "weights": weights}


def load_factory_model(spec: str):
    """The ``nn.Module`` of ``package.module:attr`` (or ``path/to/file.py:attr``): ``attr`` (dots
    allowed) is a class or function called with no arguments, or a module instance. The module
    is imported from sys.path or the current directory. Raises :class:`CompileError` saying
    which part failed."""
    module_name, sep, attr = str(spec).partition(":")
    if not (sep and module_name and attr):
        raise CompileError(f"--model {spec!r}: expected MODULE:FACTORY, e.g. mypackage.models:make_model "
                           "(a function or class, called with no arguments, that returns the torch.nn.Module)")
    module = _import(module_name, spec)
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CompileError(f"--model {spec}: {module_name} has no attribute {attr!r} "
                               f"(it defines: {', '.join(n for n in dir(module) if not n.startswith('_'))[:300]})") from None
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise CompileError(f"--model {spec}: {attr} is of type {type(obj).__name__!r}, not callable; give a function or "
                           "class that returns the torch.nn.Module when called with no arguments")
    try:
        model = obj()
    except Exception as exc:
        raise CompileError(f"--model {spec}: calling {attr}() failed: {type(exc).__name__}: {exc} (the factory is "
                           "called with no arguments)") from exc
    if not isinstance(model, nn.Module):
        raise CompileError(f"--model {spec}: {attr}() returned an object of type {type(model).__name__!r}, not a torch.nn.Module")
    return model


def _import(module_name: str, spec: str):
    """``module_name`` imported from sys.path or the current directory, or a .py file by path."""
    path = Path(module_name)
    if module_name.endswith(".py"):
        if not path.is_file():
            raise CompileError(f"--model {spec}: no such file {module_name}")
        loader = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules.setdefault(path.stem, module)  # dataclasses and pickling look modules up there
        try:
            loader.loader.exec_module(module)
        except Exception as exc:
            raise CompileError(f"--model {spec}: importing {module_name} failed: {type(exc).__name__}: {exc}") from exc
        return module
    added = os.getcwd() not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise CompileError(f"--model {spec}: cannot import {module_name!r} ({exc}); the module must be on "
                           f"PYTHONPATH or in the current directory ({os.getcwd()})") from exc
    except Exception as exc:
        raise CompileError(f"--model {spec}: importing {module_name} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if added:
            sys.path.remove(os.getcwd())


def load_weights(model, path: str, spec: str = "the model", trust_pickle: bool = False) -> None:
    """Load the weights file ``path`` into ``model``, strictly: a state dict
    (``torch.save(model.state_dict(), path)``), or a training checkpoint holding one
    (``{"model_state_dict": ..., "optimizer_state_dict": ...}``, ``{"model": ..., "epoch": ...}``,
    ``{"state_dict": ...}``: the one state dict in it, or the one of several that fits the model;
    a :class:`~ckksnet.compiler.model_forms.ModelFormWarning` names the key used). The file is read
    with ``torch.load(weights_only=True)``; a whole pickled model (``torch.save(model)``) or other
    pickled objects are unpickled only with ``trust_pickle`` (``--trust-pickle``: unpickling runs
    code the file names), the model's state dict taken. Raises :class:`DataError` for a missing or
    unreadable file, pickled objects without ``trust_pickle``, a checkpoint whose state dict is
    ambiguous or absent (its keys listed, with the one-line conversion), and weights that do not
    fit (missing and unexpected keys, shapes: named)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--weights {p}: no such file")
    state = _read_weights(p, trust_pickle)
    state = _state_dict_in(state, p, model)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} where the model has {tuple(expected[k].shape)}"
              for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"missing keys {_names(missing)}" if missing else "",
                 f"unexpected keys {_names(unexpected)}" if unexpected else "",
                 f"shapes differ: {'; '.join(shapes[:5])}" if shapes else ""]
        raise DataError(f"--weights {p} does not fit {spec}: " + ", ".join(x for x in parts if x))
    model.load_state_dict(state)


def _read_weights(p: Path, trust_pickle: bool):
    """What ``torch.load`` reads from ``p``: tensors and containers only, unless ``trust_pickle``."""
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        objects = _pickled_globals(p)
        if not objects:  # torch refused something other than a global: garbled
            raise DataError(f"--weights {p}: not a readable torch state dict, as torch.save(model.state_dict(), path) "
                            "writes (UnpicklingError: garbled, or it holds Python objects beyond tensors)") from exc
        if not trust_pickle:
            model = any(g.startswith("torch.nn.modules.") for g in objects)
            what = ("a whole pickled model (torch.save(model)), not a state dict" if model else
                    "pickled Python objects beyond tensors")
            raise DataError(
                f"--weights {p} holds {what} ({_names(sorted(objects), 4)}); ckksnet does not unpickle objects "
                "without consent: unpickling runs code the file names. If you trust the file, add --trust-pickle "
                "(ckksnet then takes the model's state dict), or convert it once: python -c \"import torch; "
                f"m = torch.load('{p}', weights_only=False); "
                f"torch.save(m.state_dict(), '{p.with_name(p.stem + '_state.pt')}')\" and pass that file") from exc
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc2:
            first = (str(exc2).strip().splitlines() or [""])[0]
            raise DataError(f"--weights {p} --trust-pickle: unpickling failed ({type(exc2).__name__}: {first}); the "
                            "classes it names must be importable (on PYTHONPATH or in the current directory)") from exc2
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]  # torch's own text runs on for lines
        raise DataError(f"--weights {p}: not a readable torch state dict, as torch.save(model.state_dict(), path) "
                        f"writes ({type(exc).__name__}: {first})") from exc


def _pickled_globals(p: Path) -> list[str]:
    """The Python objects (module.name) a torch file's pickle names beyond what weights_only allows,
    read without unpickling; empty if they cannot be read."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(p)))
    except Exception:
        return []


#: keys under which training scripts commonly store the model's state dict, most likely first
_STATE_KEYS = ("model_state_dict", "state_dict", "model", "model_state", "net", "network", "weights")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def _state_dict_in(obj, p: Path, model) -> dict:
    """The state dict in what a weights file held: itself, a pickled model's, or the one in a
    training checkpoint (a ModelFormWarning names the key); DataError where none or several."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict) and not obj:
        raise DataError(f"--weights {p}: the file holds an empty dict, no weights")
    if _is_state_dict(obj):
        return obj
    if not isinstance(obj, dict):
        raise DataError(f"--weights {p}: expected a state dict (names -> tensors, torch.save(model.state_dict(), "
                        f"path)), got a {type(obj).__name__}")
    found = {}
    for key, value in obj.items():
        if isinstance(value, nn.Module):
            value = value.state_dict()
        if _is_state_dict(value):
            found[key] = value
    if len(found) > 1:
        expected = set(model.state_dict())
        fitting = {k: v for k, v in found.items() if {_unprefixed(n) for n in v} == expected}
        found = fitting if len(fitting) == 1 else found
    keys = ", ".join(repr(k) for k in obj)
    if len(found) == 1:
        (key, state), = found.items()
        others = [repr(k) for k in obj if k != key]
        warnings.warn(f"--weights {p}: a training checkpoint; using the state dict under {key!r}"
                      + (f" (also in it: {', '.join(others[:6])})" if others else ""), ModelFormWarning, stacklevel=3)
        return state
    pick = next((k for k in _STATE_KEYS if k in found), next(iter(found), "KEY"))
    convert = (f"python -c \"import torch; torch.save(torch.load('{p}')[{pick!r}], "
               f"'{p.with_name(p.stem + '_state.pt')}')\"")
    if found:
        raise DataError(f"--weights {p}: a checkpoint holding several state dicts ({', '.join(map(repr, found))}; "
                        f"keys {keys}), none or more than one of which fits the model: pick one with {convert} "
                        "and pass that file")
    raise DataError(f"--weights {p}: a dict without a state dict in it (keys {keys}); expected names -> tensors "
                    f"(torch.save(model.state_dict(), path)), or a checkpoint holding one under a key. If the "
                    f"weights are under another key, take them out once: {convert}")


def _unprefixed(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name


def _names(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def model_input_shape(model, meta: dict | None = None, input_shape=None, image_size=None) -> tuple[int, int, int]:
    """(C, H, W) of the model's input: ``input_shape`` if given (checked against ``image_size``),
    else the checkpoint's recorded ``input_shape`` (its size replaced by ``image_size`` if given),
    else the channels the model tells (its first convolution, its Normalize module) at
    ``image_size`` (N for N x N, or (H, W); default 32 x 32, not for a factory's model, whose
    metadata names it: no size is guessed for it). Raises :class:`CompileError` where the model
    cannot tell (give --input-shape), a factory's model has neither size, or two disagree."""
    size = _pair(image_size)
    if input_shape is not None:
        channels, hw = _input_size(tuple(input_shape), size)
        input_normalization(trace(model), dict(model.named_modules()), expected=channels)  # the model agrees
        return (channels, *hw)
    recorded = (meta or {}).get("input_shape")
    if recorded is None and size is None and (meta or {}).get("model"):
        raise CompileError(f"--model {meta['model']}: give --input-shape C H W (or --image-size N): a model made by "
                           "a factory does not record the size of its input")
    if recorded is not None:
        try:
            channels, hw = _input_size(tuple(recorded), None)
        except (CompileError, TypeError) as exc:
            raise DataError(f"the checkpoint's input_shape {recorded!r} is malformed: {exc}") from exc
        return (channels, *(size or hw))
    _, hw = _input_size(None, size)
    graph, modules = trace(model), dict(model.named_modules())
    try:
        _, mean, _ = input_normalization(graph, modules)
    except CompileError:  # no convolution, no per-channel mean/std: an MLP's first dense layer tells
        channels = infer_channels(model, graph, modules, None, hw)
        if channels is None:
            raise
        return (channels, *hw)
    return (len(mean), *hw)


def _pair(size):
    """N -> (N, N); (H, W) as a tuple; None stays None."""
    if size is None:
        return None
    if isinstance(size, (tuple, list)) or hasattr(size, "__len__"):
        return tuple(size)
    return (size, size)


def read_calibration(path: str, input_shape: tuple[int, int, int]):
    """Calibration images for ``input_shape`` (C, H, W) as float (N, C, H, W) in [0, 1], from an
    ``.npz`` (its one array, or the one named ``images`` or ``x``), an ``.npy``, or a folder of
    PNG / JPEG / .npy images (sorted by name; each of the model's size). Arrays: uint8
    (N, H, W, C) 0..255 or float (N, C, H, W) in [0, 1] (1 channel: (N, H, W) too). Raises
    :class:`DataError` for a file or folder that cannot be read and the input errors
    (:class:`ShapeError`, :class:`RangeError`, ...) naming the file for images that do not fit."""
    c, h, w = input_shape
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in PIL_SUFFIXES + (".npy",))
        if not files:
            raise DataError(f"--calibration {p}: the folder holds no PNG, JPEG or .npy image")
        out = []
        for f in files:
            pixels, _ = read_image(f, c, h, w)
            out.append(as_images(pixels, c, h, w)[0])
        return np.concatenate(out)
    if not p.is_file():
        raise DataError(f"--calibration {p}: no such file or folder")
    try:
        if p.suffix.lower() == ".npz":
            if not zipfile.is_zipfile(p):
                raise DataError(f"--calibration {p}: not an .npz archive (numpy.savez writes one)")
            with np.load(p, allow_pickle=False) as data:
                names = list(data.files)
                name = names[0] if len(names) == 1 else next((k for k in ("images", "x") if k in names), None)
                if name is None:
                    raise DataError(f"--calibration {p}: holds the arrays {', '.join(names) or 'none'}; "
                                    "expected one array, or one named 'images' or 'x'")
                arr = data[name]
        elif p.suffix.lower() == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            raise DataError(f"--calibration {p}: expected an .npz or .npy file of images, or a folder of images")
    except DataError:
        raise
    except Exception as exc:  # zip, pickle and format errors: numpy raises many kinds
        raise DataError(f"--calibration {p}: not a readable numpy file ({type(exc).__name__}: {exc})") from exc
    try:
        return as_images(arr, c, h, w)[0]
    except InputError as exc:
        hint = (f" (the model input is {c}x{h}x{w}: give the images' size with --image-size N or "
                "--input-shape C H W)") if arr.ndim == 4 and tuple(arr.shape[1:]) not in {(c, h, w), (h, w, c)} else ""
        raise type(exc)(f"--calibration {p}: {exc}{hint}") from exc


def compile_checkpoint(checkpoint: str | None = None, preset: str = "secure",
                       signs: SignTables = SignTables(), factory: str | None = None, weights: str | None = None,
                       calibration: str | None = None, input_shape=None, image_size=None,
                       trust_pickle: bool = False, **options) -> tuple[Plan, object, dict]:
    """Compile a checkpoint with its stored ReLU calibration, or a factory's model
    (:func:`load_model`) with calibration images read from ``calibration``
    (:func:`read_calibration`; for a checkpoint they replace the stored bounds; ``trust_pickle``:
    see :func:`load_weights`); returns (plan,
    model, metadata). The input is ``input_shape`` (C, H, W) or ``image_size`` (N for N x N, or
    (H, W)) (:func:`model_input_shape`). ``options``: further :func:`ckksnet.compile` arguments
    (``margin``, ...). Raises the checkpoint's :class:`ckksnet.errors.DataError` kinds and
    :class:`CompileError`."""
    model, meta = load_model(checkpoint, factory, weights, trust_pickle)
    shape = model_input_shape(model, meta, input_shape, image_size)
    if calibration is not None:
        images = read_calibration(calibration, shape)
        relus = list(activation_nodes(trace(model), dict(model.named_modules())).values())
        plan = compile_model(model, calibration=images, preset=preset, input_shape=shape,
                             **signs.compile_kwargs(relus), **options)
        return plan, model, meta
    if factory is not None:
        raise CompileError(f"--model {factory}: give --calibration images (an .npz or .npy file, or a folder of "
                           "images) to measure the ReLU inputs' ranges on")
    relus = meta["calibration"]["relus"]
    plan = compile_model(model, calibration=relus, preset=preset, input_shape=shape,
                         **signs.compile_kwargs(relus), **options)
    return plan, model, meta
