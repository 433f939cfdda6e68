"""Compile options, typed: what the CLI and :func:`ckksnet.compile` hand to the compiler's phases
and what each kernel's ``finalize`` reads.

A plan records them as a plain dict (:meth:`CompileOptions.record`, only the options that were
set), so a plan file's bytes and identity do not depend on this class.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SignTable = tuple  #: (alpha, eps_bits): a minimax composite sign table, see ckksnet.approx


@dataclass(frozen=True)
class CompileOptions:
    """``alpha`` / ``eps_bits``: the sign table of every ReLU (precision alpha bits, sign accurate
    beyond 2^-eps_bits); ``relu_alpha``: per ReLU step name, alpha or (alpha, eps_bits);
    ``margin``: each ReLU's bound B = margin x its calibrated max |input|; ``relu_extension``:
    domain extension L (>= 1); ``lanes`` / ``pooled_dense``: force a linear-map form (None: where
    the schedule's estimate says it pays)."""

    alpha: int = 13
    eps_bits: int = 9
    lanes: bool | None = None
    pooled_dense: bool | None = None
    relu_alpha: dict = field(default_factory=dict)
    margin: float = 1.5
    relu_extension: float = 1.0

    def sign_table(self, relu_name: str) -> SignTable:
        """(alpha, eps_bits) of one ReLU: its own entry in ``relu_alpha``, else the default."""
        alpha = self.relu_alpha.get(relu_name, self.alpha)
        if isinstance(alpha, (tuple, list)):
            return int(alpha[0]), int(alpha[1])
        return int(alpha), int(self.eps_bits)

    def record(self) -> dict:
        """The options a plan stores: every one that is set (not None), as plain values."""
        out = {"alpha": self.alpha, "eps_bits": self.eps_bits, "lanes": self.lanes,
               "pooled_dense": self.pooled_dense, "relu_alpha": dict(self.relu_alpha), "margin": self.margin,
               "relu_extension": float(self.relu_extension)}
        return {k: v for k, v in out.items() if v is not None}
