"""Small torch modules that encrypted inference understands and that any model may use.

``Normalize`` is the input normalization (its constants become the client's preprocessing);
``PadShortcut`` is the option-A ResNet shortcut (a fixed linear map). The compiler knows these
modules, not any model file.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# Per-channel statistics of the CIFAR-10 training images (RGB, pixel/255).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """(x - mean) / std per channel; the constants are buffers, so they travel with the state dict."""

    def __init__(self, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every ``stride``-th pixel and zero-pad channels to ``out_ch``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        pad = self.out_ch - self.in_ch
        return F.pad(x, (0, 0, 0, 0, pad // 2, pad - pad // 2))


class PolyAct(nn.Module):
    """A trainable polynomial activation, for use wherever ``nn.ReLU`` would go:

        y = sum_k coefficients[k] (x / bound)^k,   k = 0 .. degree (2, 3 or 4)

    ``coefficients`` (degree + 1 values) is an ``nn.Parameter`` in the power basis of the input
    normalised by ``bound``, its input bound B (a buffer: it travels with the state dict; the
    boundary loss of :mod:`ckksnet.training.poly` keeps |x| <= B). Default: the least-squares fit
    of ReLU on [-B, B] (:meth:`from_relu`). The compiler calibrates its input range like a
    ReLU's and evaluates it encrypted in ``ceil(log2 degree) + 1`` levels at most
    (:class:`ckksnet.kernels.poly.PolyStep`); the polynomial itself is exact at any input, but
    an input beyond the calibrated bound may break bootstrapping (the twin reports it).
    """

    def __init__(self, degree: int = 2, bound: float = 1.0, coefficients=None):
        super().__init__()
        from ckksnet.approx.poly import check_degree, relu_fit

        self.degree = check_degree(degree)
        if coefficients is None:
            coefficients = relu_fit(bound, self.degree)
        c = torch.as_tensor(coefficients, dtype=torch.float32).detach().clone().reshape(-1)
        if c.numel() != self.degree + 1:
            raise ValueError(f"a degree-{self.degree} PolyAct has {self.degree + 1} coefficients, got {c.numel()}")
        self.coefficients = nn.Parameter(c)
        relu_fit(bound, self.degree)  # checks the bound
        self.register_buffer("bound", torch.tensor(float(bound), dtype=torch.float32))
        # Training only (ckksnet train --ramp-epochs): in train mode, while ``blending``, the output
        # is p(x) + m (ReLU(x) - p(x)), m = ``relu_mix`` falling from 1 to 0, so a network whose
        # ReLUs were just replaced never sees its untrained polynomials at full weight. Not saved;
        # eval mode and the compiler always see the polynomial alone.
        self.register_buffer("relu_mix", torch.zeros(()), persistent=False)
        self.blending = False
        # Training only (--train-clamp-epochs): in train mode the polynomial reads its input clipped to
        # [-B, B], so that one input far beyond the bound cannot blow up every layer after it
        # while the weights still adapt; the boundary loss pulls such inputs back inside.
        self.clamp_in_training = False

    @classmethod
    def from_relu(cls, bound: float, degree: int = 2) -> "PolyAct":
        """The least-squares polynomial of ReLU on [-bound, bound] (see :mod:`ckksnet.approx.poly`)."""
        return cls(degree, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x / self.bound
        if self.clamp_in_training and self.training:
            t = t.clamp(-1.0, 1.0)
        c = self.coefficients
        y = c[self.degree] * t + c[self.degree - 1]
        for k in range(self.degree - 2, -1, -1):
            y = y * t + c[k]
        if self.blending and self.training:
            y = y + self.relu_mix * (torch.relu(x) - y)
        return y

    def extra_repr(self) -> str:
        return f"degree={self.degree}, bound={float(self.bound):.4g}"
