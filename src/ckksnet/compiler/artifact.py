"""Saved plans: the server artifact (a whole :class:`Plan`) and the client artifact
(:class:`ClientSpec`), as validated files.

File layout (the envelope rule every ckksnet file follows)::

    b"CKKSPLAN" | uint32 header length | JSON header | payload

The header holds the format version, the kind ("server_plan" or "client_plan"), the model and
plan identities, the payload length and a SHA-256 over the header (without the digest field)
and the payload, so an edited header byte is caught as surely as a damaged payload. The payload
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

from ckksnet.errors import CorruptDataError, SerializationError, UnsupportedFormatError, WrongFileTypeError

MAGIC = b"CKKSPLAN"
FORMAT = 1
KINDS = ("server_plan", "client_plan")


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


# ---------------------------------------------------------------- the envelope
def _digest(header: dict, payload: bytes) -> str:
    body = json.dumps({k: v for k, v in header.items() if k != "sha256"}, sort_keys=True).encode()
    return hashlib.sha256(body + payload).hexdigest()


def pack(kind: str, payload: bytes, fields_: dict) -> bytes:
    header = {"format": FORMAT, "kind": kind, "length": len(payload), **fields_}
    header["sha256"] = _digest(header, payload)
    raw = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<I", len(raw)) + raw + payload


def unpack(data: bytes, kind: str) -> tuple[dict, bytes]:
    """Check an envelope; returns (header, payload). Raises WrongFileTypeError (not a plan file,
    another kind), UnsupportedFormatError (newer format), CorruptDataError (truncated, altered)."""
    head = bytes(data[:len(MAGIC)])
    if head != MAGIC:
        if MAGIC.startswith(head):
            raise CorruptDataError(f"{kind} truncated inside its magic bytes ({len(data)} bytes)")
        raise WrongFileTypeError(f"not a ckksnet plan file (expected a {kind})")
    if len(data) < len(MAGIC) + 4:
        raise CorruptDataError(f"{kind} truncated inside its header")
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    if len(data) < start + n:
        raise CorruptDataError(f"{kind} truncated inside its header")
    try:
        header = json.loads(bytes(data[start:start + n]))
    except ValueError as exc:
        raise CorruptDataError(f"{kind} header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CorruptDataError(f"{kind} header is not a JSON object")
    for name, typ in (("format", int), ("kind", str), ("length", int), ("sha256", str)):
        if not isinstance(header.get(name), typ):
            raise CorruptDataError(f"{kind} header field {name!r} is missing or not a {typ.__name__}")
    if header["format"] > FORMAT:
        raise UnsupportedFormatError(f"{kind} format {header['format']} is newer than this ckksnet reads "
                                     f"({FORMAT}); upgrade ckksnet")
    payload = bytes(data[start + n:])
    if len(payload) != header["length"]:
        raise CorruptDataError(f"{kind} truncated: {len(payload)} of {header['length']} payload bytes")
    if _digest(header, payload) != header["sha256"]:
        raise CorruptDataError(f"{kind} is corrupt: checksum over header and payload does not match")
    if header["kind"] != kind:
        raise WrongFileTypeError(f"expected a {kind}, found a {header['kind']}")
    return header, payload


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
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(pack(kind, payload, ident))
    tmp.replace(path)
    return path


def load_artifact(path, kind: str):
    path = Path(path)
    if not path.is_file():
        raise SerializationError(f"{path}: no such file")
    header, payload = unpack(path.read_bytes(), kind)
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
