"""The main job's code path (ckksnet infer) end to end at the test preset, with a small
checkpoint and a small image folder made here (ResNet-20 itself needs the secure preset)."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from ckksnet.cli import main as cli
from ckksnet.models import ResNetCifar, save_checkpoint
from ckksnet.training import calibrate


def test_infer_json_reports_each_image(tmp_path, capsys):
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
    rc = cli(["infer", "--images", "2", "--preset", "test", "--checkpoint", str(tmp_path / "ck"),
              "--data", str(tmp_path / "data"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["preset"] == "test" and len(out["images"]) == 2
    for rec in out["images"]:
        assert rec["enc_pred"] == rec["plain_pred"]
        assert rec["max_abs_logit_diff"] < 1e-2  # alpha-13 ReLU approximation + CKKS noise
        assert set(rec) >= {"label", "plain_pred", "enc_pred", "max_abs_logit_diff", "seconds"}
    assert out["agreement"] == 1.0 and out["report"]["bootstraps"] > 0
    assert {s["kind"] for s in out["report"]["steps"]} == {"linear", "relu", "add", "pool"}
    # the text output: one line per image, then agreement, keys and memory
    rc = cli(["infer", "--images", "1", "--preset", "test", "--checkpoint", str(tmp_path / "ck"),
              "--data", str(tmp_path / "data")])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert rc == 0 and "(same)" in lines[-2] and lines[-1].startswith("100% of encrypted predictions")
    assert "automorphism keys present" in lines[-1] and lines[-1].endswith("GiB")
