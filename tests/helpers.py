"""Helpers shared by tests (and the benchmarks that build the same random models)."""
from __future__ import annotations

import torch
import torch.nn as nn


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
