"""Saved plans: the server artifact (a whole :class:`Plan`) and the client artifact
(:class:`ClientSpec`), as validated files.

Both are envelopes of :mod:`ckksnet.core.envelope` (the rule every ckksnet file follows:
magic, format version, lengths, a JSON header, the payload, a SHA-256 over all of it), of kinds
"server_plan" and "client_plan", whose header names the model, the preset and the plan. The payload
is a uint32-prefixed JSON tree followed by an ``.npz`` archive of its arrays (read with
``allow_pickle=False``): the tree names every object by a registered type (the kernels register
themselves, :mod:`ckksnet.kernels.base`), so loading never runs code from the file.

Floats round-trip exactly (JSON writes the shortest repr that reads back the same double; arrays
are stored raw), so a loaded plan gives bit-identical twin logits and the same encrypted run.
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
from ckksnet.core.params import Preset
from ckksnet.core.plan import ClientSpec, Plan, Value
from ckksnet.core.schedule import Schedule, StepSchedule
from ckksnet.errors import CorruptDataError, SerializationError
from ckksnet.layout import Layout, PooledLayout, VectorLayout

KINDS = tuple(envelope.register_kind(k) for k in ("server_plan", "client_plan"))
#: the backend of plan files written before plans named theirs (2026-12-07): there was one
LEGACY_BACKEND = "openfhe"


#: every class a plan file may name, by class name: core's own below; kernels register on
#: subclassing (:class:`ckksnet.kernels.Kernel`), other plan parts with :func:`plan_type`
PLAN_TYPES: dict[str, type] = {}


def plan_type(cls: type) -> type:
    """Class decorator: instances of this dataclass may be stored in plan files (by class name;
    a later class of the same name replaces the earlier one)."""
    PLAN_TYPES[cls.__name__] = cls
    return cls


def _types() -> dict[str, type]:
    return PLAN_TYPES


for _cls in (Preset, ClientSpec, Plan, Value, Schedule, StepSchedule, Layout, PooledLayout, VectorLayout):
    plan_type(_cls)


# ---------------------------------------------------------------- the tree
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
        if _types().get(name) is not type(obj):
            raise SerializationError(f"{name} is not a registered plan type (subclass ckksnet.kernels.Kernel)")
        skip = {"pending"}  # compile-time state
        return {"@type": name, "fields": {f.name: _encode(getattr(obj, f.name), arrays)
                                          for f in fields(obj) if f.init and f.name not in skip}}
    raise SerializationError(f"cannot store a {type(obj).__name__} in a plan")


def _decode(tree, arrays, types: dict):
    if isinstance(tree, list):
        return [_decode(v, arrays, types) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "@array" in tree:
        return arrays[tree["@array"]]
    if "@csr" in tree:
        from scipy.sparse import csr_matrix  # only plans of kernels that use scipy hold these

        data, indices, indptr = (_decode(v, arrays, types) for v in tree["@csr"])
        return csr_matrix((data, indices, indptr), shape=tuple(tree["shape"]))
    if "@tuple" in tree:
        return tuple(_decode(v, arrays, types) for v in tree["@tuple"])
    if "@dict" in tree:
        return {k: _decode(v, arrays, types) for k, v in tree["@dict"].items()}
    if "@type" in tree:
        cls = types.get(tree["@type"])
        if cls is None:
            raise CorruptDataError(f"the plan names an unknown type {tree['@type']!r} (a kernel defined "
                                   "outside ckksnet: import its module before loading)")
        fields_ = {k: _decode(v, arrays, types) for k, v in tree["fields"].items()}
        if cls in (Plan, ClientSpec):
            fields_.setdefault("backend", LEGACY_BACKEND)
        return cls(**fields_)
    raise CorruptDataError(f"unreadable plan tree node with keys {sorted(tree)[:4]}")


def to_payload(obj) -> bytes:
    arrays: list = []
    tree = json.dumps(_encode(obj, arrays), separators=(",", ":")).encode()
    buf = io.BytesIO()
    np.savez(buf, *arrays)
    return struct.pack("<I", len(tree)) + tree + buf.getvalue()


def from_payload(payload: bytes):
    try:
        (n,) = struct.unpack_from("<I", payload, 0)
        tree = json.loads(payload[4:4 + n])
        with np.load(io.BytesIO(payload[4 + n:]), allow_pickle=False) as npz:
            arrays = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        return _decode(tree, arrays, _types())
    except (CorruptDataError, SerializationError):
        raise
    except Exception as exc:  # any malformed tree, archive or field set
        raise CorruptDataError(f"unreadable plan payload ({type(exc).__name__}: {exc})") from exc


# ---------------------------------------------------------------- files
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


def load_artifact(path, kind: str):
    path = Path(path)
    try:
        payload, _ = envelope.unpack(envelope.load(path), kind)
    except SerializationError as exc:
        if str(path) in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from exc  # the file named, same error class
    obj = from_payload(payload)
    expected = "Plan" if kind == "server_plan" else "ClientSpec"
    if type(obj).__name__ != expected:
        raise CorruptDataError(f"{path}: holds a {type(obj).__name__}, not a {expected}")
    return obj


def load_plan(path):
    """The server artifact at ``path`` -> :class:`Plan` (validated; see the module doc)."""
    plan = load_artifact(path, "server_plan")
    if plan.schedule is None:
        raise CorruptDataError(f"{path}: the plan has no schedule")
    return plan


def load_client_spec(path):
    """The client artifact at ``path`` -> :class:`ClientSpec` (validated; holds no weights)."""
    return load_artifact(path, "client_plan")
