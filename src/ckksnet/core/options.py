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
    """How the compiler approximates and which linear-map forms it may use; each option is
    documented on its field. :func:`ckksnet.compile` takes them as keyword arguments of the
    same names."""

    #: the sign table of every ReLU (minimax composite, :mod:`ckksnet.approx`): precision
    #: ``alpha`` bits (13, with eps_bits 9: degrees 15/15/27, 14 levels) ...
    alpha: int = 13
    #: ... the sign accurate beyond 2^-eps_bits (relative to the bound B)
    eps_bits: int = 9
    #: evaluate folded linear maps in lanes (:mod:`ckksnet.kernels.linear`): lanes save products but
    #: spend a level, which can cost a bootstrap. None: wherever the whole schedule's estimated
    #: time says it pays (:func:`ckksnet.core.schedule.optimise_variants`); True: wherever
    #: possible; False: never
    lanes: bool | None = None
    #: a Linear after global pooling as masks and one box sum (:mod:`ckksnet.kernels.pooled_dense`).
    #: None: where it pays; True: wherever its output windows fit; False: never
    pooled_dense: bool | None = None
    #: per ReLU step name, its own sign table: alpha, or (alpha, eps_bits); the others use
    #: ``alpha`` / ``eps_bits``. Step names: the module's name, the torch.fx node name for
    #: ``F.relu`` and its kin (:func:`ckksnet.compiler.graph.step_names`)
    relu_alpha: dict = field(default_factory=dict)
    #: each activation's bound B = margin x its calibrated max |input|. 1.5: on the CIFAR-10
    #: test split one ReLU of the bundled model reaches 1.33 x its max over the calibration
    #: images, and outside [-B, B] the polynomial diverges
    margin: float = 1.5
    #: domain extension L >= 1 (1: off): every ReLU stays accurate up to L B instead of B
    #: (:mod:`ckksnet.kernels.relu`), for about ceil(log2 L) more levels per ReLU
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
