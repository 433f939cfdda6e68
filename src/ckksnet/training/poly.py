"""Polynomial-aware training (issue 37): the bundled ResNet family with :class:`ckksnet.nn.PolyAct`
activations, initialised from a trained ReLU checkpoint, and what keeps its training stable.

* :func:`build_student`: the model a :class:`~ckksnet.training.train.TrainConfig` asks for:
  ``activation`` "relu" (the plain ResNet) or "poly2" / "poly3" / "poly4"; with ``init_from`` a
  ReLU checkpoint whose weights it starts from, each ReLU replaced by its least-squares
  polynomial on [-B, B], B = that ReLU's calibrated max |input| (the checkpoint's calibration,
  times ``init_margin``) (:func:`init_from_relu`);
* :class:`ActivationMonitor`: forward hooks on every PolyAct recording its input's peak
  |x| / B and the **boundary loss** sum_layers mean(relu(|x| / B - 1)^2) (arXiv 2505.11589:
  inputs beyond the bound are where a polynomial stops looking like the activation it replaced,
  and where encrypted bootstrapping breaks);
* :func:`check_divergence`: before a step's backward pass, a non-finite loss or an activation
  input beyond ``diverge_ratio`` x its bound stops training with :class:`DivergenceError`
  naming the first such layer in forward order (the weights are never updated with NaN);
* gradient clipping by global norm (``clip_grad``), in :func:`after_backward`.

Distillation from a ReLU teacher is the ReLU path's (``--teacher``, ``--kd-weight``).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from ckksnet.errors import CkksnetError, DataError
from ckksnet.models import load_checkpoint
from ckksnet.models.checkpoint import load_bundled
from ckksnet.models.poly import activation_degree, relu_names, to_polynomial
from ckksnet.models.resnet import ResNetCifar
from ckksnet.nn import PolyAct


class DivergenceError(CkksnetError):
    """Training diverged: an activation's input became non-finite or left its bound far behind."""


def build_student(cfg, classes: int) -> nn.Module:
    """The model ``cfg`` trains (see the module doc)."""
    degree = activation_degree(getattr(cfg, "activation", "relu"))
    init = getattr(cfg, "init_from", None)
    if init:
        if degree is None:
            raise DataError("--init-from replaces a ReLU checkpoint's activations by polynomials: give "
                            "--activation poly2, poly3 or poly4 too")
        model = init_from_relu(init, degree, getattr(cfg, "init_margin", 1.0))
        if model.config["num_classes"] != classes or model.config["blocks"] != cfg.blocks or \
                tuple(model.config["widths"]) != tuple(cfg.widths):
            raise DataError(f"{init}: the checkpoint is a ResNet with {model.config['blocks']} blocks per stage, "
                            f"widths {model.config['widths']} and {model.config['num_classes']} classes; the run "
                            f"asks for {cfg.blocks}, {list(cfg.widths)} and {classes} (give the same --blocks and --widths)")
        return model
    model = ResNetCifar(cfg.blocks, tuple(cfg.widths), classes)
    if degree is not None:
        to_polynomial(model, degree)
    return model


def init_from_relu(checkpoint, degree: int, margin: float = 1.0) -> nn.Module:
    """A ReLU checkpoint's model with each ReLU replaced by its least-squares polynomial of
    ``degree`` on [-B, B], B = ``margin`` x the ReLU's calibrated max |input| (from the
    checkpoint's calibration; DataError if it has none for a ReLU)."""
    bundled = str(checkpoint) == "bundled" and not Path(checkpoint).exists()
    model, meta = load_bundled() if bundled else load_checkpoint(checkpoint)
    if model.config.get("activation", "relu") != "relu":
        raise DataError(f"{checkpoint}: holds {model.config['activation']} activations already; --init-from takes "
                        "a ReLU checkpoint")
    relus = (meta.get("calibration") or {}).get("relus", {})
    missing = [n for n in relu_names(model) if n not in relus]
    if missing:
        raise DataError(f"{checkpoint}: no calibrated range for ReLU(s) {missing[:5]}: calibrate the checkpoint "
                        "first (ckksnet snapshot / export write one)")
    bounds = {n: margin * float(relus[n]["max_abs"]) for n in relu_names(model)}
    to_polynomial(model, degree, bounds)
    return model


class ActivationMonitor:
    """Forward hooks on every PolyAct of ``model``: per forward pass, ``penalties`` (layer name ->
    mean(relu(|x| / B - 1)^2), a differentiable tensor) and ``peaks`` (layer name -> max |x| / B,
    detached), in forward order. :meth:`boundary_loss` sums the penalties."""

    def __init__(self, model: nn.Module):
        self.penalties: dict[str, torch.Tensor] = {}
        self.peaks: dict[str, torch.Tensor] = {}
        self.handles = []
        for name, m in model.named_modules():
            if isinstance(m, PolyAct):
                self.handles.append(m.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0]
            ratio = x.float().abs() / module.bound
            self.penalties[name] = torch.relu(ratio - 1).pow(2).mean()
            self.peaks[name] = ratio.detach().amax()
        return hook

    def __bool__(self) -> bool:
        return bool(self.handles)

    def clear(self) -> None:
        self.penalties.clear()
        self.peaks.clear()

    def boundary_loss(self) -> torch.Tensor:
        if not self.penalties:
            return torch.zeros(())
        return torch.stack(list(self.penalties.values())).sum()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def boundary_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The boundary loss of ``model`` on the batch ``x`` (one forward pass; see the module doc)."""
    monitor = ActivationMonitor(model)
    try:
        model(x)
        return monitor.boundary_loss()
    finally:
        monitor.remove()


def check_divergence(monitor: ActivationMonitor, loss: torch.Tensor, limit: float) -> None:
    """DivergenceError naming the first PolyAct (forward order) whose input is non-finite or
    beyond ``limit`` x its bound, or saying the loss is not finite; one host sync."""
    peaks = {k: float(v) for k, v in monitor.peaks.items()}
    for name, peak in peaks.items():
        if not math.isfinite(peak) or peak > limit:
            what = "is not finite" if not math.isfinite(peak) else f"reached {peak:.3g} x its bound"
            raise DivergenceError(f"training diverged at activation {name!r}: its input {what} (limit {limit:g} x; "
                                  "stopped before the weights were updated). Lower --lr, raise --boundary-weight, "
                                  "or clip gradients (--clip-grad)")
    if not math.isfinite(float(loss.detach())):
        raise DivergenceError("training diverged: the loss is not finite (no activation input passed its limit); "
                              "lower --lr or clip gradients (--clip-grad)")


def after_backward(model: nn.Module, clip_grad: float) -> None:
    """Clip the gradients' global norm to ``clip_grad`` (0: off)."""
    if clip_grad and clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, images, batch_size: int = 250) -> nn.Module:
    """Recompute every BatchNorm's running statistics on ``images`` (uint8 NHWC), the model's
    other weights unchanged: after the ReLUs of a trained model are replaced by polynomials, the
    statistics the convolutions after them see change, and their batch norms should follow
    (otherwise activations drift layer after layer). Returns the model in eval mode."""
    def to_tensor(a):  # uint8 NHWC -> float NCHW in [0, 1] (as training.train.to_tensor)
        return torch.from_numpy(a).permute(0, 3, 1, 2).float().div_(255)

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    try:
        for i in range(0, len(images), batch_size):
            model(to_tensor(images[i:i + batch_size]))
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()
    return model
