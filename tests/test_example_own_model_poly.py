"""examples/own_model_poly.py: a small CNN of the user's own with polynomial activations,
trained briefly, compiled and run encrypted at the test preset, equal to torch."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_model_poly.py"
pytestmark = pytest.mark.slow  # trains a model, then runs it encrypted, in a subprocess


def test_the_polynomial_example_runs_encrypted_and_matches_torch():
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # minutes: the timeout catches a hang, not a loaded machine
    done = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = done.stdout
    assert out.startswith("trained PolyCNN (degree-2 activations)") and "NOT secure" in out
    assert "activation features.2: poly2, 1 level(s)" in out  # folded into the next convolution
    errors = [float(e) for e in re.findall(r"max \|difference\| (\S+);", out)]
    assert len(errors) == 2 and max(errors) < 1e-3, out
    assert out.count("same prediction") == 2 and "all 2 encrypted predictions match" in out
    assert "Traceback" not in done.stderr and "warning" not in done.stderr.lower(), done.stderr
