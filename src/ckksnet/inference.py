"""The main job: encrypted inference of real CIFAR-10 test images with a trained checkpoint.

Images: the first K official test images (bit-exact, from the foolbox wheel) when K <= 20,
else K images spread evenly over the test split of the data set in use.
"""
from __future__ import annotations

import sys
import time
from collections import Counter

import numpy as np
import torch

from ckksnet.backend import measure
from ckksnet.compiler.checkpoints import SignTables, compile_checkpoint
from ckksnet.core.costs import CostModel
from ckksnet.core.schedule import estimate_seconds
from ckksnet.core.text import count
from ckksnet.data import load_cifar10
from ckksnet.fidelity import NoiseProbe
from ckksnet.runtime import Client, Server, peak_rss_gb
from ckksnet.training.train import to_tensor


def pick_images(k: int, data: str | None = None):
    """(images uint8 NHWC, labels, dataset indices, source) for K real test images."""
    if k < 1:
        raise ValueError("the number of images must be at least 1")
    if data is None and k <= 20:
        try:
            split = load_cifar10("test", "foolbox")
            return split.images[:k], split.labels[:k], list(range(k)), split.source
        except Exception:  # foolbox missing: fall back to the configured data set
            pass
    split = load_cifar10("test", data)
    idx = np.linspace(0, len(split) - 1, k).round().astype(int)
    return split.images[idx], split.labels[idx], idx.tolist(), split.source


def run(k: int = 1, preset: str = "secure", data: str | None = None, checkpoint: str | None = None,
        signs: SignTables = SignTables(), progress: bool = True, on_image=None,
        calibrate_noise: bool = False, measure_costs: bool = False, reference_each: bool = False) -> dict:
    """Compile, make keys, and run K images encrypted; returns a JSON-ready report.

    ``on_image(record)`` is called after each image (for printing as results come in).
    ``calibrate_noise``: also measure every step's CKKS error on the first image (decrypting
    each step's output with the client's key) and return it as ``noise_model``.
    ``measure_costs``: time the cost model's operations and a reference bootstrap (median of 3)
    right after key generation, in this process (``costs``), and report the plan's estimate.
    ``signs``: the ReLUs' sign tables (default alpha 13, eps 2^-9; per-ReLU overrides).
    ``reference_each``: right before each image, time a reference bootstrap (median of 3, see
    :func:`ckksnet.backend.measure.reference_bootstrap`) and report the image's time as a ratio to
    it. The noise probe's own seconds (``calibrate_noise``, first image) are left out of the
    image's time and reported as ``probe_seconds``.
    """
    images, labels, indices, source = pick_images(k, data)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else (lambda text: None)
    say(f"compiling the plan of preset {preset!r} for {k} image(s) of {images.shape[1]}x{images.shape[2]} ...")
    t = time.time()
    net, model, meta = compile_checkpoint(checkpoint, preset, signs, image_size=images.shape[1:3])
    compile_s = time.time() - t
    est = net.schedule.seconds
    say(f"compiled in {compile_s:.0f} s: {count(net.schedule.bootstraps, 'bootstrap')} per image"
        + (f", about {_minutes(est)} per image on 2 cores (estimate)" if est else "")
        + "; generating the keys" + (" (the secure preset: about 40 s and 11-13 GiB)" if preset == "secure" else "")
        + " ...")
    t = time.time()
    client = Client(net)
    keygen_s = time.time() - t
    keygen_rss = peak_rss_gb()
    server = Server(net, client.evaluation_keys())
    costs = None
    if measure_costs:
        costs = measure.measure_costs(client.keys, [1, 3, 5, 7, 12, 20])
        costs["estimate_seconds"] = round(estimate_seconds(net, CostModel(preset, costs["coefficients"])), 1)
    with torch.no_grad():
        plain = model(to_tensor(images)).double().numpy()
    records, first_report, probe = [], None, None
    if calibrate_noise:
        probe = NoiseProbe(net, client)
    for i in range(k):
        ref = None
        if reference_each:
            ref = measure.reference_bootstrap(client.keys)
        timed = _Timed(probe if i == 0 else None)
        t = time.time()
        ct = client.encrypt(images[i])
        logits = client.decrypt(server.run(ct, progress=progress, probe=timed if timed.fn else None))
        seconds = time.time() - t - timed.seconds
        if probe is not None and i == 0:
            input_sd = float(np.std(client.keys.decrypt(ct) - net.preprocess(images[i])))
        rec = {"index": int(indices[i]), "label": int(labels[i]), "plain_pred": int(plain[i].argmax()),
               "enc_pred": int(logits.argmax()), "max_abs_logit_diff": float(np.max(np.abs(logits - plain[i]))),
               # seconds: encrypt + the server's run + decrypt; server_seconds: the run's steps only
               "seconds": round(seconds, 2), "server_seconds": round(server.report.seconds, 2),
               "bootstraps": server.report.bootstraps,
               "bootstraps_by_slots": {str(net.preset.slots): server.report.bootstraps},
               "peak_rss_gb": round(peak_rss_gb(), 2), "probe_seconds": round(timed.seconds, 2),
               "logits": [round(float(v), 5) for v in logits],
               **_class_names(net.classes, label=int(labels[i]), plain=int(plain[i].argmax()),
                              enc=int(logits.argmax()))}
        if ref is not None:
            rec.update(reference_bootstrap_seconds=round(ref, 3), ratio=round(seconds / ref, 2))
        records.append(rec)
        first_report = first_report or server.report.to_dict()
        if on_image:
            on_image(rec)
    return {"preset": net.preset.name, "source": source, "checkpoint": checkpoint or "bundled",
            "checkpoint_note": meta.get("note", ""), "plain_test_accuracy": meta.get("test", {}).get("accuracy"),
            "alpha": signs.alpha, "eps_bits": signs.eps_bits, "relu_signs": [[p, list(t)] for p, t in signs.relu_sign],
            "activations": dict(Counter(k.kind for k, _, _ in net.steps if k.domain is not None)),
            "compile_seconds": round(compile_s, 2),
            "keygen_seconds": round(keygen_s, 2), "rotation_keys": client.key_memory_gb["rotation_keys"],
            "rotation_key_policy": net.rotation_key_policy, "peak_rss_gb_after_keygen": round(keygen_rss, 2),
            "key_memory_gb": client.key_memory_gb,
            "images": records, "agreement": float(np.mean([r["plain_pred"] == r["enc_pred"] for r in records])),
            "report": first_report, "costs": costs,
            "plan_estimate_seconds_stored_costs": round(net.schedule.seconds, 1),
            "plan_bootstraps": net.schedule.bootstraps,
            "noise_model": probe and vars(probe.model(net.preset.name, f"measured on image {indices[0]} "
                                                   f"({source}), alpha {signs.alpha}", input_sd))}


def _class_names(classes, **indices) -> dict:
    """{"label_name": ..., "plain_name": ..., "enc_name": ...}: each index's class name, where the
    plan names its classes (by more than their numbers)."""
    names = tuple(classes or ())
    if not names or all(n == str(i) for i, n in enumerate(names)):
        return {}
    return {f"{key}_name": names[i] for key, i in indices.items() if 0 <= i < len(names)}


def _minutes(seconds: float) -> str:
    """'3 min', or '40 s' under a minute (an estimate of 0 min reads as a mistake)."""
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


class _Timed:
    """A noise probe whose own seconds are counted apart (they are not inference time)."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args):
        t = time.time()
        self.fn(*args)
        self.seconds += time.time() - t
