"""The OpenFHE crypto context built from a :class:`~ckksnet.core.params.Preset`.

The presets themselves are numbers (:mod:`ckksnet.core.params`, re-exported here).
"""
from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path

import openfhe as ofhe

from ckksnet.core.params import (PRESETS, SECURE, TEST, InsecurePresetWarning, Preset, get_preset,  # noqa: F401
                                 _bootstrap_depth)  # noqa: F401
from ckksnet.errors import PresetError

BOOTSTRAP_ROTATIONS = Path(__file__).with_name("bootstrap_rotations.json")
_SECURITY = {"HEStd_128_classic": ofhe.HEStd_128_classic, "HEStd_NotSet": ofhe.HEStd_NotSet}
_SECRET = {"SPARSE_ENCAPSULATED": ofhe.SPARSE_ENCAPSULATED, "SPARSE_TERNARY": ofhe.SPARSE_TERNARY,
           "UNIFORM_TERNARY": ofhe.UNIFORM_TERNARY}


def openfhe_bootstrap_depth(level_budget: tuple[int, int], secret_dist: str) -> int:
    """OpenFHE's own figure for the levels one bootstrap consumes (checks the formula the
    presets use, :func:`ckksnet.core.params._bootstrap_depth`)."""
    params = ofhe.CCParamsCKKSRNS()  # GetBootstrapDepth needs any CKKS context in Python
    params.SetSecurityLevel(ofhe.HEStd_NotSet)
    params.SetRingDim(16)
    params.SetMultiplicativeDepth(1)
    params.SetScalingModSize(40)
    params.SetFirstModSize(50)
    cc = ofhe.GenCryptoContext(params)
    return int(cc.GetBootstrapDepth(list(level_budget), _SECRET[secret_dist]))


def build_crypto_context(p: Preset) -> "ofhe.CryptoContext":
    """The OpenFHE context for a preset, with the features ckksnet uses enabled.

    OpenFHE raises if the parameters do not reach the requested security level.
    """
    params = ofhe.CCParamsCKKSRNS()
    params.SetSecurityLevel(_SECURITY[p.security])
    params.SetRingDim(p.ring_dim)
    params.SetBatchSize(p.slots)
    params.SetScalingModSize(p.scaling_bits)
    params.SetFirstModSize(p.first_mod_bits)
    params.SetNumLargeDigits(p.dnum)
    params.SetMultiplicativeDepth(p.depth)
    params.SetScalingTechnique(ofhe.FLEXIBLEAUTO)
    params.SetKeySwitchTechnique(ofhe.HYBRID)
    params.SetSecretKeyDist(_SECRET[p.secret_dist])
    try:
        cc = ofhe.GenCryptoContext(params)
    except Exception as exc:  # OpenFHE reports parameter problems as plain RuntimeError
        raise PresetError(f"OpenFHE rejected preset {p.name!r}: {exc}") from exc
    for feature in (ofhe.PKE, ofhe.KEYSWITCH, ofhe.LEVELEDSHE, ofhe.ADVANCEDSHE, ofhe.FHE):
        cc.Enable(feature)
    return cc


# ---------------------------------------------------------------- bootstrapping's rotation keys
@lru_cache(maxsize=None)
def _stored_rotations() -> dict:
    return json.loads(BOOTSTRAP_ROTATIONS.read_text())["presets"]


def bootstrap_rotations(preset) -> frozenset:
    """Rotation indices (mod slots) of the keys OpenFHE's bootstrapping key generation makes for
    ``preset``: stored for the shipped presets (measured), else measured now by generating
    bootstrapping keys once (slow at large rings; a warning says so)."""
    if not preset.bootstrap:
        return frozenset()
    if preset.name in _stored_rotations() and PRESETS.get(preset.name) == preset:
        return frozenset(_stored_rotations()[preset.name]["rotations"])
    warnings.warn(f"preset {preset.name!r} is not a shipped preset: generating its bootstrapping keys "
                  "once to learn their rotation indices", stacklevel=3)
    return _measured_rotations(preset)


def bootstrap_automorphism_count(preset) -> int:
    """Automorphism keys OpenFHE's bootstrapping key generation makes for a shipped preset (0 if
    not recorded): what ``ckksnet plan`` counts into the key memory."""
    return len(_stored_rotations().get(preset.name, {}).get("automorphisms", []))


@lru_cache(maxsize=8)
def _measured_rotations(preset) -> frozenset:
    from ckksnet.backend.context import CkksClient  # the context module imports this one

    client = CkksClient(preset)
    client.gen_bootstrap_keys()
    return frozenset(client.rotations)
