"""Helpers shared by tests (and the benchmarks that build the same random models)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ckksnet.data import Split


def random_bn(bn: nn.BatchNorm2d | nn.BatchNorm1d, gen: torch.Generator):
    """Random BatchNorm statistics and affine parameters from ``gen`` (means ~0.2 N(0,1), variances
    in [0.5, 1.5), scales in [0.5, 1.5), shifts ~0.1 N(0,1)), so that folding is exercised; eval mode."""
    bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.2)
    bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
    bn.weight.data.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
    bn.bias.data.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
    return bn.eval()


def random_batchnorms(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """:func:`random_bn` on every BatchNorm with running statistics, in module order; eval mode."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.running_mean is not None:
            random_bn(m, gen)
    return model.eval()


def deep_plain_cnn(layers: int = 48, channels: int = 8) -> nn.Sequential:
    """A plain (no skip connections) CNN: ``layers`` x (3x3 conv without bias, BatchNorm, ReLU),
    global average pooling and a Linear to 10 classes; the architecture of the trained fixture
    ``tests/data/deep_plain_48x8.pt`` (made by ``tests/data/make_deep_plain.py``)."""
    blocks, c = [], 3
    for _ in range(layers):
        blocks += [nn.Conv2d(c, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        c = channels
    blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]
    return nn.Sequential(*blocks)


def synthetic_split(n: int, seed: int = 0) -> Split:
    """Two easy classes of 32x32 images: bright vs dark, with noise (training tests)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    base = np.where(labels[:, None, None, None] == 1, 170, 70)
    images = np.clip(base + rng.normal(0, 30, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return Split(images, labels.astype(np.int64), ("dark", "bright"), "synthetic")
