"""Residual addition of two values with the same layout and scale: no level."""
from __future__ import annotations

from dataclasses import dataclass

from ckksnet.kernels.base import Kernel


@dataclass
class AddStep(Kernel):
    name: str
    kind = "add"
    shares_scale = True

    def evaluate(self, ev, inputs, refresh):
        return ev.add(inputs[0], inputs[1])
