"""Writing plan files: the types a plan file may name, an object tree -> payload, the write.

The half of :mod:`ckksnet.core.artifact` that the plan itself needs (``Plan.save``,
``Plan.client_spec``'s plan id), so it sits below :mod:`ckksnet.core.plan`: it knows no plan
class. Each storable class registers itself where it is defined (``@plan_type``; kernels on
subclassing :class:`ckksnet.kernels.Kernel`); the layouts and presets, defined below the core's
files, are registered here. Reading a file needs every class registered, so it lives above the
plan, in :mod:`ckksnet.core.artifact` (the format is described there).
"""
from __future__ import annotations

import hashlib
import io
import json
import struct
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np

from ckksnet.core import envelope
from ckksnet.core.preset import Preset
from ckksnet.errors import SerializationError
from ckksnet.layout import Layout, PooledLayout, VectorLayout

KINDS = tuple(envelope.register_kind(k) for k in ("server_plan", "client_plan"))

#: every class a plan file may name, by class name: core's own register with :func:`plan_type`
#: where they are defined, kernels on subclassing (:class:`ckksnet.kernels.Kernel`)
PLAN_TYPES: dict[str, type] = {}


def plan_type(cls: type) -> type:
    """Class decorator: instances of this dataclass may be stored in plan files (by class name;
    a later class of the same name replaces the earlier one)."""
    PLAN_TYPES[cls.__name__] = cls
    return cls


for _cls in (Preset, Layout, PooledLayout, VectorLayout):
    plan_type(_cls)


#: fields renamed in Python after plan files were written: (class name, Python name) -> the name
#: files use, written (here) and read (:mod:`ckksnet.core.artifact`) under it, so files keep their
#: bytes and earlier ones still load
FILE_NAMES: dict[tuple[str, str], str] = {("Plan", "rotation_key_policy"): "rotation_keys"}


def _is_sparse(obj) -> bool:
    # a scipy sparse matrix, recognised without importing scipy (core depends on numpy only)
    return type(obj).__module__.startswith("scipy.sparse") and hasattr(obj, "tocsr")


def _encode(obj, arrays: list):
    if isinstance(obj, (bool, str)) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        arrays.append(obj)
        return {"@array": len(arrays) - 1}
    if _is_sparse(obj):
        m = obj.tocsr()
        return {"@csr": [_encode(m.data, arrays), _encode(m.indices, arrays), _encode(m.indptr, arrays)],
                "shape": list(m.shape)}
    if isinstance(obj, tuple):
        return {"@tuple": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise SerializationError("plan dictionaries must have string keys")
        return {"@dict": {k: _encode(v, arrays) for k, v in obj.items()}}
    if is_dataclass(obj):
        name = type(obj).__name__
        if PLAN_TYPES.get(name) is not type(obj):
            raise SerializationError(f"{name} is not a registered plan type (subclass ckksnet.kernels.Kernel)")
        skip = {"deferred"}  # compile-time state (Value.deferred)
        return {"@type": name, "fields": {FILE_NAMES.get((name, f.name), f.name): _encode(getattr(obj, f.name), arrays)
                                          for f in fields(obj) if f.init and f.name not in skip}}
    raise SerializationError(f"cannot store a {type(obj).__name__} in a plan")


def to_payload(obj) -> bytes:
    arrays: list = []
    tree = json.dumps(_encode(obj, arrays), separators=(",", ":")).encode()
    buf = io.BytesIO()
    np.savez(buf, *arrays)
    return struct.pack("<I", len(tree)) + tree + buf.getvalue()


def plan_id(plan) -> str:
    """SHA-256 of the server artifact's payload: identifies the exact plan."""
    return hashlib.sha256(to_payload(plan)).hexdigest()


def save_artifact(kind: str, obj, path) -> Path:
    """Write ``obj`` (a Plan or a ClientSpec) as a ``kind`` file, atomically."""
    if kind not in KINDS:
        raise SerializationError(f"unknown plan file kind {kind!r}")
    payload = to_payload(obj)
    ident = {"model_id": obj.model_id, "preset": obj.preset.name,
             "plan_id": hashlib.sha256(payload).hexdigest() if kind == "server_plan" else obj.plan_id}
    return envelope.save(envelope.pack(kind, payload, ident), path)
