"""Checkpoint -> compiled plan: the one road every command takes (plan, compile, infer, demo,
fidelity, the benchmarks).

:class:`SignTables` is the typed form of ``--alpha``, ``--eps-bits`` and ``--relu-sign``;
:func:`compile_checkpoint` loads a checkpoint (the bundled ResNet-20 by default), compiles it
with the ReLU calibration stored in it and returns the plan with the model and its metadata.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ckksnet.compiler.phases import compile_model, relu_overrides
from ckksnet.core.plan import Plan


@dataclass(frozen=True)
class SignTables:
    """The minimax sign table of every ReLU: ``alpha`` (precision bits) and ``eps_bits`` by
    default, and ``relu_sign``: [(glob over ReLU step names, (alpha, eps_bits))], later entries
    winning (``--relu-sign 'layers.*.relu1=10/7'``)."""

    alpha: int = 13
    eps_bits: int = 9
    relu_sign: list = field(default_factory=list)

    def compile_kwargs(self, relu_names) -> dict:
        """Keyword arguments of :func:`ckksnet.compile` for ReLUs named ``relu_names``; raises
        :class:`ckksnet.errors.CompileError` for a pattern matching none of them."""
        return {"alpha": self.alpha, "eps_bits": self.eps_bits,
                "relu_alpha": relu_overrides(list(self.relu_sign), relu_names)}


def load_model(checkpoint: str | None = None):
    """(model, metadata) of a checkpoint folder, or of the bundled ResNet-20 for None."""
    from ckksnet.models import load_bundled, load_checkpoint

    return load_checkpoint(checkpoint) if checkpoint else load_bundled()


def compile_checkpoint(checkpoint: str | None = None, preset: str = "secure",
                       signs: SignTables = SignTables(), **options) -> tuple[Plan, object, dict]:
    """Compile a checkpoint with its stored ReLU calibration; returns (plan, model, metadata).
    ``options``: further :func:`ckksnet.compile` arguments (``image_size``, ``margin``, ...).
    Raises the checkpoint's :class:`ckksnet.errors.DataError` kinds and :class:`CompileError`."""
    model, meta = load_model(checkpoint)
    relus = meta["calibration"]["relus"]
    plan = compile_model(model, calibration=relus, preset=preset, **signs.compile_kwargs(relus), **options)
    return plan, model, meta
