"""Polynomial-aware training (issue 37): the bundled ResNet family with :class:`ckksnet.nn.PolyAct`
activations, initialised from a trained ReLU checkpoint, and what keeps its training stable.

* :func:`build_student`: the model a :class:`~ckksnet.training.train.TrainConfig` asks for:
  ``activation`` "relu" (the plain ResNet) or "poly2" / "poly3" / "poly4"; with ``init_from`` a
  ReLU checkpoint whose weights it starts from, each ReLU replaced by its least-squares
  polynomial with bound B = that ReLU's calibrated max |input| (the checkpoint's calibration,
  times ``init_margin``), fitted on [-B, B] or on the inputs the ReLU sees on training images
  (``init_fit`` "data", :func:`data_fits`) (:func:`init_from_relu`);
* :class:`ActivationMonitor`: forward hooks on every PolyAct recording its input's peak
  |x| / B and the **boundary loss** sum_layers mean(relu(|x| / B - 1)^2) (arXiv 2505.11589:
  with ``boundary_reduce`` "max" the mean is over each image's largest excess instead: a mean
  over all inputs gives a rare outlier a gradient a million times smaller, and rare outliers are
  what blow a polynomial network up;
  inputs beyond the bound are where a polynomial stops looking like the activation it replaced,
  and where encrypted bootstrapping breaks);
* :func:`check_divergence`: before a step's backward pass, a non-finite loss or an activation
  input beyond ``diverge_ratio`` x its bound stops training with :class:`DivergenceError`
  naming the first such layer in forward order (the weights are never updated with NaN);
* gradient clipping by global norm (``clip_grad``), in :func:`after_backward`;
* a **ramp** (``ramp_epochs``, :func:`ramp_mix`, :func:`set_relu_mix`): each activation blends
  ReLU into its polynomial, ReLU's share falling from 1 to 0 over the first epochs. Replacing
  all 19 ReLUs of ResNet-20 at once leaves the network at chance accuracy (each replaced layer
  costs a few points, and the errors compound); the ramp lets the weights follow the change;
* a **training clamp** (``train_clamp_epochs``, :func:`set_train_clamp`): for the first epochs
  each polynomial reads its input clipped to its bound in training, so one outlier cannot blow
  the whole batch up (without it the ramp's end diverged to NaN). Evaluation and the compiler
  never clip, so the clamp must end: kept on, the clipped network trained well (89.5% on its
  training batches) while the unclipped one fell from 87.6% to 40.5% of the test split in one
  epoch, its rare inputs beyond the bound growing quadratically layer after layer. After it,
  training sees what inference computes and the boundary loss keeps the inputs inside.

Distillation from a ReLU teacher is the ReLU path's (``--teacher``, ``--kd-weight``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from ckksnet.errors import CkksnetError, DataError
from ckksnet.models import load_checkpoint
from ckksnet.models.poly import activation_degree, relu_names, to_polynomial
from ckksnet.models.resnet import ResNetCifar
from ckksnet.nn import PolyAct


class DivergenceError(CkksnetError):
    """Training diverged: an activation's input became non-finite or left its bound far behind."""


def build_student(cfg, classes: int, images=None) -> nn.Module:
    """The model ``cfg`` trains (see the module doc); ``images`` (uint8 NHWC training images) are
    what a data fit (``cfg.init_fit == "data"``) fits each polynomial on."""
    degree = activation_degree(getattr(cfg, "activation", "relu"))
    init = getattr(cfg, "init_from", None)
    if init:
        if degree is None:
            raise DataError("--init-from replaces a ReLU checkpoint's activations by polynomials: give "
                            "--activation poly2, poly3 or poly4 too")
        fit_on = images if getattr(cfg, "init_fit", "range") == "data" else None
        model = init_from_relu(init, degree, getattr(cfg, "init_margin", 1.0), fit_on)
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


def init_from_relu(checkpoint, degree: int, margin: float = 1.0, images=None) -> nn.Module:
    """A ReLU checkpoint's model with each ReLU replaced by a least-squares polynomial of
    ``degree`` with bound B = ``margin`` x the ReLU's calibrated max |input| (from the
    checkpoint's calibration; DataError if it has none for a ReLU). The fit is uniform on
    [-B, B], or, given ``images`` (uint8 NHWC), weighted as the ReLU's inputs fall on them
    (:func:`data_fits`): most inputs lie far inside B, where a uniform fit is poorest."""
    model, meta = load_checkpoint(checkpoint)  # a folder or a bundled name ("bundled", "resnet20")
    if model.config.get("activation", "relu") != "relu":
        raise DataError(f"{checkpoint}: holds {model.config['activation']} activations already; --init-from takes "
                        "a ReLU checkpoint")
    relus = (meta.get("calibration") or {}).get("relus", {})
    missing = [n for n in relu_names(model) if n not in relus]
    if missing:
        raise DataError(f"{checkpoint}: no calibrated range for ReLU(s) {missing[:5]}: calibrate the checkpoint "
                        "first (ckksnet snapshot / export write one)")
    bounds = {n: margin * float(relus[n]["max_abs"]) for n in relu_names(model)}
    fits = data_fits(model, images, degree, bounds) if images is not None and len(images) else None
    to_polynomial(model, degree, bounds)
    for name, w in (fits or {}).items():
        model.get_submodule(name).coefficients.data.copy_(torch.as_tensor(w, dtype=torch.float32))
    return model


@torch.no_grad()
def data_fits(model: nn.Module, images, degree: int, bounds: dict, samples: int = 20000,
              batch_size: int = 250, seed: int = 0) -> dict:
    """Per ReLU of ``model`` (name -> coefficients in x / B, B = ``bounds[name]``): the degree-
    ``degree`` polynomial closest to ReLU in least squares over the inputs that ReLU sees on
    ``images`` (uint8 NHWC; ``samples`` inputs drawn per batch and layer), i.e. weighted by the
    input distribution (as Hermite-basis fits, AESPA, Park et al. 2022, weight by a normal one)."""
    gen = torch.Generator().manual_seed(seed)
    seen: dict[str, list] = {n: [] for n in bounds}
    hooks = [model.get_submodule(n).register_forward_pre_hook(_sampler(seen[n], samples, gen)) for n in bounds]
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(images), batch_size):
            model(torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2).float().div_(255))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    fits = {}
    for name, chunks in seen.items():
        x = torch.cat(chunks).double().numpy()
        t = x / bounds[name]
        fits[name] = np.linalg.lstsq(np.stack([t ** k for k in range(degree + 1)], 1), np.maximum(x, 0),
                                     rcond=None)[0]
    return fits


def _sampler(out: list, samples: int, gen: torch.Generator):
    def hook(module, args):
        x = args[0].detach().reshape(-1)
        out.append(x[torch.randint(len(x), (min(samples, len(x)),), generator=gen)])
    return hook


def set_train_clamp(model: nn.Module, on: bool) -> None:
    """Every PolyAct of ``model`` clips its input to its bound in train mode (``on``) or not."""
    for m in model.modules():
        if isinstance(m, PolyAct):
            m.clamp_in_training = bool(on)


def set_relu_mix(model: nn.Module, mix: float) -> None:
    """Every PolyAct of ``model`` blends ``mix`` of ReLU into its output in train mode (see
    :class:`ckksnet.nn.PolyAct`); 0 ends the blending."""
    for m in model.modules():
        if isinstance(m, PolyAct):
            m.relu_mix.fill_(float(mix))
            m.blending = mix > 0


def ramp_mix(ramp_epochs: float, step: int, steps_per_epoch: int) -> float:
    """ReLU's share at ``step``: from 1 at the first step linearly to 0 after ``ramp_epochs``."""
    if ramp_epochs <= 0:
        return 0.0
    return max(0.0, 1.0 - step / (ramp_epochs * steps_per_epoch))


class ActivationMonitor:
    """Forward hooks on every PolyAct of ``model``: per forward pass, ``penalties`` (layer name ->
    mean(relu(|x| / B - 1)^2), a differentiable tensor) and ``peaks`` (layer name -> max |x| / B,
    detached), in forward order. :meth:`boundary_loss` sums the penalties."""

    def __init__(self, model: nn.Module, reduce: str = "mean"):
        if reduce not in ("mean", "max"):
            raise DataError(f"boundary loss reduction {reduce!r}: expected 'mean' or 'max'")
        self.reduce = reduce
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
            excess = torch.relu(ratio - 1)
            if self.reduce == "max" and excess.dim() > 1:  # each image's worst input: rare outliers count
                excess = excess.flatten(1).amax(1)
            self.penalties[name] = excess.pow(2).mean()
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
