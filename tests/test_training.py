"""Training, resume, evaluation and calibration on a tiny synthetic task."""
from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from ckksnet.deploy.cli import main as cli
from ckksnet.models import load_checkpoint, resnet20
from ckksnet.training import TrainConfig, calibrate, evaluate, to_tensor, train
from tests.helpers import synthetic_split


CFG = TrainConfig(epochs=3, batch_size=32, lr=0.05, warmup_epochs=0.5, blocks=1, widths=(4, 8, 8),
                  threads=1)


def test_loss_decreases(tmp_path):
    model, run = train(CFG, synthetic_split(256), tmp_path, progress=False)
    losses = [h["loss"] for h in run["history"]]
    assert losses[-1] < losses[0] * 0.8
    assert evaluate(model, synthetic_split(200, seed=1))["accuracy"] > 80.0


def test_resume_continues_exactly(tmp_path):
    data = synthetic_split(128)
    straight, _ = train(replace(CFG, epochs=2), data, tmp_path / "a", progress=False)
    cfg = replace(CFG, epochs=2)
    state = tmp_path / "b"
    # interrupt the 2-epoch run right after epoch 1 was saved, then resume it
    T = sys.modules["ckksnet.training.train"]  # the module, not the function it exports
    orig = T._save_state
    calls = []

    def save_then_stop(path, st):
        orig(path, st)
        calls.append(st["epoch"])
        if st["epoch"] == 1:
            raise KeyboardInterrupt

    T._save_state = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, data, state, progress=False)
    finally:
        T._save_state = orig
    resumed, run = train(cfg, data, state, progress=False)
    assert calls == [1] and [h["epoch"] for h in run["history"]] == [1, 2]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_refuses_other_config(tmp_path):
    train(replace(CFG, epochs=1), synthetic_split(64), tmp_path, progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        train(replace(CFG, epochs=1, lr=0.2), synthetic_split(64), tmp_path, progress=False)


def test_calibration_matches_direct_computation():
    torch.manual_seed(0)
    model = resnet20().eval()
    images = synthetic_split(40).images
    stats = calibrate(model, images, q=0.999, batch_size=16)
    relus = {n for n, m in model.named_modules() if isinstance(m, nn.ReLU)}
    assert set(stats) == relus and len(relus) == 19  # 1 stem + 2 per block x 9 blocks
    captured = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: captured.setdefault(n, []).append(inp[0].abs().flatten()) and None)
             for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(to_tensor(images))
    for h in hooks:
        h.remove()
    for name, s in stats.items():
        values = torch.cat(captured[name]).double()
        assert s["count"] == values.numel()
        assert s["max_abs"] == pytest.approx(float(values.max()), rel=1e-5)
        k = int(np.ceil(values.numel() * (1 - 0.999)))
        want = float(torch.topk(values, k).values[-1])  # nearest-rank upper quantile
        assert s["percentile"] == pytest.approx(want, rel=1e-5)
        assert s["percentile"] <= s["max_abs"]


def test_cli_train_writes_checkpoint_and_eval_reads_it(tmp_path, capsys, monkeypatch):
    data = synthetic_split(96)
    import ckksnet.data as D
    monkeypatch.setattr(D, "load_cifar10", lambda split, data_path=None, **kw: data)
    out = tmp_path / "ck"
    rc = cli(["train", "--epochs", "1", "--blocks", "1", "--widths", "4", "8", "8", "--run-dir",
              str(tmp_path / "run"), "--out", str(out), "--calibration-images", "32", "--threads", "1"])
    assert rc == 0
    meta = json.loads((out / "model.json").read_text())
    assert set(meta["calibration"]["relus"]) and meta["training"]["config"]["seed"] == 0
    assert meta["config"]["mean"] and meta["config"]["std"]
    model, _ = load_checkpoint(out)
    capsys.readouterr()
    assert cli(["eval", "--checkpoint", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 96 and set(report["per_class"]) == {"dark", "bright"}
    assert report["accuracy"] == evaluate(model, data)["accuracy"]


def test_cli_reports_missing_data(tmp_path, capsys):
    rc = cli(["eval", "--checkpoint", str(tmp_path / "none")])
    assert rc == 2 and "no such checkpoint folder" in capsys.readouterr().err
