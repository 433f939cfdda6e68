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

import io
import json
import struct
from pathlib import Path

import numpy as np

from ckksnet.core import envelope
from ckksnet.core.backend import valid_backend_name
from ckksnet.core.encode import (FILE_NAMES, KINDS, PLAN_TYPES, _encode, _is_sparse, plan_id,  # noqa: F401
                                 plan_type, save_artifact, to_payload)  # (re-exported)
from ckksnet.core.plan import ClientSpec, Plan, Value  # noqa: F401  (registered there; imported so a file can name them)
from ckksnet.core.schedule import Schedule, StepSchedule  # noqa: F401  (likewise)
from ckksnet.errors import CorruptDataError, SerializationError

#: the backend of plan files written before plans named theirs (2026-12-07): there was one
LEGACY_BACKEND = "openfhe"
#: the Python name of each field a file stores under another name (:data:`FILE_NAMES`)
_PYTHON_NAMES = {(cls, stored): name for (cls, name), stored in FILE_NAMES.items()}


def _types() -> dict[str, type]:
    return PLAN_TYPES


# ---------------------------------------------------------------- the tree
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
        fields_ = {_PYTHON_NAMES.get((tree["@type"], k), k): _decode(v, arrays, types)
                   for k, v in tree["fields"].items()}
        if cls in (Plan, ClientSpec):
            fields_.setdefault("backend", LEGACY_BACKEND)
        return cls(**fields_)
    raise CorruptDataError(f"unreadable plan tree node with keys {sorted(tree)[:4]}")


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
    if not valid_backend_name(obj.backend):
        raise CorruptDataError(f"{path}: the plan's backend {obj.backend!r} is not a backend name (a lower-case word)")
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
