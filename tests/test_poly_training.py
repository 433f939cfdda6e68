"""Polynomial-aware training (issue 37) on tiny data: the boundary loss, initialisation from a ReLU
checkpoint, the divergence check, `ckksnet train --activation`, and checkpoints that hold
polynomial activations (unknown kinds refused by name)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from ckksnet.approx.poly import evaluate as poly_eval
from ckksnet.deploy.cli import main as cli
from ckksnet.errors import DataError
from ckksnet.models import load_bundled, load_checkpoint, save_checkpoint
from ckksnet.models.poly import activation_degree
from ckksnet.nn import PolyAct
from ckksnet.training import TrainConfig, evaluate, train
from ckksnet.training.poly import (ActivationMonitor, DivergenceError, boundary_loss, data_fits, init_from_relu,
                                   ramp_mix, set_relu_mix, set_train_clamp)
from tests.helpers import synthetic_split


CFG = TrainConfig(epochs=2, batch_size=32, lr=0.05, warmup_epochs=0.5, blocks=1, widths=(4, 8, 8), threads=1,
                  activation="poly2", boundary_weight=0.1, clip_grad=5.0)


def test_boundary_loss_value_and_gradient():
    """mean(relu(|x| / B - 1)^2) per layer, summed; zero inside the bound."""
    model = nn.Sequential(PolyAct(2, 2.0), PolyAct(3, 100.0))
    x = torch.tensor([3.0, -1.0, 0.5, -4.0], requires_grad=True)
    loss = boundary_loss(model, x)
    assert float(loss.detach()) == pytest.approx((0.5 ** 2 + 1.0 ** 2) / 4)  # the second layer's inputs are inside
    loss.backward()
    # d/dx: 2 (|x| / B - 1) sign(x) / (B n) beyond the bound, 0 inside
    assert torch.allclose(x.grad, torch.tensor([2 * 0.5 / 8, 0.0, 0.0, -2 * 1.0 / 8]))
    assert float(boundary_loss(model, torch.zeros(4)).detach()) == 0.0


def test_init_from_a_relu_checkpoint():
    """Each ReLU of the bundled ResNet-20 becomes its least-squares polynomial on its calibrated
    range: bound = the calibrated max |input|, error on [-B, B] within 0.1 B (degree 2)."""
    relu_model, meta = load_bundled()
    model = init_from_relu("bundled", 2)
    relus = meta["calibration"]["relus"]
    acts = {n: m for n, m in model.named_modules() if isinstance(m, PolyAct)}
    assert set(acts) == set(relus) and len(acts) == 19 and model.config["activation"] == "poly2"
    for name, act in acts.items():
        bound = float(act.bound)
        assert bound == pytest.approx(relus[name]["max_abs"], rel=1e-6)
        x = np.linspace(-bound, bound, 1001)
        err = np.abs(poly_eval(act.coefficients.detach().double().numpy(), x / bound) - np.maximum(x, 0))
        assert err.max() < 0.1 * bound
    # the rest of the weights are the checkpoint's
    state, relu_state = model.state_dict(), relu_model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in relu_state.items())
    with pytest.raises(DataError, match="poly2 activations already"):
        init_from_relu_of(model)


def init_from_relu_of(model, tmp=None):
    import tempfile

    folder = tempfile.mkdtemp()
    save_checkpoint(model, {"calibration": {"relus": {}}}, folder)
    return init_from_relu(folder, 2)


def test_polynomial_checkpoints_round_trip_and_unknown_kinds_are_refused(tmp_path):
    model = init_from_relu("bundled", 3)
    folder = save_checkpoint(model, {}, tmp_path / "ck")
    back, _ = load_checkpoint(folder)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), model.eval()(x))
    meta = json.loads((folder / "model.json").read_text())
    assert meta["config"]["activation"] == "poly3"
    meta["config"]["activation"] = "poly7"
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="'poly7' is a kind this version of ckksnet does not know"):
        load_checkpoint(folder)
    with pytest.raises(ValueError, match="'swish'"):
        activation_degree("swish")


def test_a_polynomial_resnet_trains_and_its_run_state_reloads(tmp_path):
    data = synthetic_split(128)
    model, run = train(CFG, data, tmp_path / "run", progress=False)
    assert all(np.isfinite(h["loss"]) for h in run["history"])
    assert sum(isinstance(m, PolyAct) for m in model.modules()) == 7  # 3 stages x 1 block x 2, and the stem
    assert evaluate(model, synthetic_split(64, seed=1))["accuracy"] > 60.0
    # the run resumes from its state with the polynomial model (snapshot's reader too)
    from ckksnet.training.export import load_run_state

    again, cfg, history = load_run_state(tmp_path / "run")
    assert cfg.activation == "poly2" and len(history) == 2
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        assert torch.equal(again(x), model(x))


def test_divergence_stops_naming_the_layer(tmp_path):
    cfg = replace(CFG, lr=1e4, boundary_weight=0.0, clip_grad=0.0, diverge_ratio=20.0, epochs=1)
    with pytest.raises(DivergenceError, match=r"training diverged at activation '[\w.]+': its input"):
        train(cfg, synthetic_split(128), tmp_path / "run", progress=False)


def test_monitor_names_a_non_finite_input_first_in_forward_order():
    from ckksnet.training.poly import check_divergence

    model = nn.Sequential(PolyAct(2, 1.0), nn.Identity(), PolyAct(2, 1.0))
    monitor = ActivationMonitor(model)
    out = model(torch.tensor([1.0, float("nan")]))
    with pytest.raises(DivergenceError, match="'0': its input is not finite"):
        check_divergence(monitor, out.sum(), 100.0)


def test_cli_train_with_polynomial_activations(tmp_path, capsys, monkeypatch):
    data = synthetic_split(96)
    import ckksnet.data as D
    monkeypatch.setattr(D, "load_cifar10", lambda split, data_path=None, **kw: data)
    out = tmp_path / "ck"
    rc = cli(["train", "--epochs", "1", "--blocks", "1", "--widths", "4", "8", "8", "--run-dir",
              str(tmp_path / "run"), "--out", str(out), "--calibration-images", "32", "--threads", "1",
              "--activation", "poly2", "--boundary-weight", "0.1", "--clip-grad", "5"])
    assert rc == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["config"]["activation"] == "poly2"
    assert meta["training"]["config"]["boundary_weight"] == 0.1
    assert len(meta["calibration"]["relus"]) == 7 and "layers.2.relu2" in meta["calibration"]["relus"]
    model, _ = load_checkpoint(out)
    assert isinstance(model.relu, PolyAct)


def test_ramp_blends_relu_in_train_mode_only_and_the_compiler_refuses_a_model_mid_ramp():
    """--ramp-epochs: ReLU's share falls linearly from 1 to 0; in train mode a PolyAct with share m
    gives p + m (ReLU - p); eval mode, and share 0, give the polynomial alone; a model compiled
    mid-ramp is refused by name (its polynomial is not what it was trained to compute yet)."""
    import ckksnet
    from ckksnet.errors import CompileError

    assert [ramp_mix(2, s, 10) for s in (0, 5, 10, 20, 30)] == [1.0, 0.75, 0.5, 0.0, 0.0]
    assert ramp_mix(0, 0, 10) == 0.0
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), PolyAct(2, 3.0), nn.Flatten(), nn.Linear(32, 2))
    act = model[1]
    x = torch.linspace(-3, 3, 8).reshape(2, 4)
    poly = act.eval()(x)
    set_relu_mix(model, 0.25)
    assert torch.allclose(act.train()(x), poly + 0.25 * (torch.relu(x) - poly))
    assert torch.equal(act.eval()(x), poly)
    with pytest.raises(CompileError, match="still blends in ReLU"):
        ckksnet.compile(model.eval(), calibration=np.random.default_rng(0).uniform(0, 1, (8, 1, 4, 4)).astype(np.float32),
                        input_shape=(1, 4, 4), preset="test")
    set_relu_mix(model, 0.0)
    assert not act.blending and torch.equal(act.train()(x), poly)
    # --train-clamp-epochs: in train mode the polynomial reads its input clipped to [-B, B]; never in eval mode
    set_train_clamp(model, True)
    y = 2 * x  # -6..6, beyond the bound 3
    assert torch.allclose(act.train()(y), act.eval()(y.clamp(-3, 3)))
    assert not torch.allclose(act.train()(y), act.eval()(y))
    set_train_clamp(model, False)
    assert "relu_mix" not in act.state_dict()  # training state only: never saved


def test_data_fit_is_closer_to_relu_where_the_inputs_fall():
    """init_fit "data": each polynomial fitted on the inputs its ReLU sees on training images has a
    smaller mean squared error on those inputs than the uniform fit on [-B, B], and the network
    with its first ReLUs replaced by data fits agrees more with the ReLU network."""
    from ckksnet.data import load_cifar10

    images = load_cifar10("train").stratified(200).images
    relu_model, meta = load_bundled()
    bounds = {n: float(r["max_abs"]) for n, r in meta["calibration"]["relus"].items()}
    fits = data_fits(relu_model, images, 2, bounds, samples=5000)
    seen = {}
    hook = relu_model.relu.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].reshape(-1)))
    with torch.no_grad():
        relu_model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    hook.remove()
    x = seen["x"].double().numpy()
    b = bounds["relu"]
    err_data = np.mean((poly_eval(fits["relu"], x / b) - np.maximum(x, 0)) ** 2)
    err_range = np.mean((poly_eval(PolyAct.from_relu(b, 2).coefficients.detach().double().numpy(), x / b)
                         - np.maximum(x, 0)) ** 2)
    assert err_data < 0.5 * err_range
    by_data = init_from_relu("resnet20", 2, images=images)
    assert torch.allclose(by_data.relu.coefficients.detach().double(), torch.as_tensor(fits["relu"]), rtol=0.05, atol=0.05)


def test_a_polynomial_network_that_diverges_on_its_calibration_images_is_refused():
    """A PolyAct whose inputs on the calibration images reach far beyond the bound it was trained
    for (a diverging polynomial network) is refused at compile time, naming it, not compiled into
    a plan whose encrypted run fails mid-way in OpenFHE ("Scaling factor too small")."""
    import ckksnet
    from ckksnet.errors import CompileError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), PolyAct(2, 0.001), nn.Flatten(), nn.Linear(32, 2)).eval()
    images = np.random.default_rng(0).uniform(0, 1, (8, 1, 4, 4)).astype(np.float32)
    with pytest.raises(CompileError, match=r"'1'.* x the bound B = 0.001 it was trained for"):
        ckksnet.compile(model, calibration=images, input_shape=(1, 4, 4), preset="test")
    model[1] = PolyAct(2, 2.0)  # a bound its inputs keep to: compiles
    ckksnet.compile(model, calibration=images, input_shape=(1, 4, 4), preset="test")


def test_freeze_bn_keeps_the_batch_norm_statistics(tmp_path):
    """--freeze-bn: batch norms run on their running statistics in training and keep them (a
    fine-tune computes what inference computes); without it they move."""
    data = synthetic_split(64)
    cfg = replace(CFG, epochs=1)
    frozen, _ = train(replace(cfg, freeze_bn=True), data, tmp_path / "frozen", progress=False)
    moving, _ = train(cfg, data, tmp_path / "moving", progress=False)
    bn = lambda m: [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]  # noqa: E731
    assert all(torch.equal(b.running_mean, torch.zeros_like(b.running_mean)) and
               torch.equal(b.running_var, torch.ones_like(b.running_var)) for b in bn(frozen))
    assert not all(torch.equal(b.running_mean, torch.zeros_like(b.running_mean)) for b in bn(moving))
