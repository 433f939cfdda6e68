"""Checkpoints: a torch state dict (``model.pt``) beside a JSON metadata file (``model.json``).

The metadata holds the architecture config (which includes the normalisation constants), the
calibration figures of every ReLU, how the model was trained, its measured accuracy, and a
``checksum`` block::

    "checksum": {"algorithm": "sha256", "tensors": "<hex>", "config": "<hex>", "calibration": "<hex>"}

``tensors`` is the SHA-256 of every tensor of the state dict in sorted name order (a JSON header
line ``[name, dtype, shape, byte count]`` then its bytes, C order, native little-endian);
``config`` and ``calibration`` are SHA-256 digests of those blocks as canonical JSON (sorted
keys, no spaces; ``null`` when absent). Training history and accuracy are descriptive and not
covered. :func:`load_checkpoint` checks everything it reads:

* missing files, an unreadable ``model.pt`` (empty, truncated, garbled, not a state dict),
  ``model.json`` that is not UTF-8 JSON holding an object, a config or calibration field of the
  wrong type or value (named in the message), tensors whose names, shapes or dtypes do not fit
  the config, NaN or infinite weights: :class:`~ckksnet.errors.DataError`;
* contents that do not match the recorded checksum (a flipped bit in the weights, an edited
  calibration figure): :class:`~ckksnet.errors.ChecksumError` (a DataError and a CorruptDataError);
* a checkpoint written before checksums existed loads with an
  :class:`~ckksnet.errors.UnverifiedCheckpointWarning`; :func:`add_checksum` adds one.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from ckksnet.core.envelope import atomic_path
from ckksnet.errors import ChecksumError, DataError, UnverifiedCheckpointWarning
from ckksnet.models.poly import activation_degree
from ckksnet.models.resnet import build

BUNDLED_ROOT = Path(__file__).resolve().parent / "bundled"
BUNDLED_DIR = BUNDLED_ROOT / "resnet20"  #: the bundled ReLU ResNet-20 (the default everywhere)
#: Bundled checkpoints by name ("bundled" is the ReLU ResNet-20's old name); any ``--checkpoint``
#: takes one of these names where no folder of that name exists. A trained polynomial ResNet-20
#: (issue 37) joins as "resnet20-poly" when one holds 89% with no input diverging.
BUNDLED = {"resnet20": BUNDLED_DIR, "bundled": BUNDLED_DIR}
CHECKSUM_FIELDS = ("tensors", "config", "calibration")
_WHAT = {"tensors": "weights (model.pt)", "config": "config block", "calibration": "calibration block"}
_HEX64 = re.compile(r"[0-9a-f]{64}")


# ---------------------------------------------------------------- digests
def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a state dict: per tensor in sorted name order, a JSON header line
    ``[name, dtype, shape, byte count]`` and then the tensor's bytes (C order, native order)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        h.update((json.dumps([name, str(t.dtype), list(t.shape), len(raw)]) + "\n").encode())
        h.update(raw)
    return h.hexdigest()


def json_digest(block: object) -> str:
    """SHA-256 (hex) of ``block`` as canonical JSON (sorted keys, no spaces, ASCII, no NaN)."""
    text = json.dumps(block, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def checksum(state: dict[str, torch.Tensor], meta: dict) -> dict:
    """The ``checksum`` block of ``model.json`` for these weights and metadata."""
    return {"algorithm": "sha256", "tensors": tensor_digest(state),
            "config": json_digest(meta.get("config")), "calibration": json_digest(meta.get("calibration"))}


# ---------------------------------------------------------------- field checks
def _bad(where: str, field: str, expected: str, value: object) -> DataError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return DataError(f"{where}: {field} must be {expected}, got {shown}")


def _int(value: object, where: str, field: str) -> int:
    """A positive int (not bool); DataError naming ``field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(where, field, "a positive integer", value)
    return value


def _number(value: object, where: str, field: str, positive: bool = False) -> float:
    """A finite number (not bool), > 0 if ``positive``, else >= 0; DataError naming ``field``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise _bad(where, field, "a finite number " + ("> 0" if positive else ">= 0"), value)
    return float(value)


def _list(value: object, where: str, field: str, length: int | None = None) -> list:
    """A non-empty JSON array (of ``length`` items if given); DataError naming ``field``."""
    if not isinstance(value, list) or not value or (length is not None and len(value) != length):
        raise _bad(where, field, f"a list of {length}" if length else "a non-empty list", value)
    return value


def _dict(value: object, where: str, field: str) -> dict:
    """A JSON object; DataError naming ``field`` otherwise."""
    if not isinstance(value, dict):
        raise _bad(where, field, "an object", value)
    return value


def check_config(config: object, where: str) -> dict:
    """Check the architecture config: blocks, widths, num_classes, mean (3), std (3, > 0).

    Raises DataError naming the first bad field (``config.widths[1]``, ...).
    """
    config = _dict(config, where, "config")
    for key in ("blocks", "widths", "num_classes", "mean", "std"):
        if key not in config:
            raise DataError(f"{where}: config.{key} is missing")
    _int(config["blocks"], where, "config.blocks")
    _int(config["num_classes"], where, "config.num_classes")
    for i, w in enumerate(_list(config["widths"], where, "config.widths")):
        _int(w, where, f"config.widths[{i}]")
    for key in ("mean", "std"):
        for i, v in enumerate(_list(config[key], where, f"config.{key}", 3)):
            _number(v, where, f"config.{key}[{i}]", positive=key == "std")
    if "activation" in config:  # "relu" or a polynomial (ckksnet.models.poly); others refused by name
        try:
            activation_degree(config["activation"])
        except ValueError as exc:
            raise DataError(f"{where}: config.activation: {exc}") from None
    return config


def check_calibration(calibration: object, where: str) -> dict:
    """Check the calibration block: ``relus`` maps module names to figures (``max_abs`` required).

    Raises DataError naming the first bad field (``calibration.relus['layers.0.relu1'].max_abs``).
    """
    calibration = _dict(calibration, where, "calibration")
    if "images" in calibration:
        _int(calibration["images"], where, "calibration.images")
    relus = _dict(calibration.get("relus"), where, "calibration.relus")
    for name, figures in relus.items():
        field = f"calibration.relus[{name!r}]"
        figures = _dict(figures, where, field)
        if "max_abs" not in figures:
            raise DataError(f"{where}: {field}.max_abs is missing")
        for key in ("max_abs", "percentile", "q", "count"):
            if key in figures:
                _number(figures[key], where, f"{field}.{key}")
    return calibration


def _check_checksum_block(block: object, where: str) -> dict:
    """The recorded checksum block: algorithm sha256 and three 64-digit hex digests; DataError."""
    block = _dict(block, where, "checksum")
    if block.get("algorithm") != "sha256":
        raise _bad(where, "checksum.algorithm", "'sha256'", block.get("algorithm"))
    for key in CHECKSUM_FIELDS:
        if not isinstance(block.get(key), str) or not _HEX64.fullmatch(block[key]):
            raise _bad(where, f"checksum.{key}", "64 lowercase hex digits", block.get(key))
    return block


# ---------------------------------------------------------------- reading
def _read_meta(path: Path) -> dict:
    """Parse ``model.json``; DataError if unreadable, not UTF-8, not JSON or not an object."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                        f"at offset {exc.start})") from exc
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{path}: holds a JSON {type(meta).__name__}, expected an object")
    return meta


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """Load ``model.pt`` (weights only); DataError if it is not a readable dict of named tensors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on damaged files
        reason = (str(exc).strip().splitlines() or [""])[0][:160]  # not torch's advice to unpickle unsafely
        raise DataError(f"{path}: not a readable torch state dict, damaged or not a checkpoint "
                        f"({type(exc).__name__}: {reason})") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise DataError(f"{path}: holds a {type(state).__name__}, expected a dict of named tensors")
    return state


def check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str) -> None:
    """Same tensor names, shapes and dtypes as ``expected``, and finite floats; DataError otherwise."""
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise DataError(f"{where}: weights do not fit the config (missing {missing[:5]}, "
                        f"unexpected {extra[:5]})")
    for name, want in expected.items():
        t = state[name]
        if not isinstance(t, torch.Tensor):
            raise DataError(f"{where}: {name} is a {type(t).__name__}, expected a tensor")
        if t.shape != want.shape or t.dtype != want.dtype:
            raise DataError(f"{where}: tensor {name} is {t.dtype} {tuple(t.shape)}, "
                            f"expected {want.dtype} {tuple(want.shape)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DataError(f"{where}: tensor {name} holds NaN or infinite values")


def check_config_fits(config: dict, state: dict[str, torch.Tensor], where: str) -> None:
    """Blocks, widths and classes of ``config`` agree with the tensors' shapes, checked before a
    model is built (so an edited config cannot make a huge one). Raises DataError otherwise."""
    blocks, widths = config["blocks"], config["widths"]
    layers = {int(k.split(".")[1]) for k in state if re.fullmatch(r"layers\.\d+\..+", k)}
    want = {"layers": blocks * len(widths), "conv1.weight": widths[0],
            "fc.weight": (config["num_classes"], widths[-1])}
    have = {"layers": max(layers) + 1 if layers else 0,
            "conv1.weight": _dim(state.get("conv1.weight"), 0),
            "fc.weight": (_dim(state.get("fc.weight"), 0), _dim(state.get("fc.weight"), 1))}
    for stage, width in enumerate(widths):
        key = f"layers.{stage * blocks}.conv1.weight"
        want[key], have[key] = width, _dim(state.get(key), 0)
    bad = [k for k in want if want[k] != have[k]]
    if bad:
        raise DataError(f"{where}: the config (blocks {blocks}, widths {widths}, num_classes "
                        f"{config['num_classes']}) does not fit the weights ({bad[0]}: expected "
                        f"{want[bad[0]]}, found {have[bad[0]]})")


def _dim(t: object, axis: int) -> int | None:
    """Size of ``t`` along ``axis``, or None if ``t`` is not a tensor with that axis."""
    return t.shape[axis] if isinstance(t, torch.Tensor) and t.ndim > axis else None


def _check_normalization(state: dict[str, torch.Tensor], config: dict, where: str) -> None:
    """config.mean/std must equal the weights' ``normalize`` buffers (as float32); DataError."""
    for key in ("mean", "std"):
        stored = state.get(f"normalize.{key}")
        if stored is None:
            continue
        stored = stored.detach().cpu().numpy().ravel()
        if not np.array_equal(np.asarray(config[key], dtype=np.float32), stored):
            raise DataError(f"{where}: config.{key} {config[key]} does not match the weights' "
                            f"normalize.{key} {stored.tolist()}")


def _check_relu_names(model: torch.nn.Module, calibration: dict, where: str) -> None:
    """Calibrated names must be modules of the model, and every ReLU calibrated; DataError."""
    modules = dict(model.named_modules())
    unknown = sorted(set(calibration["relus"]) - set(modules))
    uncalibrated = sorted(n for n, m in modules.items()
                          if isinstance(m, torch.nn.ReLU) and n not in calibration["relus"])
    if unknown or uncalibrated:
        raise DataError(f"{where}: calibration.relus does not fit the model (unknown modules "
                        f"{unknown[:5]}, ReLUs without figures {uncalibrated[:5]})")


def _verify(meta: dict, state: dict[str, torch.Tensor], folder: Path) -> None:
    """Compare with the recorded checksum: ChecksumError on a mismatch, a warning when absent."""
    if "checksum" not in meta:
        warnings.warn(f"{folder}: model.json records no checksum, so the weights and calibration "
                      "cannot be verified (ckksnet.models.checkpoint.add_checksum adds one)",
                      UnverifiedCheckpointWarning, stacklevel=4)
        return
    recorded = _check_checksum_block(meta["checksum"], str(folder / "model.json"))
    actual = checksum(state, meta)
    bad = [_WHAT[k] for k in CHECKSUM_FIELDS if recorded[k] != actual[k]]
    if bad:
        raise ChecksumError(f"{folder}: SHA-256 of the {' and '.join(bad)} does not match the checksum "
                            "recorded in model.json: the checkpoint was altered or damaged")


def _unwrapped(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved from a DataParallel / DistributedDataParallel model (every key
    ``module.<name>``) without the wrapper's prefix, with a warning; others as they are."""
    if state and all(k.startswith("module.") for k in state):
        warnings.warn(f"{path}: the weights were saved from a DataParallel/DistributedDataParallel wrapper "
                      "(keys 'module.<name>'); reading them without the prefix (save model.module next time)",
                      UserWarning, stacklevel=5)
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _load(folder: Path) -> tuple[torch.nn.Module, dict, dict[str, torch.Tensor]]:
    """Read, verify and rebuild; returns (model in eval mode, metadata, state dict)."""
    if not folder.exists():
        raise DataError(f"{folder}: no such checkpoint folder (bundled checkpoints by name: "
                        f"{', '.join(k for k in BUNDLED if k != 'bundled')})")
    for name in ("model.pt", "model.json"):
        if not (folder / name).is_file():
            raise DataError(f"{folder}: checkpoint file {name} is missing")
    where = str(folder / "model.json")
    meta = _read_meta(folder / "model.json")
    config = check_config(meta.get("config"), where)
    if "calibration" in meta:
        check_calibration(meta["calibration"], where)
    state = _read_state(folder / "model.pt")
    _verify(meta, state, folder)
    state = _unwrapped(state, folder / "model.pt")
    check_config_fits(config, state, where)
    model = build(config)
    check_state(model.state_dict(), state, str(folder / "model.pt"))
    _check_normalization(state, config, where)
    model.load_state_dict(state)
    if "calibration" in meta:
        _check_relu_names(model, meta["calibration"], where)
    return model.eval(), meta, state


def checkpoint_folder(folder: str | os.PathLike) -> Path:
    """The folder a ``--checkpoint`` names: the path itself when it exists, else the bundled
    checkpoint of that name (:data:`BUNDLED`: ``resnet20``), else the path (its
    loading then says what is missing). A folder path always wins over a bundled name."""
    path = Path(folder)
    if not path.exists() and str(folder) in BUNDLED:
        return BUNDLED[str(folder)]
    return path


def load_checkpoint(folder: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from ``folder`` in eval mode; returns (model, metadata). ``folder`` may
    name a bundled checkpoint (``resnet20``; see :func:`checkpoint_folder`).

    Raises DataError (missing or unreadable files, malformed metadata naming the field, weights
    that do not fit the config) and ChecksumError (contents differ from the recorded checksum);
    warns with UnverifiedCheckpointWarning when no checksum is recorded.
    """
    model, meta, _ = _load(checkpoint_folder(folder))
    return model, meta


# ---------------------------------------------------------------- writing
def _write_atomic(path: Path, write) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        write(tmp)


def _json_text(meta: dict) -> str:
    try:
        return json.dumps(meta, indent=2) + "\n"
    except (TypeError, ValueError) as exc:
        raise DataError(f"checkpoint metadata cannot be written as JSON ({exc})") from exc


def save_checkpoint(model: torch.nn.Module, meta: dict, folder: str | os.PathLike) -> Path:
    """Write ``model.pt`` and ``model.json`` (with its checksum) into ``folder``.

    ``meta`` gains the model config (unless it has one) and a fresh ``checksum`` (any old one is
    replaced). Raises DataError, before writing anything, for metadata that is not JSON or
    whose config or calibration :func:`load_checkpoint` would refuse.
    """
    folder = Path(folder)
    while isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        model = model.module  # the wrapper only spreads training over devices
    if not hasattr(model, "config"):
        raise DataError(f"save_checkpoint writes ckksnet's CIFAR ResNets (they carry a .config); a "
                        f"{type(model).__name__} has none: compile it with ckksnet.compile(model, calibration=...) "
                        "and save the plan (net.save(folder)) instead, or save its state dict "
                        "(torch.save(model.state_dict(), path)) and give the command line the model itself: "
                        "ckksnet compile --model MODULE:FACTORY --weights path --calibration IMAGES "
                        "(README, 'Your own model')")
    meta = {"config": model.config, **{k: v for k, v in meta.items() if k != "checksum"}}
    meta = json.loads(_json_text(meta))  # what will be read back, so the digests match
    config = check_config(meta["config"], "checkpoint metadata")
    if "calibration" in meta:
        check_calibration(meta["calibration"], "checkpoint metadata")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    check_state(build(config).state_dict(), state, "model to save")
    _check_normalization(state, config, "checkpoint metadata")
    meta["checksum"] = checksum(state, meta)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / "model.pt", lambda p: torch.save(state, p))
    _write_atomic(folder / "model.json", lambda p: p.write_text(_json_text(meta)))
    return folder


def add_checksum(folder: str | os.PathLike) -> dict:
    """Record the checksum of an older checkpoint in its ``model.json`` (weights untouched).

    Only for a checkpoint you trust: it is checked as :func:`load_checkpoint` does and then
    sealed as it is. Returns the checksum block. Raises what load_checkpoint raises.
    """
    folder = Path(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedCheckpointWarning)
        _, meta, state = _load(folder)
    meta = {k: v for k, v in meta.items() if k != "checksum"}
    meta["checksum"] = checksum(state, meta)
    _write_atomic(folder / "model.json", lambda p: p.write_text(_json_text(meta)))
    return meta["checksum"]


def load_bundled(name: str = "resnet20") -> tuple[torch.nn.Module, dict]:
    """A trained checkpoint shipped with the package, by name (:data:`BUNDLED`: ``resnet20``,
    the ReLU ResNet-20, the default); see its ``model.json`` for provenance.

    Raises DataError for an unknown name or if the installed files are damaged, ChecksumError
    if they were altered.
    """
    if name not in BUNDLED:
        raise DataError(f"no bundled checkpoint named {name!r} (bundled: {', '.join(k for k in BUNDLED if k != 'bundled')})")
    return load_checkpoint(BUNDLED[name])
