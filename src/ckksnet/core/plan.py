"""The plan: a compiled network, complete at compile time, and its client half.

A :class:`Plan` holds the values (layout + scale), the steps (kernels with their encoded
weights), the input preprocessing and the :class:`~ckksnet.core.schedule.Schedule`. Nothing
mutates it after :func:`ckksnet.compile`: servers, clients and the twin only read it.

A :class:`ClientSpec` is what a client needs and nothing more: the preset, the input
preprocessing, input layout and level, output layout and scale, which keys to make, class names
and the model's identity. It holds **no weights**, so a model owner can hand it out.

``plan.save(folder)`` writes both halves (``server_plan.ckksnet``, ``client_plan.ckksnet``);
:func:`ckksnet.load_plan` and :func:`ckksnet.load_client_spec` read them back, validated
(:mod:`ckksnet.core.artifact`; the writing half, :mod:`ckksnet.core.encode`, sits below this file).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ckksnet.core.encode import plan_id, plan_type, save_artifact
from ckksnet.core.preset import Preset
from ckksnet.core.slots import SlotEvaluator
from ckksnet.core.tiles import join, split_packed, tiles_of
from ckksnet.core.walker import ScheduledRefresh, walk
from ckksnet.errors import RangeError
from ckksnet.inputs import as_images
from ckksnet.layout import Layout, VectorLayout
from ckksnet.layout.rotations import rotation_paths, signed_powers_of_two

SERVER_FILE = "server_plan.ckksnet"
CLIENT_FILE = "client_plan.ckksnet"


class ActivationRangeWarning(UserWarning):
    """The twin saw an activation beyond its approximation's interval (a ReLU input beyond B)."""


def preprocess(images: np.ndarray, layout: Layout, mean: np.ndarray, std: np.ndarray,
               scale: float) -> tuple[np.ndarray, bool]:
    """Images -> packed slot vectors (batch, slots): normalized, divided by the input scale.
    Returns (packed, single image given). Raises ShapeError, NonFiniteError, RangeError."""
    x, single = as_images(images, layout.channels, layout.height, layout.width)
    x = (x - mean[None, :, None, None]) / std[None, :, None, None]
    return layout.pack(x / scale), single


@plan_type
@dataclass
class Value:
    """A tensor of the plan: its layout and its scale (stored slot value = true value / scale).
    ``deferred``: compile-time state of a value no step computes yet (never saved; emptied when
    compiling ends): ``"affine"``, the deferred linear map that defines it (a convolution waiting
    for its BatchNorm, pooled sums waiting for their Linear), and ``"done"``, the steps that
    materialized it, by layout (:mod:`ckksnet.compiler.lowerings.deferred`)."""

    id: int
    layout: Layout | VectorLayout
    scale: float = 1.0
    deferred: dict = field(default_factory=dict)


@plan_type
@dataclass(frozen=True)
class ClientSpec:
    """The client artifact. ``input_level``: levels the client encrypts with; ``rotation_keys``:
    rotation indices (mod slots) the client generates beyond bootstrapping's;
    ``bootstrap_slots``: slot counts to make bootstrapping keys for (empty: none)."""

    preset: Preset
    mean: np.ndarray
    std: np.ndarray
    input_layout: Layout
    input_scale: float
    input_level: int
    output_layout: VectorLayout
    output_scale: float
    rotation_keys: tuple = ()
    bootstrap_slots: tuple = ()
    classes: tuple = ()
    model_id: str = ""
    plan_id: str = ""
    backend: str = ""  #: the backend's name (:func:`ckksnet.core.backend.get_backend`)
    #: levels left in the run's output (the schedule's last step), -1 where unknown (older files):
    #: how a client tells a run's output from an encrypted input
    output_level: int = -1

    @property
    def bootstrap(self) -> bool:
        return bool(self.bootstrap_slots)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the client encrypts."""
        lay = self.input_layout
        return (lay.channels, lay.height, lay.width)

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) / (H, W, C) or float (N, C, H, W) / (C, H, W) in [0, 1] -> packed
        slots, (N, ciphertexts * slots) or (ciphertexts * slots,): ciphertext t's slots are
        [t * slots, (t + 1) * slots) (one ciphertext unless the input layout spans several)."""
        packed, single = preprocess(images, self.input_layout, self.mean, self.std, self.input_scale)
        return packed[0] if single else packed

    def postprocess(self, slots: np.ndarray) -> np.ndarray:
        """Decrypted output slots -> logits (float64)."""
        return self.output_layout.unpack(slots) * self.output_scale

    def save(self, path) -> Path:
        return save_artifact("client_plan", self, path)


@plan_type
@dataclass
class Plan:
    """A compiled network. ``steps``: (kernel, input value ids, output value id) in order."""

    preset: Preset
    values: list[Value] = field(default_factory=list)
    steps: list[tuple] = field(default_factory=list)
    input: int = -1
    output: int = -1
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    #: which rotation keys the client makes beyond those bootstrapping brings (see key_indices):
    #: "reuse": none unless a rotation cannot be chained from the keys present; "pow2": +-2^i;
    #: "direct": one key per rotation index (fastest, most memory). Plan files store it under
    #: its earlier name "rotation_keys" (:data:`ckksnet.core.encode.FILE_NAMES`)
    rotation_key_policy: str = "reuse"
    schedule: object | None = None
    classes: tuple = ()
    model_id: str = ""
    options: dict = field(default_factory=dict)
    #: the backend the plan is compiled for, by name (:func:`ckksnet.core.backend.get_backend`):
    #: its bootstrapping keys and cost constants shaped the schedule
    backend: str = ""

    # ------------------------------------------------------------ building (compile only)
    def new_value(self, layout, scale: float = 1.0) -> Value:
        v = Value(len(self.values), layout, scale)
        self.values.append(v)
        return v

    def add_step(self, step, inputs: list[int], output: int) -> None:
        self.steps.append((step, inputs, output))

    def set_input(self, layout, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean, self.std = mean, std
        self.input = self.new_value(layout).id

    # ------------------------------------------------------------ facts
    @property
    def input_bound(self) -> float:
        """Largest |normalized pixel| for pixels in [0, 1]: the input's scale."""
        return float(np.max(np.maximum(np.abs(self.mean / self.std), np.abs((1 - self.mean) / self.std))))

    @property
    def input_layout(self):
        return self.values[self.input].layout

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the model takes."""
        lay = self.input_layout
        return (lay.channels, lay.height, lay.width)

    @property
    def output_layout(self):
        return self.values[self.output].layout

    def rotations(self) -> set[int]:
        """Every rotation index the plan's kernels need."""
        return set().union(*(s.rotations() for s, _, _ in self.steps))

    def key_indices(self, available: set[int] | frozenset = frozenset()) -> list[int]:
        """Rotation keys (indices mod slots) the client must add to the ``available`` ones
        (bootstrapping's), following :attr:`rotation_key_policy`."""
        slots = self.preset.slots
        have = {k % slots for k in available}
        needed = {k % slots for k in self.rotations()} - {0} - have
        if self.rotation_key_policy == "direct":
            return sorted(needed)
        if self.rotation_key_policy == "reuse" and have:
            reachable = rotation_paths(slots, have)
            needed = {k for k in needed if k not in reachable}
        parent = rotation_paths(slots, set(signed_powers_of_two(slots)) | have)
        used = set()
        for k in needed:
            while k:
                k, key = parent[k]
                used.add(key)
        return sorted(used - have)

    def last_use(self) -> dict[int, int]:
        """value id -> index of the last step reading it (the runtime frees it after)."""
        last = {}
        for i, (_, ins, _) in enumerate(self.steps):
            for v in ins:
                last[v] = i
        return last

    def summary(self) -> list[dict]:
        """Per step: kind, levels in/out, bootstraps, rotations, key switches, estimated seconds."""
        sched = {s.name: s for s in self.schedule.steps} if self.schedule else {}
        out = []
        for step, _, o in self.steps:
            row = {"step": step.name, "kind": step.kind, "levels": step.levels(),
                   "rotations": len(step.rotations()), "scale": round(self.values[o].scale, 4)}
            s = sched.get(step.name)
            if s is not None:
                row |= {"level_in": s.level_in, "level_out": s.level_out, "bootstraps": s.bootstraps,
                        "key_switches": s.key_switches, "estimated_seconds": s.seconds}
            out.append(row)
        return out

    # ------------------------------------------------------------ the client half
    def client_spec(self) -> ClientSpec:
        """What a client needs: no weights (see :class:`ClientSpec`)."""
        sched = self.schedule
        return ClientSpec(self.preset, self.mean, self.std, self.input_layout, self.values[self.input].scale,
                          sched.input_level, self.output_layout, self.values[self.output].scale,
                          sched.client_rotations, sched.bootstrap_slots, tuple(self.classes),
                          self.model_id, plan_id(self), self.backend,
                          sched.steps[-1].level_out if sched.steps else -1)

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """Images -> packed slot vectors (see :meth:`ClientSpec.preprocess`)."""
        packed, single = preprocess(images, self.input_layout, self.mean, self.std, self.values[self.input].scale)
        return packed[0] if single else packed

    def save(self, folder) -> Path:
        """Write the server artifact and the client artifact into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_artifact("server_plan", self, folder / SERVER_FILE)
        self.client_spec().save(folder / CLIENT_FILE)
        return folder

    # ------------------------------------------------------------ the twin
    def twin(self, images: np.ndarray, batch_size: int = 256, noise=None, seed: int = 0,
             strict: bool = False, reference: bool = False, ranges: dict | None = None) -> np.ndarray:
        """Logits of the cleartext twin: (N, classes) for a batch of images ((classes,) for one).

        The plan's own kernels on the numpy slot evaluator, following the schedule (levels are
        checked as in an encrypted run). ``noise``: a :class:`ckksnet.fidelity.NoiseModel` (CKKS
        error of the measured size after each step, seeded by ``seed``) or None for the exact twin.
        ``reference``: run every kernel's algorithm as written (rotations; slow) instead of the
        equivalent fast forms. Inputs beyond an approximation's interval (a ReLU input beyond its
        bound B) give an :class:`ActivationRangeWarning` naming the layer, or with ``strict`` a
        :class:`ckksnet.RangeError`; ``ranges`` (a dict) receives the per-layer figures.
        """
        packed = self.preprocess(images)
        single = packed.ndim == 1
        packed = np.atleast_2d(packed)
        rng = np.random.default_rng(seed)
        seen: dict = {} if ranges is None else ranges
        out = [self.twin_packed(packed[i:i + batch_size], noise, rng, reference, seen)
               for i in range(0, len(packed), batch_size)]
        _check_ranges(seen, strict)
        logits = np.concatenate(out)
        return logits[0] if single else logits

    def twin_packed(self, packed: np.ndarray, noise=None, rng: np.random.Generator | None = None,
                    reference: bool = False, ranges: dict | None = None) -> np.ndarray:
        """The twin on packed slots (batch, ciphertexts * slots) -> logits (batch, classes)."""
        ev = SlotEvaluator(self.preset.slots, self.preset.levels_after_bootstrap, fast=not reference)
        used = lambda v: np.asarray(self.values[v].layout.index).ravel()  # noqa: E731
        x = packed if noise is None else noise.perturb("input", packed, rng, used(self.input))
        after = _twin_observer(self, noise, rng, used, ranges if ranges is not None else {})
        fresh = join([ev.fresh(part, self.schedule.input_level) for part in split_packed(x, self.preset.slots)])
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported below, not warned
            out = walk(self, ev, fresh, ScheduledRefresh(ev, self.schedule.decisions()), after_step=after)
        return self.output_layout.unpack(_slots(out) * self.values[self.output].scale)


def _slots(value) -> np.ndarray:
    """A twin value's slots, (batch, ciphertexts * slots): its tiles side by side."""
    return np.concatenate([t.data for t in tiles_of(value)], axis=-1)


def _twin_observer(plan: Plan, noise, rng, used, ranges: dict):
    """after_step for the twin: range figures of kernels with a ``domain``, then noise."""
    def after(i, step, inputs, out):
        if step.domain is not None:
            x = np.abs(_slots(inputs[0]))
            r = ranges.setdefault(step.name, {"domain": step.domain, "total": 0, "outside": 0, "max_ratio": 0.0})
            r["total"] += int(x.size)
            r["outside"] += int(np.count_nonzero(~(x <= step.domain)))
            r["max_ratio"] = max(r["max_ratio"], float(np.nanmax(x, initial=0.0)) / step.domain)
        if noise is not None:
            idx, slots = used(plan.steps[i][2]), plan.preset.slots
            for t, part in enumerate(tiles_of(out)):  # each tile's own used slots
                mine = idx[(idx >= t * slots) & (idx < (t + 1) * slots)] - t * slots
                part.data = noise.perturb(step.name, part.data, rng, mine)
        return out
    return after


def _check_ranges(ranges: dict, strict: bool) -> None:
    bad = {k: r for k, r in ranges.items() if r["outside"]}
    if not bad:
        return
    worst = max(bad, key=lambda k: bad[k]["max_ratio"])
    msg = (f"{len(bad)} layer(s) saw inputs beyond their approximation's interval: {worst!r} up to "
           f"{bad[worst]['max_ratio']:.3g} x its bound ({bad[worst]['outside']} values); the outputs "
           "there are not ReLU. Recalibrate with representative images or raise the margin.")
    if strict:
        raise RangeError(msg)
    warnings.warn(msg, ActivationRangeWarning, stacklevel=3)
