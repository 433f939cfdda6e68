"""The client/server command-line flow across separate processes, at the test preset.

``examples/client_server.sh`` runs compile, keygen, encrypt, run, decrypt and predict, each a
process of its own sharing only files, on a tiny random-weight ResNet and an 8x8 PNG; the test
then reads what each command wrote. The image checks of ``encrypt`` run in this process.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from ckksnet.cli import main as cli
from ckksnet.models import ResNetCifar, save_checkpoint
from ckksnet.training import calibrate

ROOT = Path(__file__).resolve().parents[1]
SIZE = 8


def _tiny_checkpoint(folder: Path) -> Path:
    """A ResNet with 2/4/8 channels, random weights and batch norms, calibrated on noise."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = ResNetCifar(blocks=1, widths=(2, 4, 8)).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    images = np.random.default_rng(5).integers(0, 256, (32, SIZE, SIZE, 3), dtype=np.uint8)
    return save_checkpoint(model, {"calibration": {"relus": calibrate(model, images)}}, folder)


def _png(path: Path, shape: tuple, seed: int = 0, mode: str | None = None) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """Run the example script once; returns (work folder, its last output line)."""
    tmp = tmp_path_factory.mktemp("flow")
    ck = _tiny_checkpoint(tmp / "ck")
    image = _png(tmp / "cat.png", (SIZE, SIZE, 3), seed=3)
    env = {**os.environ, "IMAGE_SIZE": str(SIZE), "PYTHON": sys.executable, "ALPHA": "8", "EPS_BITS": "8",
           "CKKSNET": str(Path(sys.executable).parent / "ckksnet"),
           # one OpenMP thread: spinning threads make contended bootstraps far slower on 2 cores
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(["bash", str(ROOT / "examples" / "client_server.sh"), "test", str(ck), str(image),
                           str(tmp / "work")], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return tmp / "work", done.stdout.strip().splitlines()[-1]


def _read(work: Path, name: str) -> dict:
    return json.loads((work / f"{name}.json").read_text())


def test_encrypted_prediction_matches_plaintext(flow):
    work, last = flow
    assert last.startswith("encrypted prediction: ") and "MATCH" in last and "MISMATCH" not in last
    enc, plain = _read(work, "decrypt"), _read(work, "predict")["predictions"][0]
    assert np.max(np.abs(np.array(enc["logits"]) - plain["logits"])) < 2e-2  # alpha-8 ReLU + CKKS noise
    assert enc["predicted"] == plain["predicted"] and abs(sum(enc["probabilities"].values()) - 1) < 1e-9


def test_each_step_wrote_its_files(flow):
    work, _ = flow
    comp, keys = _read(work, "compile"), _read(work, "keygen")
    assert comp["preset"] == "test" and comp["bootstraps"] > 0 and Path(comp["client_plan"]).is_file()
    assert stat.S_IMODE(os.stat(keys["secret_key"]).st_mode) == 0o600
    assert not list(Path(keys["eval_keys"]).glob("secret*")) and keys["bootstrap_keys"]
    (ct,) = _read(work, "encrypt")["ciphertexts"]
    assert Path(ct["ciphertext"]).name == "cat.ckks" and not ct["resized"]
    run = _read(work, "run")
    assert len(run["report"]["steps"]) == comp["steps"] and run["report"]["bootstraps"] == comp["bootstraps"]


def test_encrypt_refuses_wrong_images_and_resizes_on_request(flow, tmp_path, capsys):
    work, _ = flow
    base = ["--keys", str(work / "keys"), "--client", str(work / "plan" / "client_plan.ckksnet"),
            "--out", str(tmp_path / "ct")]
    big = _png(tmp_path / "big.png", (12, 10, 3))
    assert cli(["encrypt", str(big), *base]) == 2
    assert "is 10x12 pixels; the model expects 8x8 (pass --resize" in capsys.readouterr().err
    assert cli(["encrypt", str(big), *base, "--resize", "--json"]) == 0
    out = capsys.readouterr()
    assert "resized from 10x12 to 8x8" in out.err and json.loads(out.out)["ciphertexts"][0]["resized"]
    assert cli(["encrypt", str(_png(tmp_path / "rgba.png", (8, 8, 4), mode="RGBA")), *base]) == 2
    assert "colour mode RGBA" in capsys.readouterr().err
    assert cli(["encrypt", str(_png(tmp_path / "gray.png", (8, 8))), *base]) == 2
    assert "grayscale" in capsys.readouterr().err
    np.save(tmp_path / "arr.npy", np.zeros((3, 8, 9)))
    assert cli(["encrypt", str(tmp_path / "arr.npy"), *base]) == 2
    assert "do not fit" in capsys.readouterr().err
    np.save(tmp_path / "ok.npy", np.full((3, SIZE, SIZE), 0.5))
    assert cli(["encrypt", str(tmp_path / "ok.npy"), *base]) == 0
    assert (tmp_path / "ct" / "ok.ckks").is_file()


def test_keygen_keeps_an_existing_secret_key(flow, capsys):
    work, _ = flow
    assert cli(["keygen", "--client", str(work / "plan" / "client_plan.ckksnet"), "--out", str(work / "keys")]) == 2
    assert "already holds a secret key" in capsys.readouterr().err
