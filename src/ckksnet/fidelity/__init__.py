"""Fidelity: how far encrypted inference strays from the plaintext model.

Three runs of the same images are compared: the plaintext torch model, the cleartext twin of the
plan (exact, or with a CKKS noise model), and real encrypted runs.

* :class:`NoiseModel` adds, after each step of the twin, Gaussian noise of the size that step
  adds when encrypted. :class:`NoiseProbe` measures those sizes on an encrypted run (it
  decrypts every step's output, so it is a calibration tool: it needs the client's key).
* :func:`evaluate` runs the comparison with a resumable record of encrypted images;
  :func:`summarize` turns logits into the figures (identical top-1 %, accuracies, logit errors).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from ckksnet.core.slots import SlotEvaluator, SlotVector
from ckksnet.core.tiles import TiledEvaluator, join, split_packed, tiles_of
from ckksnet.errors import DataError

_BUNDLED = Path(__file__).parent


@dataclass
class NoiseModel:
    """Per-step standard deviation of the error CKKS adds, in stored (scaled) slot units.

    ``factor`` scales every deviation: it is fitted so that the twin's logit deviations match
    encrypted runs (``benchmarks/noise_check.py --fit``); the per-step figures are measured.
    """

    preset: str
    steps: dict[str, float] = field(default_factory=dict)
    input: float = 0.0  # encryption and encoding
    source: str = ""  # how it was measured
    factor: float = 1.0
    fit: str = ""  # how the factor was fitted

    def perturb(self, name: str, x: np.ndarray, rng: np.random.Generator,
                used: np.ndarray | None = None) -> np.ndarray:
        """``x`` (batch, slots) plus Gaussian error on the ``used`` slots (all if None): the
        probe measures the error there, and slots a layout leaves empty stay as they were."""
        sd = self.factor * (self.input if name == "input" else self.steps.get(name, 0.0))
        if sd <= 0:
            return x
        if used is None:
            return x + rng.normal(0.0, sd, x.shape)
        out = x.copy()
        out[..., used] += rng.normal(0.0, sd, x.shape[:-1] + (len(used),))
        return out

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NoiseModel":
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: not a ckksnet noise model ({exc})") from exc


def bundled_noise_path(preset: str) -> Path:
    """Where the package ships the noise model of ``preset`` (written by the benchmarks)."""
    return _BUNDLED / f"noise_{preset}.json"


def bundled_noise(preset: str) -> NoiseModel | None:
    """The noise model measured for ``preset`` and shipped with the package, if any."""
    path = bundled_noise_path(preset)
    return NoiseModel.load(path) if path.exists() else None


class NoiseProbe:
    """Runtime probe (``Server.run(..., probe=...)``): the local error of every step, i.e. the
    decrypted output minus the step's twin applied to the decrypted inputs, on the slots the
    output layout uses. Uses the client's secret key: for calibration runs only."""

    def __init__(self, plan, client):
        self.plan, self.client = plan, client
        self.errors: dict[str, list[float]] = {}  # step name -> [std, max abs] per run

    def __call__(self, index: int, step, inputs, output) -> None:
        def dec(value):  # a value over several ciphertexts: their slots side by side
            return np.concatenate([self.client.keys.decrypt(c) for c in tiles_of(value)])

        out_id = self.plan.steps[index][2]
        used = np.asarray(self.plan.values[out_id].layout.index).ravel()
        want = step_twin(step, [dec(c) for c in inputs], self.plan.preset.slots)
        err = (dec(output) - want)[used]
        self.errors.setdefault(step.name, []).append((float(err.std()), float(np.abs(err).max())))

    def model(self, preset: str, source: str, input_sd: float = 0.0) -> NoiseModel:
        """The mean measured std per step as a :class:`NoiseModel`."""
        steps = {k: float(np.mean([s for s, _ in v])) for k, v in self.errors.items()}
        return NoiseModel(preset, steps, input_sd, source)


def step_twin(step, inputs: list[np.ndarray], slots: int | None = None) -> np.ndarray:
    """One step's kernel on plain slot vectors (levels unchecked, no bootstrap); with ``slots``,
    inputs longer than that are values over several ciphertexts (split, and the output joined)."""
    ev = TiledEvaluator(SlotEvaluator(slots, fast=True))
    values = [join([SlotVector(np.asarray(p, dtype=np.float64), 1 << 20)
                    for p in (split_packed(x, slots) if slots else [x])]) for x in inputs]
    out = step.evaluate(ev, values, lambda v, levels: v)
    return np.concatenate([t.data for t in tiles_of(out)], axis=-1)


def activation_reports(plan, seen: dict) -> dict[str, dict]:
    """Per step whose kernel approximates an activation (``Kernel.approximates``: ReLU, or any
    other): which activation, its bound B, the inputs the twin saw and how many fell outside the
    approximation's interval (from ``Plan.twin(ranges=)``)."""
    out = {}
    for s, ins, _ in plan.steps:
        if s.approximates is not None:
            r = seen.get(s.name, {"total": 0, "outside": 0, "max_ratio": 0.0})
            out[s.name] = {"activation": s.approximates,
                           "bound": s.approximation_bound(plan.values[ins[0]].scale),
                           "total": r["total"], "outside": r["outside"], "max_ratio": r["max_ratio"]}
    return out


def _relu_outside(reports: dict) -> dict:
    """The report's ReLU figures (its key since before other activations): "per_relu" counts."""
    relus = {k: r for k, r in reports.items() if r["activation"] == "relu"}
    return {"total": sum(r["outside"] for r in relus.values()), "values": sum(r["total"] for r in relus.values()),
            "per_relu": {k: r["outside"] for k, r in relus.items() if r["outside"]}}


def _outside(reports: dict) -> dict:
    return {"total": sum(r["outside"] for r in reports.values()),
            "values": sum(r["total"] for r in reports.values()),
            "per_step": {k: r["outside"] for k, r in reports.items() if r["outside"]}}


# ---------------------------------------------------------------- figures
def summarize(plain: np.ndarray, other: np.ndarray, labels: np.ndarray) -> dict:
    """Figures for ``other`` logits (twin or encrypted) against the plaintext ``plain`` ones."""
    plain, other, labels = np.asarray(plain), np.asarray(other), np.asarray(labels)
    if plain.shape != other.shape or len(labels) != len(plain):
        raise ValueError(f"logits {plain.shape} vs {other.shape}, labels {labels.shape}")
    if len(plain) == 0:
        return {"images": 0}
    err = np.abs(other - plain).max(axis=1)
    finite = np.isfinite(err)  # a ReLU input far outside its bound makes the polynomial diverge
    return {"images": int(len(plain)), "diverged_images": int(np.count_nonzero(~finite)),
            "accuracy": round(100.0 * float(np.mean(other.argmax(1) == labels)), 3),
            "plain_accuracy": round(100.0 * float(np.mean(plain.argmax(1) == labels)), 3),
            "identical_top1": round(100.0 * float(np.mean(other.argmax(1) == plain.argmax(1))), 3),
            "max_logit_error": float(err[finite].max()) if finite.any() else None,  # over finite ones
            "p50_logit_error": float(np.percentile(err, 50)),
            "p99_logit_error": float(np.percentile(err, 99))}


# ---------------------------------------------------------------- resumable encrypted runs
def plan_identity(plan) -> dict:
    """What makes two encrypted runs comparable: preset, step count, every ReLU's alpha, eps and
    bound B (the margin and the calibration show up in B), and for other approximated
    activations (only where the plan has some) their name, activation, kind and bound.
    JSON-normalized."""
    from ckksnet.kernels import ReluStep

    identity = {"preset": plan.preset.name, "steps": len(plan.steps),
                "relu": [[s.name, s.relu.sign.alpha, s.relu.sign.eps, s.relu.bound]
                         for s, _, _ in plan.steps if isinstance(s, ReluStep)]}
    others = [[s.name, s.approximates, s.kind, s.approximation_bound(plan.values[ins[0]].scale)]
              for s, ins, _ in plan.steps if s.approximates is not None and not isinstance(s, ReluStep)]
    if others:
        identity["activations"] = others
    return json.loads(json.dumps(identity))


class EncryptedLog:
    """One JSON line per finished encrypted image, so an interrupted run loses nothing done.
    The first line records what the run is (plan settings); a different run refuses the file."""

    def __init__(self, path: str | os.PathLike | None, identity: dict):
        self.path = Path(path) if path else None
        self.identity = identity
        self.records: dict[int, dict] = {}
        if self.path and self.path.exists():
            lines = [json.loads(s) for s in self.path.read_text().splitlines() if s.strip()]
            if not lines or lines[0].get("identity") != identity:
                raise DataError(f"{self.path} records another run ({lines[0] if lines else 'empty'}); "
                                "use a new --state file")
            self.records = {r["index"]: r for r in lines[1:]}
        elif self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"identity": identity}) + "\n")

    def add(self, record: dict) -> None:
        self.records[record["index"]] = record
        if self.path:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def run_encrypted(plan, images: np.ndarray, indices: list[int], log: EncryptedLog,
                  progress: bool = True, client_factory: Callable | None = None,
                  on_image: Callable | None = None) -> list[dict]:
    """Encrypt, run and decrypt every image whose index ``log`` lacks; returns all records
    for ``indices``. Keys are made only if some image is left to run."""
    todo = [(i, img) for i, img in zip(indices, images) if i not in log.records]
    if todo:
        from ckksnet.runtime import Client, Server

        client = (client_factory or Client)(plan)
        server = Server(plan, client.evaluation_keys())
        for i, img in tqdm(todo, desc="encrypted images", disable=not progress, unit="image"):
            t = time.time()
            logits = client.decrypt(server.run(client.encrypt(img)))
            rep = server.report.to_dict()
            log.add({"index": int(i), "logits": [float(v) for v in logits], "seconds": round(time.time() - t, 2),
                     "bootstraps": rep["bootstraps"], "bootstrap_seconds": round(rep["bootstrap_seconds"], 2),
                     "peak_rss_gb": round(rep["peak_rss_gb"], 2), "code": code_version(plan),
                     "key_memory_gb": getattr(client, "key_memory_gb", None), "report": rep})
            if on_image:
                on_image(log.records[int(i)])
    return [log.records[int(i)] for i in indices]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


#: the checkout's commit when this process imported ckksnet (later edits do not run here)
_COMMIT = _git_commit()


def code_version(plan) -> dict:
    """What code made a record (records outlive commits): the git commit the process started
    from, when run from a checkout, and how many linear maps run in lanes."""
    lanes = sum(1 for s, _, _ in plan.steps if s.kind == "linear" and getattr(s.kernel, "lanes", 1) > 1)
    return {"commit": _COMMIT, "laned_linear_steps": lanes}


def encrypted_sample(n_images: int, k: int) -> list[int]:
    """Indices of the images run encrypted: the first ``k`` of a fixed permutation of the split,
    so the sample spans every class (test splits are often stored class by class) and a resumed
    run with a larger ``k`` extends it rather than starting over."""
    return [int(i) for i in np.random.default_rng(0).permutation(n_images)[:k]]


def evaluate(plan, model, images: np.ndarray, labels: np.ndarray, twin: int, encrypted: int,
             state: str | os.PathLike | None = None, noise: NoiseModel | None = None,
             progress: bool = True, client_factory: Callable | None = None,
             batch_size: int = 256) -> dict:
    """The fidelity report for the first ``twin`` images (twin) and a sample of ``encrypted``
    images (:func:`encrypted_sample`) of ``images`` (uint8 NHWC) with their ``labels``.

    ``state``: the resumable record of encrypted images (JSON lines); ``noise``: the twin's
    noise model (None: exact twin).
    """
    import torch

    from ckksnet.training.train import to_tensor

    if max(twin, encrypted) > len(images):
        raise DataError(f"asked for {max(twin, encrypted)} images, the data set has {len(images)}")
    idx = encrypted_sample(len(images), encrypted)
    # opened before any work: a record of another run is refused now, not after the twin's minutes;
    # without encrypted images no record is read or written
    log = EncryptedLog(state if encrypted else None, plan_identity(plan))

    def plain_logits(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([model(to_tensor(x[i:i + 500])).double().numpy()
                                   for i in range(0, len(x), 500)]) if len(x) else np.zeros((0, 10))

    plain, plain_enc = plain_logits(images[:twin]), plain_logits(images[idx])
    seen: dict = {}
    twin_logits = np.concatenate([
        plan.twin(images[i:min(i + batch_size, twin)], noise=noise, seed=i, ranges=seen)
        for i in tqdm(range(0, twin, batch_size), desc="twin", disable=not progress, unit="batch")
    ]) if twin else np.zeros((0, plain.shape[1]))
    activations = activation_reports(plan, seen)
    twin_enc = plan.twin(images[idx], noise=noise, seed=len(images)) if idx else np.zeros((0, plain.shape[1]))
    records = run_encrypted(plan, images[idx], idx, log, progress, client_factory)
    enc_logits = np.array([r["logits"] for r in records]).reshape(len(records), plain.shape[1])
    plain_set, plain_lab = (plain, labels[:twin]) if twin else (plain_enc, labels[idx])
    return {
        "preset": plan.preset.name,
        "noise_model": (noise.source or "measured") if noise else "off",
        "plain": {"images": len(plain_set), "accuracy": round(100.0 * float(np.mean(
            plain_set.argmax(1) == plain_lab)), 3) if len(plain_set) else None},
        "twin": summarize(plain, twin_logits, labels[:twin]),
        "encrypted": summarize(plain_enc, enc_logits, labels[idx])
        | {"indices": idx,
           "seconds_per_image": round(float(np.mean([r["seconds"] for r in records])), 1) if records else None},
        "twin_on_encrypted_images": summarize(plain_enc, twin_enc, labels[idx]),
        "relu_inputs_outside_bound": _relu_outside(activations),
        # every approximated activation (ReLU and any other), per step
        "activation_inputs_outside_bound": _outside(activations),
        "logit_errors": {"twin": (twin_logits[:2000] - plain[:2000]).ravel().tolist(),
                         "encrypted": (enc_logits - plain_enc).ravel().tolist()},
        "profile": profile(*_latest_report(log, set(idx))),
    }


def _latest_report(log: EncryptedLog, sample: set[int]) -> tuple[dict | None, dict]:
    """The run report of the ``sample`` image recorded last (the newest code; the log keeps
    file order), where it is from and its key memory (records before 2026-11-24 lack it)."""
    r = next((r for r in reversed(log.records.values()) if r["index"] in sample and r.get("report")), None)
    if not r:
        return None, {}
    return r["report"], {"image": r["index"], "code": r.get("code"), "key_memory_gb": r.get("key_memory_gb")}


def profile(report: dict | None, source: dict | None = None) -> dict | None:
    """Time by kernel kind (bootstrapping apart) and by layer, seconds, and peak RSS, GiB, from
    a run report; ``source`` (which image, which code, key memory in GiB) is kept with it."""
    if not report:
        return None
    by_kind = {"bootstrap": report["bootstrap_seconds"]}
    for s in report["steps"]:
        by_kind[s["kind"]] = by_kind.get(s["kind"], 0.0) + s["seconds"] - s["bootstrap_seconds"]
    return {**(source or {}), "seconds": report["seconds"], "bootstraps": report["bootstraps"],
            "peak_rss_gb": report["peak_rss_gb"],
            "by_kind": {k: round(v, 2) for k, v in by_kind.items()},
            "by_layer": [{"name": s["name"], "kind": s["kind"], "seconds": round(s["seconds"], 2),
                          "bootstrap_seconds": round(s["bootstrap_seconds"], 2)} for s in report["steps"]]}
