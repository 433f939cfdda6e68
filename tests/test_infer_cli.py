"""The main job's code path (ckksnet infer) end to end at the test preset, with a small
checkpoint and a small image folder made here (ResNet-20 itself needs the secure preset)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ckksnet.deploy.cli import main as cli
from ckksnet.models import ResNetCifar, save_checkpoint
from ckksnet.training import calibrate


def _small_setup(tmp_path) -> None:
    """tmp_path/data: a 4-image test folder (8x8, two classes); tmp_path/ck: a small checkpoint."""
    rng = np.random.default_rng(5)
    for c in ("cat", "dog"):
        (tmp_path / "data" / "test" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / "data" / "test" / c / f"{i}.png")
    torch.manual_seed(0)
    model = ResNetCifar(blocks=1, widths=(2, 4, 8), num_classes=2).eval()
    calib = calibrate(model, rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8))
    save_checkpoint(model, {"calibration": {"relus": calib}, "test": {"accuracy": 50.0}}, tmp_path / "ck")


def test_infer_json_reports_each_image(tmp_path, capsys):
    _small_setup(tmp_path)
    rc = cli(["infer", "--images", "2", "--preset", "test", "--checkpoint", str(tmp_path / "ck"),
              "--data", str(tmp_path / "data"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["preset"] == "test" and len(out["images"]) == 2
    for rec in out["images"]:
        assert rec["enc_pred"] == rec["plain_pred"]
        assert rec["max_abs_logit_diff"] < 1e-2  # alpha-13 ReLU approximation + CKKS noise
        assert set(rec) >= {"label", "plain_pred", "enc_pred", "max_abs_logit_diff", "seconds"}
        assert 0 < rec["server_seconds"] <= rec["seconds"]  # the run alone; seconds add encrypt and decrypt
    assert out["agreement"] == 1.0 and out["report"]["bootstraps"] > 0
    assert {s["kind"] for s in out["report"]["steps"]} == {"linear", "relu", "add", "pool"}
    # the text output: one line per image, then agreement, keys and memory
    rc = cli(["infer", "--images", "1", "--preset", "test", "--checkpoint", str(tmp_path / "ck"),
              "--data", str(tmp_path / "data")])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert rc == 0 and "(same)" in lines[-2] and lines[-1].startswith("100% of encrypted predictions")
    assert "automorphism keys present" in lines[-1] and lines[-1].endswith("GiB")


def test_benchmark_figures_per_image_and_per_relu_sign_tables(tmp_path):
    """What benchmarks/resnet20.py --json reports per image (issue #20): the time as a ratio to a
    reference bootstrap timed right before the image in the same process, bootstraps by slot
    count, predictions, logit error, peak memory; and --relu-sign reaches the compiled ReLUs."""
    from ckksnet import inference

    _small_setup(tmp_path)
    from ckksnet.compiler.checkpoints import SignTables

    res = inference.run(1, "test", str(tmp_path / "data"), str(tmp_path / "ck"),
                        SignTables(relu_sign=[("layers.*.relu1", (10, 7))]), progress=False, reference_each=True)
    (rec,) = res["images"]
    assert rec["reference_bootstrap_seconds"] > 0 and rec["seconds"] > 0
    assert abs(rec["ratio"] - rec["seconds"] / rec["reference_bootstrap_seconds"]) < 0.01 * rec["ratio"] + 0.01
    assert rec["bootstraps_by_slots"] == {"2048": rec["bootstraps"]} and rec["bootstraps"] == res["plan_bootstraps"]
    assert rec["enc_pred"] == rec["plain_pred"] and rec["peak_rss_gb"] > 0 and rec["probe_seconds"] == 0
    assert res["relu_signs"] == [["layers.*.relu1", [10, 7]]]


def test_relu_sign_patterns_pick_tables_per_relu(tmp_path):
    from ckksnet.compiler import compile
    from ckksnet.compiler.phases import relu_overrides
    from ckksnet.errors import CompileError
    from ckksnet.models import load_checkpoint

    _small_setup(tmp_path)
    model, meta = load_checkpoint(tmp_path / "ck")
    relus = meta["calibration"]["relus"]
    plan = compile(model, calibration=relus, preset="test", image_size=(8, 8),
                   relu_alpha=relu_overrides([("layers.*.relu1", (10, 7))], relus))
    degrees = {s.name: s.relu.sign.degrees for s, _, _ in plan.steps if s.kind == "relu"}
    assert {n for n, d in degrees.items() if d == (31, 31)} == {n for n in relus if n.endswith("relu1")}
    assert degrees["relu"] == (15, 15, 27)  # the rest keep alpha 13, eps 2^-9
    with pytest.raises(CompileError, match="matches no ReLU"):
        relu_overrides([("conv*", (10, 7))], relus)
    with pytest.raises(SystemExit):  # argparse: PATTERN=ALPHA/EPS expected
        cli(["plan", "--preset", "test", "--checkpoint", str(tmp_path / "ck"), "--relu-sign", "bad"])


@pytest.mark.slow
def test_bundled_resnet20_full_size_encrypted_at_test_preset():
    """Issue #29's done-when, as a user types it: `ckksnet infer --images 1 --preset test --json`
    runs the bundled ResNet-20 on the first official CIFAR-10 test image (3x32x32, bit-exact) at
    the test preset, its activations spread over 2-8 ciphertexts, and the encrypted prediction
    equals the plaintext one (about 3 minutes on 2 cores; a real subprocess)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ckksnet.deploy.cli", "infer", "--images", "1", "--preset", "test",
                           "--json"], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    (rec,) = out["images"]
    assert out["preset"] == "test" and out["checkpoint"] == "bundled" and "official" in out["source"].lower()
    assert rec["index"] == 0 and rec["enc_pred"] == rec["plain_pred"]
    assert rec["max_abs_logit_diff"] < 0.05  # measured 6e-4
    # full size: the input spans 2 ciphertexts, stage 1 spans 8, each refreshed one by one
    assert rec["bootstraps"] == out["plan_bootstraps"] > 54
    steps = out["report"]["steps"]
    assert sum(s["bootstraps"] for s in steps) == rec["bootstraps"] and max(s["bootstraps"] for s in steps) >= 8
