"""Saved plans: the server artifact (a whole :class:`Plan`) and the client artifact
(:class:`ClientSpec`), as validated files.

Both are envelopes of :mod:`ckksnet.backend.serialize` (the rule every ckksnet file follows:
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
import scipy.sparse as sp

from ckksnet.backend import serialize
from ckksnet.errors import CorruptDataError, SerializationError

KINDS = tuple(serialize.register_kind(k) for k in ("server_plan", "client_plan"))


def _types() -> dict[str, type]:
    """Every class a plan file may name: the built-in ones and every registered kernel."""
    from ckksnet.approx.composite import CompositeSign
    from ckksnet.approx.relu import ReluApprox
    from ckksnet.backend.presets import Preset
    from ckksnet.compiler.plan import ClientSpec, Plan
    from ckksnet.compiler.registry import Value
    from ckksnet.compiler.schedule import Schedule, StepSchedule
    from ckksnet.kernels import KERNEL_TYPES
    from ckksnet.kernels.linear import LinearMap
    from ckksnet.kernels.pooled_dense import PooledDense
    from ckksnet.layout import Layout, PooledLayout, VectorLayout

    builtin = (CompositeSign, ReluApprox, Preset, ClientSpec, Plan, Value, Schedule, StepSchedule,
               LinearMap, PooledDense, Layout, PooledLayout, VectorLayout)
    return {**{t.__name__: t for t in builtin}, **KERNEL_TYPES}


# ---------------------------------------------------------------- the tree
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
    if sp.issparse(obj):
        m = sp.csr_matrix(obj)
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
        data, indices, indptr = (_decode(v, arrays, types) for v in tree["@csr"])
        return sp.csr_matrix((data, indices, indptr), shape=tuple(tree["shape"]))
    if "@tuple" in tree:
        return tuple(_decode(v, arrays, types) for v in tree["@tuple"])
    if "@dict" in tree:
        return {k: _decode(v, arrays, types) for k, v in tree["@dict"].items()}
    if "@type" in tree:
        cls = types.get(tree["@type"])
        if cls is None:
            raise CorruptDataError(f"the plan names an unknown type {tree['@type']!r} (a kernel defined "
                                   "outside ckksnet: import its module before loading)")
        return cls(**{k: _decode(v, arrays, types) for k, v in tree["fields"].items()})
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
    return serialize.save(serialize.pack(kind, payload, ident), path)


def load_artifact(path, kind: str):
    path = Path(path)
    payload, _ = serialize.unpack(serialize.load(path), kind)
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
