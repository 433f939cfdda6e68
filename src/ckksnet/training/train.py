"""Train a CIFAR ResNet: SGD + Nesterov momentum, weight decay, warm-up + cosine schedule,
random crop (padding 4), horizontal flip and cutout; optionally knowledge distillation from a
teacher (Hinton et al. 2015: (1 - w) CE + w T^2 KL(teacher_T || student_T)). Deterministic for a
given seed on a given device, resumable per epoch.

One epoch loop serves every device. The training split is uploaded to the device once (uint8,
zero-padded); crops, flips and cutout are drawn there from a generator on that device, and loss
and accuracy are summed there, so a GPU never waits for the host inside an epoch. On a GPU the
forward and backward passes run in bf16 autocast with channels-last tensors (``amp``).

The run folder holds ``state.pt`` (model, optimizer, epoch, history), rewritten atomically after
every epoch, so an interrupted run resumes where it stopped with the same random stream.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ckksnet.core.envelope import atomic_path
from ckksnet.core.threads import affinity_cores
from ckksnet.data import Split
from ckksnet.errors import DataError, InputError
from ckksnet.models import checkpoint_folder, load_checkpoint
from ckksnet.models.resnet import ResNetCifar
from ckksnet.training.poly import (ActivationMonitor, build_student, check_divergence, ramp_mix, set_relu_mix,
                                  set_train_clamp)


@dataclass
class TrainConfig:
    """Hyper-parameters; stored in the run state and the final checkpoint's metadata."""

    epochs: int = 160
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.0
    cutout: int = 0  # side of a random square zeroed in each training image (0 = off)
    seed: int = 0
    blocks: int = 3
    widths: tuple[int, int, int] = (16, 32, 64)
    limit: int | None = None  # train on `limit` images taken from each class in turn (tests, probes)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    device: str = "cpu"  # "cuda": the whole epoch on the GPU (data, augmentation, sums)
    amp: bool = True  # on a GPU: bf16 autocast and channels-last (ignored on the CPU)
    teacher: str | None = None  # distil from this checkpoint folder or run folder (state.pt)
    kd_weight: float = 0.0  # w: weight of the distillation term (0: plain cross-entropy)
    kd_temperature: float = 4.0  # T: softmax temperature of the distillation term
    deterministic: bool = True  # on a GPU: deterministic cuDNN algorithms (False: autotuned, faster)
    graph: bool = True  # on a GPU: each full batch's forward + backward replayed from a CUDA graph
    # polynomial activations (ckksnet.training.poly): "relu", or "poly2" / "poly3" / "poly4"
    activation: str = "relu"
    init_from: str | None = None  # start from this ReLU checkpoint, each ReLU -> its least-squares polynomial
    init_margin: float = 1.0  # the polynomials' bound: this x each ReLU's calibrated max |input|
    init_fit: str = "range"  # "range": least squares on [-B, B]; "data": on the inputs of training images
    ramp_epochs: float = 0.0  # blend ReLU into each polynomial, its share 1 -> 0 over these epochs
    train_clamp_epochs: float = 0.0  # for these first epochs, each polynomial reads its input clipped to its bound
    boundary_weight: float = 0.0  # weight of the boundary loss (activation inputs beyond their bound)
    boundary_reduce: str = "mean"  # "mean" over all inputs, or "max": over each image's largest excess
    freeze_bn: bool = False  # batch norms use their running statistics in training too (not updated)
    clip_grad: float = 0.0  # clip the gradients' global norm to this (0: off)
    diverge_ratio: float = 100.0  # stop, naming the layer, when an activation input passes this x its bound


# Settings that may differ between the sessions of one resumed run (they change speed, or where
# a run stops, not what it computes until then).
_MACHINE_KEYS = ("threads", "device", "amp", "deterministic", "graph", "diverge_ratio")


def _differences(saved: dict, cfg: TrainConfig) -> str:
    """'lr 0.2 (saved) vs 0.1 (now), ...' for the recipe fields that differ."""
    now = asdict(cfg)
    saved = {**now, **saved}
    diff = [f"{k} {saved[k]} (saved) vs {now[k]} (now)" for k in now if k not in _MACHINE_KEYS and saved[k] != now[k]]
    return ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")


def same_run(saved: dict, cfg: TrainConfig) -> bool:
    """Whether a saved run's config matches ``cfg`` up to machine settings (threads, device)."""
    strip = lambda c: {k: v for k, v in c.items() if k not in _MACHINE_KEYS}  # noqa: E731
    saved = {**asdict(TrainConfig()), **saved}  # fields added since that run take their defaults
    return strip(saved) == strip(asdict(cfg))


def augment(padded: torch.Tensor, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 32x32 crops of zero-padded uint8 NHWC images plus random flips -> float NCHW in [0, 1].
    Runs where ``padded`` and ``gen`` live (CPU or GPU): no host round trip on a GPU."""
    b = len(idx)
    size = padded.shape[1] - 8
    dev = padded.device
    oy = torch.randint(0, 9, (b,), generator=gen, device=dev)
    ox = torch.randint(0, 9, (b,), generator=gen, device=dev)
    flip = torch.rand(b, generator=gen, device=dev) < 0.5
    ar = torch.arange(size, device=dev)
    rows = (oy[:, None] + ar)[:, :, None]
    cols = ox[:, None] + ar
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]
    crops = padded[idx[:, None, None], rows, cols]  # (b, size, size, 3)
    return crops.permute(0, 3, 1, 2).float().div_(255)


def cut_out(x: torch.Tensor, side: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one random ``side`` x ``side`` square per image (DeVries & Taylor 2017); the square's
    centre is uniform over the image, so it may be clipped at the border."""
    b, _, h, w = x.shape
    dev = x.device
    cy = torch.randint(0, h, (b, 1, 1), generator=gen, device=dev)
    cx = torch.randint(0, w, (b, 1, 1), generator=gen, device=dev)
    ys, xs = torch.arange(h, device=dev)[None, :, None], torch.arange(w, device=dev)[None, None, :]
    hole = ((ys - cy).abs() <= side // 2 - (1 - side % 2) * (ys >= cy)) & \
        ((xs - cx).abs() <= side // 2 - (1 - side % 2) * (xs >= cx))
    return x.masked_fill_(hole[:, None], 0.0)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC numpy -> float NCHW tensor in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to zero at the last step."""
    total = cfg.epochs * steps_per_epoch
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 500) -> dict:
    """Plaintext accuracy of ``model`` (eval mode) on ``split``: overall and per class, in %."""
    model.eval()
    device = next(model.parameters()).device
    preds = []
    for i in range(0, len(split), batch_size):
        preds.append(model(to_tensor(split.images[i:i + batch_size]).to(device)).argmax(1).cpu())
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    correct = pred == split.labels
    per_class = {name: round(100.0 * float(correct[split.labels == c].mean()), 2)
                 for c, name in enumerate(split.classes) if (split.labels == c).any()}
    return {"accuracy": round(100.0 * float(correct.mean()), 2), "images": int(len(split)),
            "per_class": per_class, "source": split.source}


def _save_state(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:  # a kill mid-write never leaves a broken state file
        torch.save(state, tmp)


def usable_threads(requested: int) -> int:
    """``requested`` torch threads, clamped with a ``RuntimeWarning`` to the cores this process may
    run on (``os.sched_getaffinity``): threads beyond them make every step several times slower,
    and the run would end as if nothing were wrong."""
    cores = affinity_cores()
    if requested > cores:
        warnings.warn(f"--threads {requested} exceeds the {cores} core(s) this process may use: threads "
                      f"beyond them slow training down several times; using {cores}", RuntimeWarning,
                      stacklevel=3)
        return cores
    return requested


def train(cfg: TrainConfig, train_split: Split, run_dir: str | os.PathLike,
          test_split: Split | None = None, progress: bool = True) -> tuple[ResNetCifar, dict]:
    """Train (or resume) in ``run_dir``; returns the model in eval mode and the run history.
    Raises :class:`ckksnet.errors.InputError` for fewer than one epoch, or for a run folder
    holding a run of another configuration."""
    if cfg.epochs < 1 or (cfg.limit is not None and cfg.limit < 1):
        raise InputError(f"training needs at least 1 epoch and 1 image (epochs {cfg.epochs}, limit {cfg.limit})")
    torch.set_num_threads(usable_threads(cfg.threads))
    if cfg.device != "cpu":
        torch.backends.cudnn.deterministic = cfg.deterministic
        torch.backends.cudnn.benchmark = not cfg.deterministic
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.pt"
    torch.manual_seed(cfg.seed)
    if cfg.activation == "relu" and not cfg.init_from:
        model = ResNetCifar(cfg.blocks, tuple(cfg.widths), len(train_split.classes))
    else:  # polynomial activations
        fit_on = train_split.stratified(min(2000, len(train_split))).images if cfg.init_fit == "data" else None
        model = build_student(cfg, len(train_split.classes), fit_on)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    history: list[dict] = []
    start = 0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if not same_run(state["config"], cfg):
            raise InputError(f"{state_path} holds a run of another configuration ({_differences(state['config'], cfg)}): "
                             "give another --run-dir to start a new run, or the same options to resume that one")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history, start = state["history"], state["epoch"]
    model.to(cfg.device)
    for group in opt.state.values():  # momentum buffers follow the model
        for k, v in group.items():
            if torch.is_tensor(v):
                group[k] = v.to(cfg.device)

    split = train_split.stratified(cfg.limit) if cfg.limit else train_split  # the copies are class-sorted
    data = _DeviceData(split.images, split.labels, cfg.device)
    teacher = load_teacher(cfg.teacher, cfg.device) if cfg.teacher and cfg.kd_weight > 0 else None
    if _amp(cfg):  # the teacher too: a layout change per convolution would cost more than it computes
        for m in (model, teacher) if teacher is not None else (model,):
            m.to(memory_format=torch.channels_last)
    step = make_step(model, cfg, teacher)
    for epoch in range(start, cfg.epochs):
        record = _epoch(model, opt, data, cfg, epoch, step, progress)
        if test_split is not None:
            record["test_acc"] = evaluate(model, test_split)["accuracy"]
        history.append(record)
        line = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        tqdm.write(line) if progress else print(line, flush=True)
        _save_state(state_path, {"config": asdict(cfg), "model": _cpu(model.state_dict()),
                                 "optimizer": opt.state_dict(), "epoch": epoch + 1,
                                 "history": history})
    model.to(memory_format=torch.contiguous_format)
    set_relu_mix(model, 0.0)  # the polynomials alone from here on, unclipped
    set_train_clamp(model, False)
    return model.cpu().eval(), {"history": history, "config": asdict(cfg)}


def _amp(cfg: TrainConfig) -> bool:
    return cfg.amp and cfg.device != "cpu"


class _DeviceData:
    """The training split on the device, once: uint8 zero-padded images (N, H+8, W+8, 3) and
    int64 labels (a 50,000-image CIFAR-10 split is 90 MB)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: str):
        self.padded = torch.from_numpy(np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))).to(device)
        self.labels = torch.from_numpy(labels).to(device)
        self.n = len(images)


def _epoch(model: nn.Module, opt, data: _DeviceData, cfg: TrainConfig, epoch: int, step, progress: bool) -> dict:
    """One epoch; the device is never synchronised with the host inside it (the record's figures
    are read once, at its end). The random stream is a generator on the device seeded by
    (seed, epoch), so a resumed run draws the same batches. ``step`` computes the gradients
    (:class:`_EagerStep` or :class:`_GraphStep`); the optimizer's update runs here, eagerly, with
    the learning rate as a float, so every path shares one update."""
    dev = data.padded.device
    gen = torch.Generator(device=dev).manual_seed(cfg.seed * 100_003 + epoch)
    order = torch.randperm(data.n, generator=gen, device=dev)
    steps = math.ceil(data.n / cfg.batch_size)
    model.train()
    if cfg.freeze_bn:  # batch norms keep their statistics: training computes what inference does
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    t0 = time.time()
    loss_sum = torch.zeros((), device=dev)
    hits = torch.zeros((), dtype=torch.int64, device=dev)
    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
    for s in bar:
        idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
        x = augment(data.padded, idx, gen)
        if cfg.cutout:
            x = cut_out(x, cfg.cutout, gen)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, epoch * steps + s, steps)
        if cfg.ramp_epochs:
            set_relu_mix(model, ramp_mix(cfg.ramp_epochs, epoch * steps + s, steps))
        if cfg.train_clamp_epochs:
            set_train_clamp(model, epoch * steps + s < cfg.train_clamp_epochs * steps)
        loss, hit = step(x, data.labels[idx])
        opt.step()
        loss_sum += loss * len(idx)
        hits += hit
    loss_mean, acc = float(loss_sum) / data.n, 100 * int(hits) / data.n  # the epoch's one host sync
    return {"epoch": epoch + 1, "loss": loss_mean, "train_acc": acc, "seconds": time.time() - t0,
            "device": cfg.device}


def _step_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, teacher):
    """(logits, loss) of one batch: cross-entropy, plus the distillation term with a teacher.
    The autocast weight cache is off: a captured CUDA graph must not keep casts from its capture
    (each weight is cast once per forward anyway, so the cache saves nothing here)."""
    amp = _amp(cfg)
    if amp:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
        out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
        if teacher is not None:
            with torch.no_grad():
                soft = teacher(x).float()
            loss = (1 - cfg.kd_weight) * loss + cfg.kd_weight * distillation_loss(out.float(), soft, cfg.kd_temperature)
    return out, loss


class _EagerStep:
    """Forward and backward of one batch, op by op: ``step(x, y) -> (loss, hits)``, 0-dim device
    tensors, with the gradients left in the parameters' ``.grad``. ``x``: (B, 3, H, W) float in
    [0, 1]; ``y``: (B,) int64 labels."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, teacher):
        self.model, self.cfg, self.teacher = model, cfg, teacher
        self.monitor = None
        if cfg.activation != "relu":  # boundary loss and divergence check (ckksnet.training.poly)
            self.monitor = ActivationMonitor(model, cfg.boundary_reduce)

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        self.model.zero_grad(set_to_none=True)
        out, loss = _step_loss(self.model, x, y, self.cfg, self.teacher)
        if self.monitor:
            if self.cfg.boundary_weight:
                loss = loss + self.cfg.boundary_weight * self.monitor.boundary_loss()
            check_divergence(self.monitor, loss, self.cfg.diverge_ratio)
        loss.backward()
        if self.cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        return loss.detach(), (out.argmax(1) == y).sum()


class _GraphStep:
    """:class:`_EagerStep` replayed from a CUDA graph: one launch instead of several hundred small
    kernels per step, which bound the eager step (about 8 ms for a ResNet-20 batch of 256 on an
    H200, most of it launch overhead from Python).

    The first ``warmup`` full batches run eagerly on a side stream (real steps: lazy cuDNN/cuBLAS
    initialisation must not happen during capture), the next one is captured and replayed. The
    graph reads static input buffers and writes the parameters' ``.grad`` in place, so the
    optimizer outside it sees the new gradients. A last, smaller batch runs eagerly, its
    gradients written into the same tensors: the recipe stays the CPU path's, batch for batch."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, teacher, warmup: int = 3):
        self.eager = _EagerStep(model, cfg, teacher)
        self.batch, self.warmup = cfg.batch_size, warmup
        self.graph = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        if self.graph is not None:
            if len(x) != self.batch:
                return self._eager_into_graph_grads(x, y)
            self.x.copy_(x)
            self.y.copy_(y)
            self.graph.replay()
            return self.loss, self.hits
        if len(x) != self.batch:
            return self.eager(x, y)
        if self.warmup > 0:
            self.warmup -= 1
            return self._on_side_stream(x, y)
        return self._capture(x, y)

    def _on_side_stream(self, x, y):
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            loss, hits = self.eager(x, y)
        torch.cuda.current_stream(x.device).wait_stream(side)
        return loss, hits

    def _eager_into_graph_grads(self, x, y):
        """An eager step whose gradients end in the graph's ``.grad`` tensors (the ones its replays
        write and the optimizer reads), whatever autograd allocated for them."""
        params = [p for p in self.eager.model.parameters() if p.grad is not None]
        owned = [p.grad for p in params]
        loss, hits = self.eager(x, y)
        torch._foreach_copy_(owned, [p.grad for p in params])
        for p, g in zip(params, owned):
            p.grad = g
        return loss, hits

    def _capture(self, x, y):
        self.x, self.y = x.clone(), y.clone()
        self.eager.model.zero_grad(set_to_none=True)  # the capture allocates .grad in the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.loss, self.hits = self.eager(self.x, self.y)
        self.graph = graph
        graph.replay()  # a capture records without running: this batch's step is the first replay
        return self.loss, self.hits


def make_step(model: nn.Module, cfg: TrainConfig, teacher):
    """The step for ``cfg``: a CUDA graph on a CUDA device when ``cfg.graph``, else eager."""
    if cfg.graph and torch.device(cfg.device).type == "cuda" and cfg.activation == "relu":
        return _GraphStep(model, cfg, teacher)
    return _EagerStep(model, cfg, teacher)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), batch mean (Hinton et al. 2015; the
    T^2 keeps its gradients on the scale of the cross-entropy's)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                    reduction="batchmean") * t * t


def load_teacher(path: str | os.PathLike, device: str) -> nn.Module:
    """A frozen teacher in eval mode on ``device``: a checkpoint folder (model.pt + model.json) or
    a run folder / state file of :func:`train`. Raises :class:`ckksnet.errors.DataError`."""
    path = checkpoint_folder(path)  # a bundled name ("bundled", "resnet20") -> its folder
    state_file = path if path.is_file() else path / "state.pt"
    if state_file.name == "state.pt" and state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        cfg = state["config"]
        model = ResNetCifar(cfg["blocks"], tuple(cfg["widths"]), state["model"]["fc.weight"].shape[0])
        model.load_state_dict(state["model"])
    elif (path / "model.json").is_file():
        model, _ = load_checkpoint(path)
    else:
        raise DataError(f"{path}: not a teacher (expected a checkpoint folder with model.json or a "
                        "run folder with state.pt)")
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _cpu(tree):
    """State dicts saved on the CPU, so a run moves freely between machines."""
    if torch.is_tensor(tree):
        return tree.cpu()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_cpu(v) for v in tree]
    return tree
