"""Headers of OpenFHE key and ciphertext files, read without OpenFHE.

What a key file's envelope header says (key set id, preset, rotation groups, bootstrapping's
automorphisms) can be checked before, or without, loading a key: an upload handler validates a
bundle this way and never loads the OpenFHE module (``tests/test_layering.py`` checks the HTTP
service does not). :mod:`ckksnet.backend.serialize` checks the same headers against the payloads
OpenFHE reads.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sys
import typing
from functools import lru_cache
from importlib import metadata
from typing import Iterable

from ckksnet.core.envelope import header_field, register_kind, unpack
from ckksnet.core.preset import Preset, get_preset
from ckksnet.errors import ContextMismatchError, CorruptDataError, PresetError, VersionMismatchError


#: the envelope kinds of OpenFHE's objects (registered here, so that headers read without OpenFHE)
KINDS = tuple(register_kind(k) for k in ("context", "public_key", "secret_key", "mult_keys", "rotation_keys",
                                         "bootstrap_keys", "ciphertext"))


@lru_cache(maxsize=1)
def openfhe_version() -> str:
    """The installed OpenFHE's version as its module reports it ("1.6.1.0"), from the package
    metadata when the module is not loaded (the wheel's version adds its build: 1.6.1.0.22.4)."""
    module = sys.modules.get("openfhe")
    if module is not None and hasattr(module, "__version__"):
        return str(module.__version__)
    try:
        return ".".join(metadata.version("openfhe").split(".")[:4])
    except metadata.PackageNotFoundError:
        return "unknown"


def context_id_for(preset_name: str, key_tag: str) -> str:
    """The key set id: SHA-256 (hex) of the preset name and OpenFHE's tag of the secret key."""
    return hashlib.sha256(f"{preset_name}|{key_tag}".encode()).hexdigest()


def rotations_of_automorphisms(automorphisms: Iterable[int], ring_dim: int, slots: int) -> dict[int, int]:
    """Rotation indices (mod ``slots``, nonzero) that automorphism keys provide: index -> the
    amount OpenFHE's key is for (rotation r is the automorphism 5^r mod 2N, r < N/2; with
    sparse slots, r and r + slots rotate alike, so the smallest such r is kept)."""
    present, m, g, out = set(automorphisms), 2 * ring_dim, 1, {}
    for r in range(ring_dim // 2):
        if g in present and r % slots:
            out.setdefault(r % slots, r)
        g = g * 5 % m
    return out


def unpack_key(data: bytes, kind: str, context_id: str | None = None) -> tuple[bytes, dict]:
    """:func:`unpack` plus the key-object fields (context_id, preset, extra, openfhe) checked.
    Raises :class:`VersionMismatchError` for a file another OpenFHE version wrote; a file
    without the field predates it (ckksnet before 2026-12-04) and is read as before."""
    payload, header = unpack(data, kind)
    what = f"{kind} header"
    cid = header_field(header, "context_id", str, what)
    header_field(header, "preset", str, what)
    header_field(header, "extra", dict, what)
    if "openfhe" in header and header_field(header, "openfhe", str, what) != openfhe_version():
        raise VersionMismatchError(f"this {kind} was written by OpenFHE {header['openfhe']}, and OpenFHE "
                                   f"{openfhe_version()} is installed: its binary objects may not read back; "
                                   "make the keys and ciphertexts again with this version, or install that one")
    if context_id is not None and cid != context_id:
        raise ContextMismatchError(f"{kind} belongs to another key set ({cid[:12]}..., "
                                   f"expected {context_id[:12]}...)")
    return payload, header


def preset_from_header(fields: object, what: str = "context header") -> Preset:
    """A :class:`Preset` from a header's parameter dict. Any unknown, missing (without default)
    or mistyped field, or parameters that make no valid preset: :class:`CorruptDataError`
    naming the field. Insecure presets warn as :func:`get_preset` does."""
    if not isinstance(fields, dict):
        raise CorruptDataError(f"{what}: the preset parameters are not a JSON object")
    known = {f.name: f for f in dataclasses.fields(Preset)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise CorruptDataError(f"{what}: unknown preset field(s) {', '.join(map(repr, unknown))}")
    hints = typing.get_type_hints(Preset)
    values = {}
    for name, f in known.items():
        if name in fields:
            values[name] = _preset_value(fields, name, hints[name], what)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise CorruptDataError(f"{what} lacks the preset field {name!r}")
    try:
        return get_preset(Preset(**values))
    except PresetError as exc:
        raise CorruptDataError(f"{what}: {exc}") from exc


def _preset_value(fields: dict, name: str, hint, what: str):
    if typing.get_origin(hint) is tuple:  # level_budget: a JSON list of ints
        items = header_field(fields, name, (list, tuple), f"{what} preset")
        for i, item in enumerate(items):
            header_field({f"{name}[{i}]": item}, f"{name}[{i}]", int, f"{what} preset")
        return tuple(items)
    if hint is float:
        return float(header_field(fields, name, (int, float), f"{what} preset"))
    return header_field(fields, name, hint, f"{what} preset")


def rotation_groups(header: dict) -> list[list[int]]:
    """The rotation indices of each group in a rotation-key header (validated)."""
    groups = header_field(header["extra"], "groups", list, "rotation_keys header extra")
    out = []
    for i, group in enumerate(groups):
        indices = header_field(group, "indices", list, f"rotation_keys group {i}")
        if not indices or not all(type(k) is int for k in indices):
            raise CorruptDataError(f"rotation_keys group {i}: 'indices' must be a non-empty list of ints")
        out.append(indices)
    return out


def bootstrap_automorphisms(header: dict, preset: Preset) -> list[int]:
    """The automorphism indices a bootstrapping-key header declares (validated)."""
    extra = header["extra"]
    slots = header_field(extra, "slots", int, "bootstrap_keys header extra")
    if slots != preset.slots:
        raise CorruptDataError(f"bootstrap_keys are for {slots} slots, the context has {preset.slots}")
    autos = header_field(extra, "automorphisms", list, "bootstrap_keys header extra")
    if not autos or not all(type(a) is int for a in autos):
        raise CorruptDataError("bootstrap_keys header: 'automorphisms' must be a non-empty list of ints")
    return autos


def bootstrap_key_rotations(header: dict, preset: Preset) -> set[int]:
    """Rotation indices (mod slots) that the bootstrapping keys of ``header`` provide."""
    autos = bootstrap_automorphisms(header, preset)
    return set(rotations_of_automorphisms(autos, preset.ring_dim, preset.slots))


