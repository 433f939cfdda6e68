"""The notebook runs top to bottom at the test preset (as CI runs it, through the notebook
extra), into a copy: the tracked file is never rewritten and keeps no outputs; progress bars are
widgets, not hundreds of text blocks."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "encrypted_cifar.ipynb"
pytestmark = pytest.mark.slow  # the whole notebook, encrypted


def test_the_notebook_runs_at_the_test_preset_into_a_copy(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from run_notebook import run
    finally:
        sys.path.pop(0)
    before = hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest()
    tracked = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in tracked.cells if c.cell_type == "code")  # no stale outputs
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "executed.ipynb"
    nb = run(NOTEBOOK, out, preset="test", images=1, timeout=600)
    assert hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest() == before and out.is_file()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    assert max(len(c.outputs) for c in code) < 10  # tqdm.auto: a widget, not a block per update
    text = "".join(o.get("text", "") for c in code for o in c.outputs if o.get("output_type") == "stream")
    assert "label " in text and "encrypted" in text and "twin:" in text
    assert "bootstraps" in text
    import re

    pairs = re.findall(r"plaintext (\d+)[^,]*, encrypted (\d+)", text)
    assert pairs and all(a == b for a, b in pairs), text  # the encrypted prediction is the plaintext one
