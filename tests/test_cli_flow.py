"""The client/server command-line flow across separate processes, at the test preset.

``examples/client_server.sh`` runs compile, keygen, serve (in the background, on a free loopback
port), query upload, encrypt, query run, decrypt and predict, each a process of its own, on a
tiny random-weight ResNet and an 8x8 PNG; the tests then read what each command wrote, run the
offline server (``ckksnet run``) on the same files, and check that the script stops the server
however it ends. The image checks of ``encrypt`` run in this process.
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ckksnet.deploy.cli import main as cli
from ckksnet.models import ResNetCifar, save_checkpoint
from ckksnet.training import calibrate
from tests.helpers import random_batchnorms

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "client_server.sh"
CKKSNET = str(Path(sys.executable).parent / "ckksnet")
SIZE = 8
pytestmark = pytest.mark.slow  # whole client/server flows through the example script and ckksnet serve


def _tiny_checkpoint(folder: Path) -> Path:
    """A ResNet with 2/4/8 channels, random weights and batch norms, calibrated on noise."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = random_batchnorms(ResNetCifar(blocks=1, widths=(2, 4, 8)), gen)
    images = np.random.default_rng(5).integers(0, 256, (32, SIZE, SIZE, 3), dtype=np.uint8)
    return save_checkpoint(model, {"calibration": {"relus": calibrate(model, images)}}, folder)


def _png(path: Path, shape: tuple, seed: int = 0, mode: str | None = None) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def _env(**extra: str) -> dict:
    return {**os.environ, "IMAGE_SIZE": str(SIZE), "PYTHON": sys.executable, "ALPHA": "8", "EPS_BITS": "8",
            "CKKSNET": CKKSNET,
            # one OpenMP thread: spinning threads make contended bootstraps far slower on 2 cores
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **extra}


def _script(ck: Path, image: Path, work: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "test", str(ck), str(image), str(work)], capture_output=True,
                          text=True, env=_env(**env), timeout=900)


def _processes_naming(text: str) -> list[str]:
    """Command lines of the live processes whose command line contains ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{proc.name}: {cmd}")
    return found


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("inputs")
    return _tiny_checkpoint(tmp / "ck"), _png(tmp / "cat.png", (SIZE, SIZE, 3), seed=3)


@pytest.fixture(scope="module")
def flow(inputs, tmp_path_factory):
    """Run the example script once, through ckksnet serve; returns (work folder, its last output line)."""
    work = tmp_path_factory.mktemp("flow") / "work"
    done = _script(*inputs, work)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return work, done.stdout.strip().splitlines()[-1]


def _read(work: Path, name: str) -> dict:
    return json.loads((work / f"{name}.json").read_text())


def test_encrypted_prediction_matches_plaintext(flow):
    work, last = flow
    assert re.match(r"encrypted prediction \(ckksnet serve at http://127\.0\.0\.1:\d+\): ", last), last
    assert "; plaintext prediction: " in last and "MATCH" in last and "MISMATCH" not in last
    enc, plain = _read(work, "decrypt"), _read(work, "predict")["predictions"][0]
    assert np.max(np.abs(np.array(enc["logits"]) - plain["logits"])) < 2e-2  # alpha-8 ReLU + CKKS noise
    assert enc["predicted"] == plain["predicted"] and abs(sum(enc["probabilities"].values()) - 1) < 1e-9
    assert f"{enc['predicted']} (class {enc['predicted_index']})" in last


def test_each_step_wrote_its_files(flow):
    work, _ = flow
    comp, keys = _read(work, "compile"), _read(work, "keygen")
    assert comp["preset"] == "test" and comp["bootstraps"] > 0 and Path(comp["client_plan"]).is_file()
    assert stat.S_IMODE(os.stat(keys["secret_key"]).st_mode) == 0o600
    assert not list(Path(keys["eval_keys"]).glob("secret*")) and keys["bootstrap_keys"]
    (ct,) = _read(work, "encrypt")["ciphertexts"]
    assert Path(ct["ciphertext"]).name == "cat.ckks" and not ct["resized"]
    assert _read(work, "upload")["keyset_id"] == keys["context_id"]
    assert "token" not in (work / "upload.json").read_text()  # the token stays in the script's environment
    health = _read(work, "health")
    assert health["status"] == "ok" and health["preset"] == "test" and health["steps"] == comp["steps"]


def test_the_server_ran_the_job_and_was_stopped(flow):
    """Upload, job, result and deletion went through HTTP; the worker loaded the key set once and
    ran every step; the script stopped the server and its workers and the key set is gone."""
    work, _ = flow
    comp, keyset = _read(work, "compile"), _read(work, "keygen")["context_id"]
    log = (work / "serve.log").read_text()
    for request in ('"POST /keysets HTTP/1.1" 201', f'"POST /keysets/{keyset}/jobs HTTP/1.1" 202',
                    '/result HTTP/1.1" 200', f'"DELETE /keysets/{keyset} HTTP/1.1" 204'):
        assert request in log, log[-3000:]
    assert "Application shutdown complete" in log  # SIGTERM: a clean stop
    records = [json.loads(line) for line in (work / "serve" / "workers.jsonl").read_text().splitlines()]
    loaded, done = records
    assert loaded["event"] == "keys_loaded" and loaded["keyset_id"] == keyset and loaded["seconds"] > 0
    assert done["event"] == "job_done" and done["bootstraps"] == comp["bootstraps"]
    assert 0 < done["run_seconds"] <= done["seconds"] and done["peak_rss_gb"] >= loaded["rss_gb"] > 0
    assert not list((work / "serve" / "keysets").iterdir())
    assert int((work / "serve.pid").read_text()) > 0
    assert not _processes_naming(str(work / "serve")), "ckksnet serve or a worker outlived the script"


def test_offline_run_gives_the_served_output(flow):
    """The offline server (``ckksnet run``, the script's OFFLINE=1 path) on the same files."""
    work, _ = flow
    comp = _read(work, "compile")
    cmd = [CKKSNET, "run", "--plan", str(work / "plan" / "server_plan.ckksnet"), "--eval-keys",
           str(work / "keys" / "eval"), "--in", str(work / "ct" / "cat.ckks"), "--out", str(work / "offline.ckks"),
           "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout)["report"]
    assert len(run["steps"]) == comp["steps"] and run["bootstraps"] == comp["bootstraps"]
    done = subprocess.run([CKKSNET, "decrypt", str(work / "offline.ckks"), "--keys", str(work / "keys"), "--client",
                           str(work / "plan" / "client_plan.ckksnet"), "--json"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    offline, served = json.loads(done.stdout), _read(work, "decrypt")
    assert offline["predicted"] == served["predicted"]
    assert np.max(np.abs(np.array(offline["logits"]) - served["logits"])) < 1e-3


def test_the_server_is_stopped_when_the_script_fails(inputs, tmp_path):
    """SERVE_TIMEOUT=0: the first health check fails while the server is still starting; the
    script gives up, and its EXIT trap stops the server it started. The server is started
    through a wrapper that waits 60 s first, so that no machine load lets it answer in time."""
    work = tmp_path / "work"
    slow = tmp_path / "slow_ckksnet"
    slow.write_text(f'#!/bin/bash\nif [ "$1" = serve ]; then sleep 60; fi\nexec {CKKSNET} "$@"\n')
    slow.chmod(0o755)
    done = _script(*inputs, work, SERVE_TIMEOUT="0", CKKSNET=str(slow))
    assert done.returncode == 1 and "did not answer on http://127.0.0.1:" in done.stderr, done.stderr[-3000:]
    assert (work / "serve.pid").is_file() and not (work / "decrypt.json").exists()
    assert not _processes_naming(str(work / "serve")), "ckksnet serve outlived the script"


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
