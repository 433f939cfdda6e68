"""The training path a GPU lease runs (issue #31), checked on the CPU: augmentation drawn where the
data lives has the reference distribution, distillation, the teacher recorded, the prepared lease
command end to end, and temporary files that two writers never share."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ckksnet.core.envelope import temporary_path
from ckksnet.training.train import augment, cut_out, distillation_loss
from tests.helpers import synthetic_split

ROOT = Path(__file__).resolve().parents[1]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _coordinates(n: int = 1) -> torch.Tensor:
    """Padded 40x40 uint8 images whose pixel (y, x) holds (y + 1, x + 1, 7): a crop tells its offset."""
    ys, xs = np.meshgrid(np.arange(40), np.arange(40), indexing="ij")
    img = np.stack([ys + 1, xs + 1, np.full_like(ys, 7)], -1).astype(np.uint8)
    return torch.from_numpy(np.repeat(img[None], n, 0))


@pytest.mark.parametrize("device", DEVICES)
def test_augmentation_draws_uniform_offsets_and_fair_flips_where_the_data_lives(device):
    """Crop offsets uniform over 0..8 on both axes, flips at rate 1/2, cutout squares of the right
    area: the distribution of the reference augmentation, drawn on ``device``."""
    n = 20_000
    padded = _coordinates().to(device)
    gen = torch.Generator(device=device).manual_seed(3)
    x = augment(padded, torch.zeros(n, dtype=torch.int64, device=device), gen)
    assert x.device.type == device and x.shape == (n, 3, 32, 32)
    px = (x * 255).round().long().cpu()
    oy = px[:, 0, 0, 0] - 1
    left, right = px[:, 1, 0, 0] - 1, px[:, 1, 0, 31] - 1
    flipped = left > right
    ox = torch.where(flipped, right, left)
    assert torch.all((0 <= oy) & (oy <= 8)) and torch.all((0 <= ox) & (ox <= 8))
    for offsets in (oy, ox):
        counts = torch.bincount(offsets, minlength=9).double()
        assert torch.all((counts - n / 9).abs() < 6 * (n / 9) ** 0.5), counts  # 6 sigma
    assert abs(float(flipped.double().mean()) - 0.5) < 6 * (0.25 / n) ** 0.5
    holes = cut_out(x.clone(), 8, gen)
    zeroed = (holes == 0).all(1).double().mean(dim=(1, 2)).cpu()
    # an 8x8 square (clipped at the border when its centre is near it): 64 / 1024 pixels at most
    assert float(zeroed.max()) == pytest.approx(64 / 1024) and 0.02 < float(zeroed.mean()) < 64 / 1024


@pytest.mark.parametrize("device", DEVICES)
def test_cuda_graph_steps_train_as_the_eager_steps(device):
    """The lease's own check: teacher and distilled student, 2 epochs each with warm-up, capture,
    replays and a last partial batch, trained with and without CUDA graphs end with the same
    weights (on the CPU both runs are eager: the check then shows the runs are deterministic)."""
    from ckksnet.training.lease import check_graph

    figures = check_graph(device, 16)
    assert figures["teacher_max_weight_difference"] <= (0.0 if device == "cpu" else 1e-3)
    assert figures["student_max_weight_difference"] <= (0.0 if device == "cpu" else 1e-3)
    assert len(figures["student_graph_seconds"]) == 2


def test_make_step_replays_a_graph_only_on_a_cuda_device():
    from ckksnet.models.resnet import ResNetCifar
    from ckksnet.training.train import TrainConfig, _EagerStep, _GraphStep, make_step

    model = ResNetCifar(1, (4, 8, 8), 10)
    assert type(make_step(model, TrainConfig(device="cpu", graph=True), None)) is _EagerStep
    assert type(make_step(model, TrainConfig(device="cuda", graph=False), None)) is _EagerStep
    assert type(make_step(model, TrainConfig(device="cuda", graph=True), None)) is _GraphStep


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback where CUDA graphs cannot run")
def test_a_failed_graph_check_makes_the_lease_run_eagerly():
    """The check runs in a child process; where it fails (here: no CUDA device), the lease is told
    not to use graphs and gets the child's error to log."""
    from ckksnet.training.lease import graph_check_in_child

    use, figures = graph_check_in_child("cuda", 16, True, timeout_s=120)
    assert use is False and figures["error"]
    assert "usage:" not in figures["error"]  # the child ran the check (it once stopped at a missing --out)


def test_distillation_loss_is_zero_only_for_the_teachers_distribution():
    t = torch.randn(8, 10)
    assert float(distillation_loss(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(t + torch.randn(8, 10), t, 4.0)) > 1e-3
    # T^2 scaling: a temperature change keeps the gradient scale of the cross-entropy's order
    s = torch.randn(8, 10)
    assert float(distillation_loss(s, t, 1.0)) > 0 and float(distillation_loss(s, t, 8.0)) > 0


def test_train_with_a_teacher_first_records_it_in_the_checkpoint(tmp_path, monkeypatch):
    from ckksnet.deploy.cli import main as cli

    data = synthetic_split(64)
    import ckksnet.data as D
    monkeypatch.setattr(D, "load_cifar10", lambda split, data_path=None, **kw: data)
    out = tmp_path / "ck"
    rc = cli(["train", "--epochs", "1", "--blocks", "1", "--widths", "4", "8", "8", "--run-dir",
              str(tmp_path / "run"), "--out", str(out), "--calibration-images", "16", "--threads", "1",
              "--teacher-depth", "14", "--teacher-epochs", "1", "--batch-size", "32", "--no-progress"])
    assert rc == 0
    assert (tmp_path / "run" / "teacher" / "state.pt").is_file()
    teacher_state = torch.load(tmp_path / "run" / "teacher" / "state.pt", weights_only=False)
    assert teacher_state["config"]["blocks"] == 2 and teacher_state["epoch"] == 1
    cfg = json.loads((out / "model.json").read_text())["training"]["config"]
    assert cfg["teacher"] == str(tmp_path / "run" / "teacher")
    assert cfg["kd_weight"] == 0.7 and cfg["kd_temperature"] == 4.0


def _image_folder(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, name in enumerate(("dark", "bright")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                level = 70 if c == 0 else 170
                img = np.clip(level + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


@pytest.mark.slow
def test_the_prepared_lease_command_runs_within_its_budget_on_the_cpu(tmp_path):
    """benchmarks/train_gpu.sh as a lease runs it (here DEVICE=cpu): probe, teacher, distilled
    student, summary; only the files that come back from a lease are left in OUT."""
    data = _image_folder(tmp_path / "data", 48)
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "DATA": str(data), "BUDGET_S": "60", "DEVICE": "cpu",
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "CKKSNET_CACHE": str(tmp_path / "cache")}
    args = ["--teacher-depth", "8", "--student-depth", "8", "--batch-size", "32", "--probe-images", "64",
            "--max-epochs", "2", "3", "--reserve-s", "5"]
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "train_gpu.sh"), *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seconds"] < 60 + 30  # the budget, with the evaluation's slack
    assert 1 <= summary["teacher"]["epochs"] <= 2 and 1 <= summary["student"]["epochs"] <= 3
    assert summary["student"]["config"]["teacher"] == str(out / "teacher")
    assert summary["student"]["config"]["kd_weight"] == 0.7
    assert len(summary["student"]["epoch_seconds"]) == summary["student"]["epochs"]
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["log.txt", "student/state.pt", "summary.json", "teacher/state.pt"]
    assert "probe:" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_a_lease_with_a_given_teacher_trains_only_the_student(tmp_path):
    """``--teacher CHECKPOINT``: no teacher phase; the student distils from the given teacher, whose
    path the summary's recipe records; the probe's estimate is the epoch itself, not the set-up."""
    from ckksnet.models.resnet import ResNetCifar
    from ckksnet.models import save_checkpoint
    from ckksnet.training.lease import main as lease

    data = _image_folder(tmp_path / "data", 24)
    teacher = tmp_path / "teacher"
    save_checkpoint(ResNetCifar(1, (4, 8, 8), 2).eval(), {}, teacher)
    out = tmp_path / "out"
    rc = lease(["--out", str(out), "--data", str(data), "--device", "cpu", "--teacher", str(teacher),
                "--student-depth", "8", "--batch-size", "16", "--probe-images", "32", "--max-epochs", "1", "2",
                "--budget-s", "30", "--reserve-s", "0"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "teacher" not in summary and summary["student"]["finished"]
    assert summary["student"]["config"]["teacher"] == str(teacher)
    assert summary["probe_seconds_per_epoch"]["teacher"] == 0.0
    assert summary["probe_seconds_per_epoch"]["student_kd"] < 3 * max(summary["student"]["epoch_seconds"]) + 1


def test_two_writers_never_share_a_temporary_file(tmp_path):
    """The data cache and every atomic write use a temporary name of their own: concurrent writers
    of one file both succeed and the file is whole."""
    from ckksnet.data import _read_cache, _write_cache

    target = tmp_path / "cache.npz"
    names = {temporary_path(target) for _ in range(100)}
    assert len(names) == 100 and all(p.parent == tmp_path for p in names)
    split = synthetic_split(200)
    errors = []

    def write():
        try:
            for _ in range(10):
                _write_cache(target, split)
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed cache write only warns: make it fail the test
        threads = [threading.Thread(target=write) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert np.array_equal(_read_cache(target).images, split.images)
    assert not list(tmp_path.glob("*.tmp"))
