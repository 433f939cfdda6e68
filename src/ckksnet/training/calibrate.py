"""Calibration: how large each ReLU's input gets on real images.

For every ``nn.ReLU`` module the compiler needs a bound B with |x| <= B at that point; this
records the maximum |x| and a high percentile of |x| over a set of (un-augmented) images.
The percentile is exact: a running top-k of |x| keeps the k largest values, k = ceil(n (1-q)).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from ckksnet.training.train import to_tensor


class _TopK:
    """Streaming exact upper quantile of |x| for a known total count."""

    def __init__(self, total: int, q: float):
        self.k = max(1, math.ceil(total * (1 - q)))
        self.values = torch.empty(0)
        self.max = 0.0

    def add(self, x: torch.Tensor) -> None:
        a = x.detach().abs().flatten().float()
        self.max = max(self.max, float(a.max()))
        merged = torch.cat([self.values, a])
        self.values = torch.topk(merged, min(self.k, len(merged))).values


@torch.no_grad()
def calibrate(model: nn.Module, images: np.ndarray, q: float = 0.9999, batch_size: int = 250,
              types: tuple[type, ...] = (nn.ReLU,)) -> dict[str, dict]:
    """Per activation module name (modules of ``types``): ``{"max_abs", "percentile", "q",
    "count"}`` of its input over ``images``.

    ``images``: uint8 NHWC. The percentile is the ``q`` quantile of |x| (nearest-rank, upper).
    """
    model.eval()
    relus = {name: m for name, m in model.named_modules() if isinstance(m, types)}
    shapes: dict[str, tuple] = {}

    def record_shape(name: str):
        def hook(mod, inp):
            shapes[name] = tuple(inp[0].shape[1:])  # returns None: the input is left unchanged
        return hook

    hooks = [m.register_forward_pre_hook(record_shape(name)) for name, m in relus.items()]
    model(to_tensor(images[:1]))
    for h in hooks:
        h.remove()
    n = len(images)
    stats = {name: _TopK(n * int(np.prod(shapes[name])), q) for name in relus}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=name: stats[n].add(inp[0]) and None)
             for name, m in relus.items()]
    try:
        for i in range(0, n, batch_size):
            model(to_tensor(images[i:i + batch_size]))
    finally:
        for h in hooks:
            h.remove()
    return {name: {"max_abs": s.max, "percentile": float(s.values[-1]), "q": q,
                   "count": n * int(np.prod(shapes[name]))} for name, s in stats.items()}
