"""The evaluator half of a backend, on a toy: numpy slots plus CKKS-sized noise.

A backend (another CPU library, a GPU library) is one file, ``ckksnet/backend/ops_<name>.py``,
found by its name (:func:`ckksnet.core.backend.get_backend`). It provides:

1. an evaluator: every method of :class:`ckksnet.core.evaluator.Evaluator` (the methods below,
   with the same parameters), plus ``slots``, ``key_switches`` and ``levels_only``. Kernels call
   nothing else, so every built-in kernel and the schedule's decisions run on it unchanged;
2. the key half, a :class:`ckksnet.core.backend.Backend` registered under its name: making keys,
   key folders, ciphertext bytes, a ``KeySet`` view. ``ckksnet/backend/ops_cleartext.py`` is the
   smallest complete one (and ``tests/test_backend_door.py`` the contract it passes, with
   ``ckksnet.compile(..., backend=NAME)``, ``runtime.Client`` / ``Server`` and the engine);
3. a conformance factory registered with :func:`ckksnet.core.evaluator.register_evaluator`:
   ``tests/test_evaluators.py`` then runs the same computation on it as on OpenFHE, the level
   tracer and exact numpy slots, and checks levels, values (within the tolerance it declares)
   and relinearizations;
4. optionally, measured cost constants under its name in ``ckksnet/core/costs.json`` (the
   schedule then estimates seconds with them).

This file shows part 1 and 3: it compiles a small CNN at the test preset and runs the plan's
schedule on the toy evaluator with the one walker every run uses::

    python examples/backend_contract.py
"""
from __future__ import annotations

import numpy as np

from ckksnet.core.evaluator import Conformance, register_evaluator
from ckksnet.core.slots import SlotEvaluator

NOISE = 2.0 ** -40  # std of the error each rescaled product adds (CKKS at ~50-bit scales)
BOOTSTRAP_NOISE = 2.0 ** -22  # std of the error a bootstrap adds (about 20 bits of precision)


class NoisySlots:
    """A toy backend's evaluator: exact numpy slots (an inner :class:`SlotEvaluator` keeps the
    levels) plus Gaussian noise wherever CKKS adds error: each rescaled product and each bootstrap."""

    levels_only = False

    def __init__(self, slots: int, levels_after_bootstrap: int, seed: int = 0):
        self.inner = SlotEvaluator(slots, levels_after_bootstrap)
        self.slots = slots
        self.key_switches = self.inner.key_switches
        self.rng = np.random.default_rng(seed)

    def _noisy(self, v, std: float = NOISE):
        v.data = v.data + self.rng.normal(0.0, std, np.shape(v.data))
        return v

    # levels
    def levels_left(self, ct):
        return self.inner.levels_left(ct)

    def require_levels(self, ct, needed, what="operation"):
        return self.inner.require_levels(ct, needed, what)

    def drop_levels(self, ct, levels_left):
        return self.inner.drop_levels(ct, levels_left)

    # additions: exact in CKKS too (no rescale)
    def add(self, a, b):
        return self.inner.add(a, b)

    def sub(self, a, b):
        return self.inner.sub(a, b)

    def add_many(self, cts):
        return self.inner.add_many(cts)

    def add_inplace(self, acc, b):
        return self.inner.add_inplace(acc, b)

    # products: one level and a rescale's error each
    def mul(self, a, b):
        return self._noisy(self.inner.mul(a, b))

    def mul_lazy(self, a, b):
        return self.inner.mul_lazy(a, b)

    def relinearize(self, ct):
        return self.inner.relinearize(ct)

    def rescale(self, ct):
        return self._noisy(self.inner.rescale(ct))

    def dot(self, pairs):
        return self._noisy(self.inner.dot(pairs))

    def rotate_composed(self, ct, ks):
        return self.inner.rotate_composed(ct, ks)

    def bootstrap(self, ct):
        return self._noisy(self.inner.bootstrap(ct), BOOTSTRAP_NOISE)

    def shortcut(self, ct, fn, levels):
        return None  # a real backend has no cleartext: kernels run their algorithms

    def fresh(self, data: np.ndarray, levels: int):
        """A fresh value (what a client's encryption would make), with encryption noise."""
        return self._noisy(self.inner.fresh(np.array(data, dtype=np.float64), levels))


@register_evaluator("example-noisy-slots")
def _conformance(preset, rotation_keys) -> Conformance:
    ev = NoisySlots(preset.slots, preset.levels_after_bootstrap)
    return Conformance(ev, ev.fresh, lambda v: v.data, tolerance=(1e-9, 1e-5))


def main() -> int:
    import warnings

    import torch
    import torch.nn as nn

    import ckksnet
    from ckksnet.core.walker import RunReport, ScheduledRefresh, walk

    warnings.simplefilter("ignore")  # the test preset's insecurity warning: this is a toy
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    net = ckksnet.compile(model, calibration=images, preset="test", image_size=(8, 8))
    ev = NoisySlots(net.preset.slots, net.preset.levels_after_bootstrap)
    report = RunReport()  # the walker runtime.Server drives, on the toy evaluator, following the schedule
    out = walk(net, ev, ev.fresh(net.preprocess(images[0]), net.schedule.input_level),
               ScheduledRefresh(ev, net.schedule.decisions()), report)
    logits = net.client_spec().postprocess(out.data)
    with torch.no_grad():
        want = model(torch.tensor(images[:1]).permute(0, 3, 1, 2).float() / 255)[0].numpy()
    err = float(np.max(np.abs(logits - want)))
    print(f"toy backend: {len(net.steps)} steps, {report.bootstraps} bootstraps, "
          f"max |logit - torch| = {err:.2e}, prediction {int(logits.argmax())} (torch {int(want.argmax())})")
    return 0 if err < 5e-2 and logits.argmax() == want.argmax() else 1


if __name__ == "__main__":
    raise SystemExit(main())
