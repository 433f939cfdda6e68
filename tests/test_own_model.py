"""Your own model end to end: any ``nn.Module`` through the command line (``--model
MODULE:FACTORY --weights --input-shape --calibration``), models without a convolution (an MLP on
1-channel images), and the errors a user meets on the way. Test preset; random weights with
random BatchNorm statistics; every result compared with torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import ckksnet
from ckksnet.compiler.checkpoints import load_factory_model
from ckksnet.deploy.cli import main as cli
from ckksnet.core.preset import InsecurePresetWarning
from ckksnet.errors import CompileError
from tests.helpers import random_batchnorms

CKKSNET = str(Path(sys.executable).parent / "ckksnet")
SIGNS = ["--alpha", "8", "--eps-bits", "8"]  # a shallow sign table: no bootstrap, quick keys

#: the user's module, in the folder the commands run from (not on sys.path otherwise)
MODULE = textwrap.dedent('''
    import torch.nn as nn


    class TinyNet(nn.Module):
        """1-channel 8x8 images: conv, batch norm, ReLU, then a linear layer."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4 * 8 * 8, 10)

        def forward(self, x):
            return self.fc(self.relu(self.bn(self.conv(x))).flatten(1))


    def mlp():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 5))


    def rgb():
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 10))


    ANSWER = 42


    def not_a_module():
        return "a string"


    def broken():
        raise RuntimeError("no weights here")
''')


def _torch_logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(images, dtype=np.float32))).double().numpy()


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A folder holding ``own_nets.py``, TinyNet's and the MLP's weights (random, random batch
    norms) and calibration images; returns (folder, TinyNet with those weights, images)."""
    folder = tmp_path_factory.mktemp("own")
    (folder / "own_nets.py").write_text(MODULE)
    sys.path.insert(0, str(folder))
    try:
        import own_nets
    finally:
        sys.path.remove(str(folder))
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(4)
    model = random_batchnorms(own_nets.TinyNet(), gen)
    torch.save(model.state_dict(), folder / "tiny.pt")
    torch.save(random_batchnorms(own_nets.mlp(), gen).state_dict(), folder / "mlp.pt")
    images = np.random.default_rng(7).random((24, 1, 8, 8))
    np.savez(folder / "calibration.npz", images=images)
    np.save(folder / "digit.npy", images[0])
    return folder, model, images


@pytest.mark.slow
def test_the_command_line_takes_a_factory_model(own, tmp_path, capsys, monkeypatch):
    """compile (a process of its own, importing the module from its working folder) -> client plan
    that records the input -> keygen -> encrypt without --image-size -> run -> decrypt, against
    torch and against ``ckksnet predict --model``."""
    folder, model, images = own
    out = tmp_path / "plan"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([CKKSNET, "compile", "--model", "own_nets:TinyNet", "--weights", "tiny.pt",
                           "--input-shape", "1", "8", "8", "--calibration", "calibration.npz", "--preset", "test",
                           "--out", str(out), *SIGNS, "--json"], cwd=folder, capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    comp = json.loads(done.stdout)
    assert comp["input_shape"] == [1, 8, 8] and comp["bootstraps"] == 0
    spec = ckksnet.load_client_spec(out / "client_plan.ckksnet")
    assert spec.input_shape == (1, 8, 8)
    client = ["--client", str(out / "client_plan.ckksnet")]
    assert cli(["keygen", *client, "--out", str(tmp_path / "keys")]) == 0
    keys = ["--keys", str(tmp_path / "keys")]
    assert cli(["encrypt", str(folder / "digit.npy"), *keys, *client, "--out", str(tmp_path / "ct")]) == 0
    assert cli(["run", "--plan", str(out / "server_plan.ckksnet"), "--eval-keys", str(tmp_path / "keys" / "eval"),
                "--in", str(tmp_path / "ct" / "digit.ckks"), "--out", str(tmp_path / "out.ckks")]) == 0
    capsys.readouterr()
    assert cli(["decrypt", str(tmp_path / "out.ckks"), *keys, *client, "--json"]) == 0
    enc = json.loads(capsys.readouterr().out)
    want = _torch_logits(model, images[:1])[0]
    assert np.max(np.abs(np.array(enc["logits"]) - want)) < 2e-2  # alpha-8 ReLU + CKKS noise
    assert enc["predicted_index"] == int(want.argmax())
    monkeypatch.chdir(folder)  # predict imports the module from the current folder too
    assert cli(["predict", "digit.npy", "--model", "own_nets:TinyNet", "--weights", "tiny.pt", "--input-shape", "1", "8",
                "8", "--json"]) == 0
    (plain,) = json.loads(capsys.readouterr().out)["predictions"]
    assert np.max(np.abs(np.array(plain["logits"]) - want)) < 1e-5  # the same torch model
    assert cli(["predict", "digit.npy", "--model", "own_nets:TinyNet", "--weights", "tiny.pt"]) == 2
    err = capsys.readouterr().err  # no size guessed for a factory's model (32x32 once, silently)
    assert "give --input-shape C H W (or --image-size N)" in err, err
    assert cli(["predict", "digit.npy", "--model", "own_nets:TinyNet", "--weights", "tiny.pt", "--image-size", "32"]) == 2
    err = capsys.readouterr().err  # the .npy is 8x8
    assert "digit.npy: images of shape (1, 8, 8)" in err and "(1, 32, 32)" in err, err
    np.save(folder / "big.npy", np.zeros((1, 16, 16)))
    assert cli(["predict", "big.npy", "--model", "own_nets:TinyNet", "--weights", "tiny.pt", "--image-size", "16"]) == 2
    assert "the model does not run on 1x16x16 images" in capsys.readouterr().err
    # the flags still work when given, and a mismatch is refused
    assert cli(["encrypt", str(folder / "digit.npy"), *keys, *client, "--out", str(tmp_path / "ct2"),
                "--input-shape", "1", "8", "8", "--image-size", "8"]) == 0
    assert cli(["encrypt", str(folder / "digit.npy"), *keys, *client, "--out", str(tmp_path / "ct3"),
                "--image-size", "16"]) == 2
    assert "--image-size 16 disagrees with the client plan, compiled for 8x8 images" in capsys.readouterr().err
    assert cli(["encrypt", str(folder / "digit.npy"), *keys, *client, "--out", str(tmp_path / "ct3"),
                "--input-shape", "3", "8", "8"]) == 2
    assert "compiled for 1x8x8 inputs" in capsys.readouterr().err


def test_plan_takes_a_factory_model_without_convolution(own, capsys, monkeypatch):
    """`ckksnet plan` on an MLP: the channels come from --input-shape alone."""
    folder, _, _ = own
    monkeypatch.chdir(folder)
    assert cli(["plan", "--model", "own_nets:mlp", "--weights", "mlp.pt", "--input-shape", "1", "8", "8",
                "--calibration", "calibration.npz", "--preset", "test", *SIGNS, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [s["kind"] for s in rep["steps"]] == ["linear", "relu", "linear"] and rep["input_shape"] == [1, 8, 8]
    assert cli(["plan", "--model", "own_nets:mlp", "--weights", "mlp.pt", "--calibration", "calibration.npz",
                "--preset", "test"]) == 2
    assert "give --input-shape C H W (or --image-size N)" in capsys.readouterr().err  # no size is guessed
    # issue 38: its first dense layer reads 64 = 1 x 8 x 8 values: one channel, inferred
    assert cli(["plan", "--model", "own_nets:mlp", "--weights", "mlp.pt", "--calibration", "calibration.npz",
                "--preset", "test", "--image-size", "8", *SIGNS, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_shape"] == [1, 8, 8]
    assert cli(["plan", "--model", "own_nets:mlp", "--weights", "mlp.pt", "--calibration", "calibration.npz",
                "--preset", "test", "--image-size", "7"]) == 2  # 64 values are no C x 7 x 7
    assert "cannot tell how many channels the input has" in capsys.readouterr().err


def test_an_mlp_on_one_channel_images_runs_encrypted():
    """Flatten, Linear, BatchNorm1d, ReLU, Linear, ReLU, Linear on 1x28x28 (MNIST's shape): the
    twin and the encrypted run against torch."""
    torch.manual_seed(11)
    model = random_batchnorms(nn.Sequential(nn.Flatten(), nn.Linear(784, 24), nn.BatchNorm1d(24), nn.ReLU(),
                                            nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 10)),
                              torch.Generator().manual_seed(12))
    images = np.random.default_rng(13).integers(0, 256, (16, 28, 28), dtype=np.uint8)  # grayscale uint8 (N, H, W)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        net = ckksnet.compile(model, calibration=images, preset="test", input_shape=(1, 28, 28),
                              alpha=8, eps_bits=8)
    assert net.input_shape == (1, 28, 28) and net.client_spec().input_shape == (1, 28, 28)
    want = _torch_logits(model, images[:4, None] / 255.0)
    twin = net.twin(images[:4], strict=True)
    assert np.max(np.abs(twin - want)) < 2e-2 and np.array_equal(twin.argmax(1), want.argmax(1))
    client = ckksnet.Client(net)
    server = ckksnet.Server(net, client.evaluation_keys())
    got = client.decrypt(server.run(client.encrypt(images[0])))
    assert np.max(np.abs(got - twin[0])) < 1e-3 and got.argmax() == want[0].argmax()


def test_eval_takes_a_factory_model(own, capsys, monkeypatch):
    """`ckksnet eval --model`: CIFAR-10 test images (their centres for a smaller input); a model
    for another shape is refused."""
    folder, _, _ = own
    monkeypatch.chdir(folder)
    assert cli(["eval", "--model", "own_nets:rgb", "--image-size", "8", "--data", "foolbox", "--limit", "10",
                "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 10 and "each image's 8x8 centre" in result["source"]
    assert cli(["eval", "--model", "own_nets:TinyNet", "--image-size", "8", "--data", "foolbox"]) == 2
    assert "eval reads CIFAR-10's 3x32x32 test images; the model takes 1x8x8" in capsys.readouterr().err


def test_input_shape_errors():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 2))
    images = np.random.default_rng(0).random((4, 1, 4, 4))
    # issue 38: the dense layer (16 = 1 x 4 x 4 inputs) and the images tell one channel
    assert ckksnet.compile(model, calibration=images, preset="test", image_size=(4, 4)).input_shape == (1, 4, 4)
    with pytest.raises(CompileError, match="cannot tell how many channels.*--input-shape C H W"):
        ckksnet.compile(model, calibration=images, preset="test", image_size=(3, 3))  # 16 inputs: no C x 3 x 3
    with pytest.raises(CompileError, match=r"image_size \(5, 5\) disagrees with input_shape \(1, 4, 4\)"):
        ckksnet.compile(model, calibration=images, preset="test", input_shape=(1, 4, 4), image_size=(5, 5))
    with pytest.raises(CompileError, match="input_shape must be .channels, height, width."):
        ckksnet.compile(model, calibration=images, preset="test", input_shape=(4, 4))
    conv = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 2))
    with pytest.raises(CompileError, match=r"gives 1 input channel\(s\) but the model .* takes 3"):
        ckksnet.compile(conv, calibration=images, preset="test", input_shape=(1, 4, 4))


@pytest.mark.parametrize("argv, message", [
    (["--model", "own_nets"], "expected MODULE:FACTORY"),
    (["--model", "no_such_module_here:make"], "cannot import 'no_such_module_here'"),
    (["--model", "own_nets:nothing"], "own_nets has no attribute 'nothing'"),
    (["--model", "own_nets:ANSWER"], "ANSWER is of type 'int', not callable"),
    (["--model", "own_nets:not_a_module"], "not_a_module() returned an object of type 'str', not a torch.nn.Module"),
    (["--model", "own_nets:broken"], "calling broken() failed: RuntimeError: no weights here"),
    (["--model", "own_nets:TinyNet", "--weights", "mlp.pt"],
     "--weights mlp.pt does not fit own_nets:TinyNet: missing keys bn.bias"),
    (["--model", "own_nets:TinyNet", "--weights", "nowhere.pt"], "--weights nowhere.pt: no such file"),
    (["--model", "own_nets:TinyNet", "--weights", "calibration.npz"], "not a readable torch state dict"),
    (["--weights", "tiny.pt"], "give --model too"),
    (["--model", "own_nets:TinyNet", "--checkpoint", "ck"], "not both"),
    (["--model", "own_nets:TinyNet", "--input-shape", "1", "8", "8"], "give --calibration images"),
    (["--model", "own_nets:TinyNet", "--input-shape", "3", "8", "8", "--calibration", "calibration.npz"],
     "gives 3 input channel(s) but the model (its first convolution or its mean/std) takes 1"),
    (["--model", "own_nets:TinyNet", "--input-shape", "1", "8", "8", "--image-size", "9"], "disagrees"),
    (["--model", "own_nets:TinyNet", "--input-shape", "1", "9", "9", "--calibration", "calibration.npz"],
     "--calibration calibration.npz: images of shape (24, 1, 8, 8)"),
    (["--model", "own_nets:TinyNet", "--image-size", "8", "--calibration", "nowhere.npz"],
     "--calibration nowhere.npz: no such file or folder"),
    (["--model", "own_nets:TinyNet", "--image-size", "8", "--calibration", "tiny.pt"],
     "expected an .npz or .npy file of images, or a folder of images"),
    (["--model", "own_nets:TinyNet", "--image-size", "8", "--calibration", "garbled.npz"], "not an .npz archive"),
    (["--model", "own_nets:TinyNet", "--image-size", "8", "--calibration", "two.npz"],
     "holds the arrays a, b; expected one array, or one named 'images' or 'x'"),
    (["--model", "own_nets:TinyNet", "--image-size", "8", "--calibration", "empty"], "holds no PNG, JPEG or .npy"),
])
def test_model_flag_errors(own, argv, message, capsys, monkeypatch):
    """Each mistake is one `ckksnet plan: error: ...` line (exit status 2) saying what to fix."""
    folder, _, _ = own
    monkeypatch.chdir(folder)
    (folder / "garbled.npz").write_bytes(b"not a zip")
    np.savez(folder / "two.npz", a=np.zeros(1), b=np.zeros(1))
    (folder / "empty").mkdir(exist_ok=True)
    assert cli(["plan", "--preset", "test", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ckksnet plan: error: ") and message in err and "Traceback" not in err, err


def test_compile_without_weights_warns_after_it_succeeds(own, tmp_path, capsys, monkeypatch):
    """The factory's own weights are usually random: a plan of them is said so (one warning line,
    after the plan is written, so refusals stay one line)."""
    folder, _, _ = own
    monkeypatch.chdir(folder)
    with pytest.warns(UserWarning, match="without --weights: the plan holds the factory's own weights"):
        assert cli(["compile", "--model", "own_nets:TinyNet", "--input-shape", "1", "8", "8", "--calibration",
                    "calibration.npz", "--preset", "test", *SIGNS, "--out", str(tmp_path / "plan")]) == 0
    assert (tmp_path / "plan" / "server_plan.ckksnet").exists()


def test_a_calibration_folder_and_a_module_instance(own, tmp_path, monkeypatch):
    """--calibration DIR reads PNG and .npy images of the model's size; MODULE:ATTR may also name a
    module instance, or a file path."""
    from PIL import Image

    from ckksnet.compiler.checkpoints import read_calibration

    folder, _, images = own
    Image.fromarray((images[1, 0] * 255).astype(np.uint8), "L").save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", images[2])
    got = read_calibration(str(tmp_path), (1, 8, 8))
    assert got.shape == (2, 1, 8, 8) and np.allclose(got[1], images[2])
    assert np.allclose(got[0], np.round(images[1] * 255) / 255, atol=1 / 255)
    net = nn.Linear(2, 2)
    monkeypatch.setattr(sys.modules["own_nets"], "INSTANCE", net, raising=False)
    assert load_factory_model("own_nets:INSTANCE") is net
    assert isinstance(load_factory_model(f"{folder / 'own_nets.py'}:mlp"), nn.Sequential)
    with pytest.raises(CompileError, match="no such file"):
        load_factory_model(f"{folder / 'missing.py'}:mlp")


def test_a_checkpoint_may_record_its_input_shape(tmp_path, capsys):
    """``save_checkpoint(model, {..., "input_shape": [3, 8, 8]}, folder)``: plan and predict need no
    --image-size (the ResNet is fully convolutional: --image-size still overrides the size)."""
    from ckksnet.models import ResNetCifar, save_checkpoint
    from ckksnet.training import calibrate

    torch.manual_seed(0)
    model = random_batchnorms(ResNetCifar(blocks=1, widths=(2, 4, 8)), torch.Generator().manual_seed(1))
    images = np.random.default_rng(5).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    ck = save_checkpoint(model, {"calibration": {"relus": calibrate(model, images)}, "input_shape": [3, 8, 8]},
                         tmp_path / "ck")
    assert cli(["plan", "--checkpoint", str(ck), "--preset", "test", *SIGNS, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_shape"] == [3, 8, 8]
    np.save(tmp_path / "img.npy", images[0].transpose(2, 0, 1) / 255.0)
    assert cli(["predict", str(tmp_path / "img.npy"), "--checkpoint", str(ck), "--json"]) == 0
    (pred,) = json.loads(capsys.readouterr().out)["predictions"]
    assert np.allclose(pred["logits"], _torch_logits(model, images[:1].transpose(0, 3, 1, 2) / 255.0)[0], atol=1e-5)
    # --image-size overrides it: 3x32x32 spans two 2,048-slot ciphertexts at the test preset
    assert cli(["plan", "--checkpoint", str(ck), "--preset", "test", "--image-size", "32", *SIGNS, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["input_shape"] == [3, 32, 32] and rep["input_ciphertexts"] == 2
