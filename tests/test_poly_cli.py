"""`ckksnet train --activation poly2 --init-from ... --teacher ...` then `ckksnet plan` on the
polynomial checkpoint (issue 37), on tiny synthetic data."""
from __future__ import annotations

import json

import numpy as np

from ckksnet.deploy.cli import main as cli
from ckksnet.models import load_checkpoint
from tests.helpers import synthetic_split


def test_cli_init_from_a_relu_checkpoint_with_a_teacher_then_plan(tmp_path, capsys, monkeypatch):
    """A tiny ReLU ResNet trained and exported; then `train --activation poly2 --init-from` it,
    distilled from it (`--teacher`); `plan` lists each activation with its kind and levels."""
    data = synthetic_split(96)
    import ckksnet.data as D
    monkeypatch.setattr(D, "load_cifar10", lambda split, data_path=None, **kw: data)
    tiny = ["--epochs", "1", "--blocks", "1", "--widths", "4", "8", "8", "--calibration-images", "32",
            "--threads", "1", "--no-progress"]
    relu = tmp_path / "relu"
    assert cli(["train", *tiny, "--run-dir", str(tmp_path / "run_relu"), "--out", str(relu)]) == 0
    poly = tmp_path / "poly"
    assert cli(["train", *tiny, "--run-dir", str(tmp_path / "run_poly"), "--out", str(poly), "--activation", "poly2",
                "--init-from", str(relu), "--teacher", str(relu), "--kd-weight", "0.5", "--clip-grad", "1",
                "--init-fit", "data", "--ramp-epochs", "0.5", "--train-clamp-epochs", "0.5"]) == 0
    model, meta = load_checkpoint(poly)
    relu_meta = json.loads((relu / "model.json").read_text())
    assert meta["training"]["config"]["init_from"] == str(relu) and meta["training"]["config"]["kd_weight"] == 0.5
    assert meta["training"]["config"]["init_fit"] == "data" and meta["training"]["config"]["ramp_epochs"] == 0.5
    assert meta["training"]["config"]["train_clamp_epochs"] == 0.5
    capsys.readouterr()
    assert cli(["plan", "--checkpoint", str(poly), "--preset", "test", "--image-size", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    acts = {a["step"]: a for a in report["activations"]}
    assert set(acts) == set(relu_meta["calibration"]["relus"])
    assert {a["activation"] for a in acts.values()} == {"poly2"} and {a["levels"] for a in acts.values()} <= {1, 2}
    assert acts["layers.0.relu1"]["levels"] == 1  # read by a convolution only: folded
    assert cli(["plan", "--checkpoint", str(poly), "--preset", "test", "--image-size", "8"]) == 0
    assert "x poly2 at 1 level" in capsys.readouterr().out
    # --init-from a checkpoint of another shape is refused, naming both
    assert cli(["train", *tiny[:2], "--blocks", "2", "--widths", "4", "8", "8", "--run-dir", str(tmp_path / "r3"),
                "--out", str(tmp_path / "o3"), "--activation", "poly2", "--init-from", str(relu)]) != 0
    assert "1 blocks per stage" in capsys.readouterr().err
