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
