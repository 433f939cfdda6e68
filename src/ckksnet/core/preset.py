"""The CKKS parameter sets: the :class:`Preset` dataclass (numbers only) and the shipped presets.

``secure`` (the default) is 128-bit (``HEStd_128_classic``) at N = 2^16. ``test`` is an
explicitly insecure small ring for the test suite: it is only returned when asked for by
name, and warns every time it is created. See ``benchmarks/RESULTS.md`` for the parameter
study behind ``secure``. Pure Python: the compiler plans against a preset without OpenFHE;
:func:`ckksnet.backend.presets.build_crypto_context` makes the OpenFHE context from one.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace

from ckksnet.errors import PresetError

SECURITY_LEVELS = ("HEStd_128_classic", "HEStd_NotSet")
SECRET_DISTRIBUTIONS = ("SPARSE_ENCAPSULATED", "SPARSE_TERNARY", "UNIFORM_TERNARY")


class InsecurePresetWarning(UserWarning):
    """A preset without 128-bit security was created."""


@dataclass(frozen=True)
class Preset:
    """Every parameter of a CKKS context.

    ring_dim: N; slots: values per ciphertext (<= N/2); scaling_bits / first_mod_bits: log2 of
    the scaling factor and of the first modulus q0; dnum: key-switching digits; depth: total
    multiplicative depth (levels) of a fresh ciphertext; level_budget: levels for the
    CoeffsToSlots / SlotsToCoeffs steps of bootstrapping; bootstrap_iterations: 2 for iterated
    (Meta-BTS) bootstrapping; max_abs: largest |value| accepted for encryption, since
    OpenFHE's bootstrapping approximates x mod q0 accurately only for |x| <= 1.
    """

    name: str
    ring_dim: int
    slots: int
    scaling_bits: int
    first_mod_bits: int
    dnum: int
    depth: int
    level_budget: tuple[int, int] = (3, 3)
    secret_dist: str = "SPARSE_ENCAPSULATED"
    security: str = "HEStd_128_classic"
    bootstrap: bool = True
    bootstrap_iterations: int = 1
    bootstrap_precision: int = 0  # first-pass precision (bits) hint for iterated bootstrapping
    max_abs: float = 1.0
    notes: str = field(default="", compare=False)

    @property
    def secure(self) -> bool:
        """True when OpenFHE enforces 128-bit classical security for these parameters."""
        return self.security == "HEStd_128_classic"

    @property
    def bootstrap_depth(self) -> int:
        """Levels consumed by one bootstrap (0 without bootstrapping)."""
        if not self.bootstrap:
            return 0
        extra = 1 if self.bootstrap_iterations > 1 else 0  # the scalar step of Meta-BTS
        return _bootstrap_depth(self.level_budget, self.secret_dist) + extra

    @property
    def levels_after_bootstrap(self) -> int:
        """Levels a ciphertext has left right after a bootstrap. A computation that is to be
        bootstrapped again can spend one less: OpenFHE cannot bootstrap a spent ciphertext."""
        return self.depth - self.bootstrap_depth if self.bootstrap else self.depth

    def describe(self) -> dict:
        """All parameters plus derived figures, JSON-ready."""
        return {**asdict(self), "levels_after_bootstrap": self.levels_after_bootstrap,
                "bootstrap_depth": self.bootstrap_depth, "secure": self.secure}

    def with_(self, **changes) -> "Preset":
        """A copy with some parameters changed (for parameter studies)."""
        return replace(self, **changes)


def _bootstrap_depth(level_budget: tuple[int, int], secret_dist: str) -> int:
    # OpenFHE 1.6.1's CKKS bootstrapping depth (GetBootstrapDepth): the two linear transforms'
    # budgets plus the modular reduction's polynomial, which is 4 levels deeper for a uniform
    # secret (larger coefficients). Checked against OpenFHE for budgets 1..5 in
    # tests/test_backend.py, so the compiler needs no OpenFHE to plan.
    return int(level_budget[0]) + int(level_budget[1]) + (14 if secret_dist == "UNIFORM_TERNARY" else 10)


SECURE = Preset(
    name="secure", ring_dim=1 << 16, slots=1 << 14, scaling_bits=57, first_mod_bits=60, dnum=4,
    depth=23, level_budget=(3, 3), secret_dist="SPARSE_ENCAPSULATED",
    notes="128-bit; 7 levels and 16.4 bits after a bootstrap; see benchmarks/RESULTS.md",
)

TEST = Preset(
    name="test", ring_dim=1 << 12, slots=1 << 11, scaling_bits=59, first_mod_bits=60, dnum=3,
    depth=26, level_budget=(3, 3), secret_dist="SPARSE_ENCAPSULATED", security="HEStd_NotSet",
    notes="INSECURE: small ring for tests only",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (SECURE, TEST)}


def get_preset(preset: "str | Preset" = "secure") -> Preset:
    """Look up a preset by name (or pass one through). Insecure presets warn every time
    (InsecurePresetWarning; the CLI prints it once per command)."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise PresetError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    _validate(preset)
    if not preset.secure:
        warnings.warn(f"CKKS preset {preset.name!r} is NOT secure ({preset.security}, "
                      f"N={preset.ring_dim}); use it for tests only", InsecurePresetWarning,
                      stacklevel=2)
    return preset


def _validate(p: Preset) -> None:
    if p.security not in SECURITY_LEVELS:
        raise PresetError(f"security {p.security!r} unknown; known: {', '.join(SECURITY_LEVELS)}")
    if p.secret_dist not in SECRET_DISTRIBUTIONS:
        raise PresetError(f"secret distribution {p.secret_dist!r} unknown; known: {', '.join(SECRET_DISTRIBUTIONS)}")
    if p.ring_dim & (p.ring_dim - 1) or p.slots & (p.slots - 1) or not 0 < p.slots <= p.ring_dim // 2:
        raise PresetError(f"ring_dim ({p.ring_dim}) and slots ({p.slots}) must be powers of two, "
                          "slots <= ring_dim / 2")
    if p.bootstrap and p.levels_after_bootstrap < 1:
        raise PresetError(f"preset {p.name!r}: depth {p.depth} leaves no level after a bootstrap "
                          f"(which takes {p.bootstrap_depth})")
