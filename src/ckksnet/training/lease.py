"""Teacher, then distilled student, inside a fixed time budget: one prepared command for a short
accelerator lease (``benchmarks/train_gpu.sh`` runs it; it runs on the CPU too, for tests).

Steps, each logged with its seconds: on a GPU, check in a child process that the CUDA-graph step
trains exactly as the eager one (else the whole lease runs eagerly); load CIFAR-10 (the JPEG copy by default); probe the seconds
per epoch of the teacher and of the student with distillation on a slice of the data (warm-up
excluded); choose both epoch counts so that everything fits the budget (the teacher gets
``teacher_share`` of the training time); train the teacher; train the student distilled from
it; evaluate both on the test split; write ``OUT/summary.json``. Each run folder keeps its
``state.pt`` after every epoch, so whatever the lease ends with is usable
(``ckksnet snapshot --run-dir OUT/student``).

Usage: ``python -m ckksnet.training.lease --out OUT [--budget-s 480] [--device cuda] ...``
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ckksnet.data import Split, load_cifar10
from ckksnet.training.train import TrainConfig, evaluate, train


def _log(t0: float, text: str) -> None:
    print(f"[{time.time() - t0:7.1f} s] {text}", flush=True)


def probe_epoch_seconds(cfg: TrainConfig, split, run_dir: Path, images: int) -> float:
    """Seconds of one full epoch of ``cfg`` (its device, model, teacher), measured on the second
    of two epochs over ``images`` images (the first warms up kernels, allocators and captures the
    CUDA graph), scaled to the whole split, plus the per-epoch cost outside the epoch loop (writing
    the run's state, timed once on the probe's own state). The one-off set-up (model, teacher,
    data upload, the first epoch's capture) is left to the lease's reserve: spread over two probe
    epochs it had made an H200's 0.74-s epoch look like 2.6 s."""
    cfg = replace(cfg, epochs=2, limit=min(images, len(split)), warmup_epochs=0.0)
    _, run = train(cfg, split, run_dir, progress=False)
    state = torch.load(run_dir / "state.pt", map_location="cpu", weights_only=False)
    start = time.time()
    torch.save(state, run_dir / "state-again.pt")
    save_s = time.time() - start
    return run["history"][-1]["seconds"] / cfg.limit * len(split) + save_s


def _synthetic_split(n: int, seed: int = 0):
    """``n`` random 32x32 images of 10 classes: data for the graph check, no files needed."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return Split(images, rng.integers(0, 10, n).astype(np.int64), tuple(f"c{i}" for i in range(10)), "synthetic")


def check_graph(device: str, batch_size: int, deterministic: bool = True) -> dict:
    """Train a small ResNet-8 teacher, then a student distilled from it, each for 2 epochs, once
    eagerly and once with CUDA graphs (``TrainConfig.graph``); the largest absolute difference
    between the two runs' weights, per model, and their seconds per epoch. The data covers the
    graph's warm-up, capture, replays and a last partial batch in each epoch."""
    split = _synthetic_split(7 * batch_size + batch_size // 3)
    base = TrainConfig(epochs=2, batch_size=batch_size, lr=0.1, cutout=8, blocks=1, device=device,
                       deterministic=deterministic, threads=TrainConfig().threads)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in (("teacher", base),
                          ("student", replace(base, teacher=f"{tmp}/teacher-eager", kd_weight=0.7))):
            models = {}
            for mode in ("eager", "graph"):
                model, run = train(replace(cfg, graph=mode == "graph"), split, f"{tmp}/{name}-{mode}", progress=False)
                models[mode] = model.state_dict()
                result[f"{name}_{mode}_seconds"] = [round(h["seconds"], 3) for h in run["history"]]
            diff = max(float((a.double() - models["graph"][k].double()).abs().max())
                       for k, a in models["eager"].items())
            result[f"{name}_max_weight_difference"] = diff
    return result


def graph_check_in_child(device: str, batch_size: int, deterministic: bool, tolerance: float = 1e-3,
                         timeout_s: float = 120.0) -> tuple[bool, dict]:
    """(whether the lease may use CUDA graphs, the check's figures), from :func:`check_graph` run
    in a child process, so that a failed capture cannot leave this process's CUDA context broken."""
    cmd = [sys.executable, "-m", "ckksnet.training.lease", "--check-graph", "--device", device,
           "--batch-size", str(batch_size)] + ([] if deterministic else ["--autotune"])
    src = str(Path(__file__).resolve().parents[2])  # the child imports this very ckksnet
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return False, {"error": f"graph check timed out after {timeout_s:.0f} s"}
    if res.returncode != 0:
        return False, {"error": (res.stderr or res.stdout).strip()[-1500:]}
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    worst = max(figures["teacher_max_weight_difference"], figures["student_max_weight_difference"])
    return worst <= tolerance, figures


def plan_epochs(budget_s: float, t_teacher: float, t_student: float, share: float,
                max_epochs: tuple[int, int]) -> tuple[int, int]:
    """(teacher epochs, student epochs) that fit ``budget_s`` seconds of training, the teacher
    taking ``share`` of it (no teacher epochs for a share of 0: a given teacher); each at least 1 and
    at most its ``max_epochs`` entry."""
    teacher = max(1, min(max_epochs[0], math.floor(share * budget_s / t_teacher))) if share > 0 else 0
    student = max(1, min(max_epochs[1], math.floor((budget_s - teacher * t_teacher) / t_student)))
    return teacher, student


def run(out: str, data: str | None = None, budget_s: float = 480.0, device: str = "cuda",
        teacher_depth: int = 56, student_depth: int = 20, batch_size: int = 256, lr: float = 0.2,
        cutout: int = 16, kd_weight: float = 0.7, kd_temperature: float = 4.0, teacher_share: float = 0.4,
        max_epochs: tuple[int, int] = (200, 300), limit: int | None = None, probe_images: int = 10_000,
        reserve_s: float = 25.0, seed: int = 0, deterministic: bool = True, graph: bool = True,
        teacher: str | None = None) -> dict:
    """The whole lease; returns (and writes to OUT/summary.json) the recipe and the figures. With
    ``teacher`` (a trained checkpoint or run folder) no teacher is trained: the student distils from
    it and takes the whole budget."""
    t0 = time.time()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    graph_check = None
    if graph and device.startswith("cuda"):
        graph, graph_check = graph_check_in_child(device, batch_size, deterministic)
        _log(t0, f"CUDA graph check: {'used' if graph else 'NOT used (eager steps)'}; {json.dumps(graph_check)}")
    train_split, test_split = load_cifar10("train", data), load_cifar10("test", data)
    if limit:
        train_split = train_split.stratified(limit)  # the copies are class-sorted
    _log(t0, f"data: {len(train_split)} train, {len(test_split)} test images ({train_split.source})")
    base = TrainConfig(epochs=1, batch_size=batch_size, lr=lr, cutout=cutout, seed=seed, device=device,
                       warmup_epochs=2.0, threads=TrainConfig().threads, deterministic=deterministic,
                       graph=graph)
    t_cfg = replace(base, blocks=(teacher_depth - 2) // 6)
    probe_dir = out_dir / "probe"
    t_teacher = 0.0 if teacher else probe_epoch_seconds(t_cfg, train_split, probe_dir / "teacher", probe_images)
    s_probe = replace(base, blocks=(student_depth - 2) // 6, teacher=teacher or str(probe_dir / "teacher"),
                      kd_weight=kd_weight, kd_temperature=kd_temperature)
    t_student = probe_epoch_seconds(s_probe, train_split, probe_dir / "student", probe_images)
    shutil.rmtree(probe_dir)  # only its timings matter; the lease brings back few files
    left = budget_s - (time.time() - t0) - reserve_s
    n_teacher, n_student = plan_epochs(left, t_teacher, t_student, 0.0 if teacher else teacher_share, max_epochs)
    _log(t0, f"probe: teacher ResNet-{teacher_depth} {t_teacher:.2f} s/epoch, student ResNet-{student_depth} "
             f"with distillation {t_student:.2f} s/epoch; {left:.0f} s left -> {n_teacher} + {n_student} epochs")
    summary = {"device": device, "budget_s": budget_s, "cuda_graph": graph, "graph_check": graph_check,
               "data": train_split.source,
               "probe_seconds_per_epoch": {"teacher": round(t_teacher, 3), "student_kd": round(t_student, 3)}}
    t_cfg = replace(t_cfg, epochs=n_teacher)
    s_cfg = replace(s_probe, epochs=n_student, teacher=teacher or str(out_dir / "teacher"))
    phases = (("teacher", t_cfg, teacher_depth),) if not teacher else ()
    for name, cfg, depth in phases + (("student", s_cfg, student_depth),):
        summary[name] = {"depth": depth, "epochs": cfg.epochs, "config": asdict(cfg), "finished": False}
        _write_summary(out_dir, summary, t0)  # a lease cut short still says what it was doing
        summary[name] |= _train_and_test(cfg, train_split, test_split, out_dir / name)
        _log(t0, f"{name}: {summary[name]['test_accuracy']:.2f}% on {test_split.source} test")
    _write_summary(out_dir, summary, t0)
    return summary


def _train_and_test(cfg: TrainConfig, train_split, test_split, run_dir: Path) -> dict:
    """Train ``cfg`` in ``run_dir``, then its test accuracy (%) and seconds per epoch."""
    model, run = train(cfg, train_split, run_dir, progress=False)
    acc = evaluate(model.to(cfg.device), test_split)  # on the device: seconds, not a minute
    return {"finished": True, "test_accuracy": acc["accuracy"],
            "epoch_seconds": [round(h["seconds"], 3) for h in run["history"]]}


def _write_summary(out_dir: Path, summary: dict, t0: float) -> None:
    summary["seconds"] = round(time.time() - t0, 1)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ckksnet.training.lease", description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="folder for the run folders, summary.json (required unless --check-graph)")
    ap.add_argument("--data", help="CIFAR-10 location (default: $CKKSNET_DATA or ../shared/data)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="seconds for everything (default 480)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--teacher-depth", type=int, default=56)
    ap.add_argument("--teacher", help="distil from this trained teacher (checkpoint folder or run folder) "
                                      "instead of training one: the whole budget goes to the student")
    ap.add_argument("--student-depth", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--cutout", type=int, default=16)
    ap.add_argument("--kd-weight", type=float, default=0.7)
    ap.add_argument("--kd-temperature", type=float, default=4.0)
    ap.add_argument("--teacher-share", type=float, default=0.4)
    ap.add_argument("--max-epochs", type=int, nargs=2, default=(200, 300), metavar=("TEACHER", "STUDENT"))
    ap.add_argument("--limit", type=int, help="train on the first LIMIT images only (tests)")
    ap.add_argument("--probe-images", type=int, default=10_000)
    ap.add_argument("--reserve-s", type=float, default=25.0, help="seconds kept for evaluation and writing")
    ap.add_argument("--autotune", action="store_true",
                    help="autotuned (non-deterministic) cuDNN algorithms: faster, not bit-reproducible")
    ap.add_argument("--no-graph", action="store_true", help="eager steps on a GPU (no CUDA graphs)")
    ap.add_argument("--check-graph", action="store_true",
                    help="only compare CUDA-graph and eager training on synthetic data; print JSON")
    a = ap.parse_args(argv)
    if a.check_graph:
        print(json.dumps(check_graph(a.device, a.batch_size, not a.autotune)))
        return 0
    if not a.out:
        ap.error("--out is required")
    summary = run(a.out, a.data, a.budget_s, a.device, a.teacher_depth, a.student_depth, a.batch_size, a.lr,
                  a.cutout, a.kd_weight, a.kd_temperature, a.teacher_share, tuple(a.max_epochs), a.limit,
                  a.probe_images, a.reserve_s, deterministic=not a.autotune, graph=not a.no_graph,
                  teacher=a.teacher)
    print(json.dumps({k: summary[k] for k in ("seconds", "probe_seconds_per_epoch")}
                     | {w: {k: summary[w][k] for k in ("epochs", "test_accuracy")} for w in ("teacher", "student") if w in summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
