"""The OpenFHE crypto context built from a :class:`~ckksnet.core.preset.Preset` (the presets
themselves are numbers, in :mod:`ckksnet.core.preset`)."""
from __future__ import annotations

from ckksnet.backend.ofhe import openfhe as ofhe

from ckksnet.core.preset import Preset
from ckksnet.errors import PresetError

_SECURITY = {"HEStd_128_classic": ofhe.HEStd_128_classic, "HEStd_NotSet": ofhe.HEStd_NotSet}
_SECRET = {"SPARSE_ENCAPSULATED": ofhe.SPARSE_ENCAPSULATED, "SPARSE_TERNARY": ofhe.SPARSE_TERNARY,
           "UNIFORM_TERNARY": ofhe.UNIFORM_TERNARY}


def openfhe_bootstrap_depth(level_budget: tuple[int, int], secret_dist: str) -> int:
    """OpenFHE's own figure for the levels one bootstrap consumes (checks the formula the
    presets use, :func:`ckksnet.core.preset._bootstrap_depth`)."""
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
