"""examples/own_model.py, the README's "Your own model": it trains a small CNN, compiles it, runs
it encrypted at the test preset and compares the decrypted logits with torch's; the command line
it prints takes the same model and weights."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_model.py"
CKKSNET = str(Path(sys.executable).parent / "ckksnet")
pytestmark = pytest.mark.slow  # trains a model, then runs it encrypted, in a subprocess


def test_the_example_runs_encrypted_and_its_command_line_works(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, str(EXAMPLE), "--out", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=1800)  # minutes: the timeout catches a hang, not a loaded machine
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = done.stdout
    assert out.startswith("trained SmallCNN for one epoch") and "NOT secure" in out
    errors = [float(e) for e in re.findall(r"max \|difference\| (\S+);", out)]
    assert len(errors) == 2 and max(errors) < 1e-2, out  # CKKS noise and the alpha-13 ReLU
    assert out.count("same prediction") == 2 and "all 2 encrypted predictions match" in out
    assert "Traceback" not in done.stderr and "warning" not in done.stderr.lower(), done.stderr
    # the printed command, from examples/, compiles the same model from its weights
    (line,) = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("ckksnet compile --model")]
    argv = shlex.split(line)[1:] + ["--json"]
    comp = subprocess.run([CKKSNET, *argv], cwd=ROOT / "examples", capture_output=True, text=True, env=env,
                          timeout=300)
    assert comp.returncode == 0, comp.stderr[-3000:]
    report = json.loads(comp.stdout)
    assert report["input_shape"] == [3, 8, 8] and report["classes"] == ["0", "1", "2", "3"]
    steps = int(re.search(r"compiled: (\d+) steps", out)[1])
    assert report["steps"] == steps and Path(report["client_plan"]).is_file()
    assert np.load(tmp_path / "calibration.npz")["images"].shape == (128, 3, 8, 8)
