"""The plan: values (layout + scale) and steps, plus the client's preprocessing constants.

``Plan.twin(images)`` runs the cleartext twin: the same steps on float64 slot vectors, batched.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ckksnet.backend.presets import Preset
from ckksnet.compiler.registry import Value
from ckksnet.errors import RangeError, ShapeError


@dataclass
class Plan:
    """A compiled network. ``steps``: (step, input value ids, output value id) in order."""

    preset: Preset
    values: list[Value] = field(default_factory=list)
    steps: list[tuple] = field(default_factory=list)
    input: int = -1
    output: int = -1
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    # which rotation keys the client makes beyond those bootstrapping brings (see key_indices):
    # "reuse": none unless a rotation cannot be chained from the keys present; "pow2": +-2^i;
    # "direct": one key per rotation index (fastest, most memory)
    rotation_keys: str = "reuse"

    # ------------------------------------------------------------ building
    def new_value(self, layout, scale: float = 1.0) -> Value:
        v = Value(len(self.values), layout, scale)
        self.values.append(v)
        return v

    def add_step(self, step, inputs: list[int], output: int) -> None:
        self.steps.append((step, inputs, output))

    def set_input(self, layout, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean, self.std = mean, std
        self.input = self.new_value(layout).id

    @property
    def input_bound(self) -> float:
        """Largest |normalized pixel| for pixels in [0, 1]: the input's scale."""
        return float(np.max(np.maximum(self.mean / self.std, (1 - self.mean) / self.std)))

    @property
    def input_layout(self):
        return self.values[self.input].layout

    @property
    def output_layout(self):
        return self.values[self.output].layout

    # ------------------------------------------------------------ facts
    def rotations(self) -> set[int]:
        """Every rotation index the plan's kernels need."""
        return set().union(*(s.rotations() for s, _, _ in self.steps))

    def key_indices(self, available: set[int] | frozenset = frozenset()) -> list[int]:
        """Rotation keys (indices mod slots) the client must add to the ``available`` ones
        (bootstrapping's), following :attr:`rotation_keys`."""
        from ckksnet.layout.rotations import rotation_paths, signed_powers_of_two

        slots = self.preset.slots
        have = {k % slots for k in available}
        needed = {k % slots for k in self.rotations()} - {0} - have
        if self.rotation_keys == "direct":
            return sorted(needed)
        if self.rotation_keys == "reuse" and have:
            reachable = rotation_paths(slots, have)
            needed = {k for k in needed if k not in reachable}
        parent = rotation_paths(slots, set(signed_powers_of_two(slots)) | have)
        used = set()
        for k in needed:
            while k:
                k, key = parent[k]
                used.add(key)
        return sorted(used - have)

    def tune_for_keys(self, keys: set[int]) -> None:
        """Pick every linear map's baby step for the rotation keys present (fewest key
        switches); the results do not change. The server calls this once it has its keys."""
        for step, _, _ in self.steps:
            tune = getattr(getattr(step, "kernel", None), "tune_for_keys", None)
            if tune is not None:
                tune(keys)

    def last_use(self) -> dict[int, int]:
        """value id -> index of the last step reading it (the runtime frees it after)."""
        last = {}
        for i, (_, ins, _) in enumerate(self.steps):
            for v in ins:
                last[v] = i
        return last

    def summary(self) -> list[dict]:
        return [{"step": s.name, "kind": s.kind, "levels": s.levels(), "rotations": len(s.rotations()),
                 "scale": round(self.values[o].scale, 4)} for s, _, o in self.steps]

    # ------------------------------------------------------------ inputs and the twin
    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """Images -> packed slot vectors (batch, slots), normalized and divided by the input scale.

        Accepts uint8 (N, H, W, C) / (H, W, C) or float (N, C, H, W) / (C, H, W) in [0, 1].
        """
        x = np.asarray(images)
        if x.dtype == np.uint8:
            x = x.astype(np.float64) / 255.0
            x = np.moveaxis(x, -1, -3)
        x = np.asarray(x, dtype=np.float64)
        single = x.ndim == 3
        x = x[None] if single else x
        lay = self.input_layout
        if x.ndim != 4 or x.shape[1:] != (lay.channels, lay.height, lay.width):
            raise ShapeError(f"expected images of shape (N, {lay.channels}, {lay.height}, {lay.width}) "
                             f"or uint8 (N, {lay.height}, {lay.width}, {lay.channels}); got {np.shape(images)}")
        if not np.all(np.isfinite(x)):
            raise RangeError("images hold NaN or infinite values")
        if x.min() < 0 or x.max() > 1:
            raise RangeError(f"pixel values must lie in [0, 1] (got {x.min():.3g}..{x.max():.3g}); "
                             "the input scale was fixed for that range")
        x = (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]
        packed = lay.pack(x / self.values[self.input].scale)
        return packed[0] if single else packed

    def twin(self, images: np.ndarray, batch_size: int = 256, noise=None, seed: int = 0) -> np.ndarray:
        """Logits of the cleartext twin for a batch of images: (N, classes).

        ``noise``: a :class:`ckksnet.fidelity.NoiseModel` (CKKS error of the measured size added
        after each step, seeded by ``seed``) or None for the exact twin.
        """
        packed = np.atleast_2d(self.preprocess(images))
        rng = np.random.default_rng(seed)
        out = [self.twin_packed(packed[i:i + batch_size], noise, rng) for i in range(0, len(packed), batch_size)]
        return np.concatenate(out)

    def twin_packed(self, packed: np.ndarray, noise=None, rng: np.random.Generator | None = None) -> np.ndarray:
        vals = {self.input: packed}
        used = lambda v: np.asarray(self.values[v].layout.index).ravel()  # noqa: E731
        if noise is not None:
            vals[self.input] = noise.perturb("input", packed, rng, used(self.input))
        last = self.last_use()
        for i, (step, ins, out) in enumerate(self.steps):
            vals[out] = step.twin([vals[v] for v in ins])
            if noise is not None:
                vals[out] = noise.perturb(step.name, vals[out], rng, used(out))
            for v in ins:
                if last.get(v) == i and v != self.output:
                    vals.pop(v, None)
        return self.output_layout.unpack(vals[self.output] * self.values[self.output].scale)

    def reset_reports(self) -> None:
        """Zero the ReLU range counters (before a twin run whose counts are wanted alone)."""
        for s, _, _ in self.steps:
            if s.kind == "relu":
                s.report.__init__()

    def relu_reports(self) -> dict[str, dict]:
        """Per ReLU: inputs seen by the twin and how many fell outside [-B, B]."""
        return {s.name: {"bound": s.relu.bound, "total": s.report.total, "outside": s.report.outside,
                         "max_ratio": s.report.max_ratio} for s, _, _ in self.steps if s.kind == "relu"}
