"""Calibration: how large each ReLU's input gets on real images.

For every ReLU (module, ``F.relu``, ``torch.relu``, ``x.relu()``, ...) the compiler needs a bound
B with |x| <= B at that point; this records the maximum |x| and a high percentile of |x| over a
set of (un-augmented) images, by running the model's torch.fx graph (the graph the compiler
lowers) and watching each activation node's input, keyed by the step name it gets in the plan.
The percentile is exact: a running top-k of |x| keeps the k largest values, k = ceil(n (1-q)).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from ckksnet.compiler.graph import activation_nodes, trace
from ckksnet.compiler.user_checks import calibration_batch
from ckksnet.errors import InputError
from ckksnet.inputs import _to_array, as_images


class _TopK:
    """Streaming exact upper quantile of |x| for a known total count."""

    def __init__(self, total: int, q: float):
        self.count = total
        self.k = max(1, math.ceil(total * (1 - q)))
        self.values = torch.empty(0)
        self.max = 0.0

    def add(self, x: torch.Tensor) -> None:
        a = x.detach().abs().flatten().float()
        self.max = max(self.max, float(a.max()))
        merged = torch.cat([self.values, a])
        self.values = torch.topk(merged, min(self.k, len(merged))).values


def _pixels(images, image_shape: tuple | None) -> tuple[object, tuple]:
    """The images and their (C, H, W): uint8 NHWC (values 0..255) or float NCHW in [0, 1], the
    forms ``plan.twin`` and ``client.encrypt`` accept (checked by :func:`ckksnet.inputs.as_images`)."""
    arr = _to_array(images)
    if image_shape is None:
        if arr.ndim != 4:
            raise InputError(f"calibration images must be a batch: uint8 (N, H, W, C) or float (N, C, H, W), "
                             f"got shape {arr.shape}")
        image_shape = (arr.shape[3],) + arr.shape[1:3] if arr.dtype == np.uint8 else arr.shape[1:]
    image_shape = tuple(int(v) for v in image_shape)
    return calibration_batch(arr, image_shape), image_shape  # one image: a batch of one


def _batch(arr, image_shape: tuple, mean=None, std=None) -> torch.Tensor:
    x, _ = as_images(arr, *image_shape)
    if mean is not None or std is not None:
        c = image_shape[0]
        m = np.broadcast_to(np.asarray(0.0 if mean is None else mean, dtype=np.float64).ravel(), (c,))
        s = np.broadcast_to(np.asarray(1.0 if std is None else std, dtype=np.float64).ravel(), (c,))
        x = (x - m[None, :, None, None]) / s[None, :, None, None]
    return torch.from_numpy(x.astype(np.float32))


class _Recorder(fx.Interpreter):
    """Runs the traced model and feeds each watched node's input to its statistics."""

    def __init__(self, gm, watch: dict[str, str], stats: dict, images: int, q: float):
        super().__init__(gm)
        self.watch, self.stats, self.images, self.q = watch, stats, images, q

    def run_node(self, n):
        if n.name in self.watch:
            args, _ = self.fetch_args_kwargs_from_env(n)
            x = args[0]
            name = self.watch[n.name]
            if name not in self.stats:
                self.stats[name] = _TopK(self.images * int(x[0].numel()), self.q)
            self.stats[name].add(x)
        return super().run_node(n)


@torch.no_grad()
def calibrate(model: nn.Module, images, q: float = 0.9999, batch_size: int = 250,
              types: tuple | None = None, image_shape: tuple | None = None, mean=None,
              std=None) -> dict[str, dict]:
    """Per activation step (every node whose kernel is registered as an activation: ReLU modules,
    ``F.relu``, ``torch.relu``, ``x.relu()``, ...): ``{"max_abs", "percentile", "q", "count"}``
    of its input over ``images``.

    Keys are the step names the compiler gives (:func:`ckksnet.compiler.graph.step_names`):
    a module's name for a module called once (as stored in checkpoint metadata), ``name@k`` for
    the k-th call of a module called several times, the torch.fx node name for a function or
    method. ``images``: uint8 NHWC (0..255) or float NCHW in [0, 1]; ``image_shape`` (C, H, W)
    checks them. ``mean`` / ``std``: the normalisation a data pipeline applies before the model
    (for a model without a Normalize module; as ``compile(..., mean=, std=)``), else none.
    ``types``: only these registry keys (default: every activation). The
    percentile is the ``q`` quantile of |x| (nearest-rank, upper). The model's training modes
    are left as they were.
    """
    arr, image_shape = _pixels(images, image_shape)
    n = len(arr)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        graph = trace(model)
        watch = activation_nodes(graph, dict(model.named_modules()), types)
        stats: dict[str, _TopK] = {}
        recorder = _Recorder(fx.GraphModule(model, graph), watch, stats, n, q)
        for i in range(0, n, batch_size):
            recorder.run(_batch(arr[i:i + batch_size], image_shape, mean, std))
    finally:
        for m, training in modes.items():
            m.training = training
    return {name: {"max_abs": s.max, "percentile": float(s.values[-1]), "q": q, "count": s.count}
            for name, s in stats.items()}
