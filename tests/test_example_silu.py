"""The documented extension path: examples/silu_kernel.py adds nn.SiLU with one Kernel subclass
and one registered lowering, using only ``ckksnet.kernels``."""
from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import ckksnet
from ckksnet.core.slots import SlotEvaluator
from ckksnet.compiler import compile
from ckksnet.errors import CorruptDataError
from ckksnet.kernels import PLAN_TYPES, Kernel
from ckksnet.models import ResNetCifar
from ckksnet.runtime import Client, Server

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "silu_kernel.py"
IMAGES = np.random.default_rng(1).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def silu_module():
    spec = importlib.util.spec_from_file_location("silu_kernel", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["silu_kernel"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _silu_net() -> ResNetCifar:
    torch.manual_seed(0)
    model = ResNetCifar(blocks=1, widths=(2, 4, 8))
    model.relu = nn.SiLU()  # the stem activation becomes SiLU
    return model.eval()


@pytest.fixture(scope="module")
def silu_plan(silu_module):
    model = _silu_net()
    return model, compile(model, calibration=IMAGES, preset="test", image_size=(8, 8))


def test_example_uses_only_the_public_kernel_api():
    """The kernel and its lowering import from ckksnet.kernels alone; the script's demo (main)
    is a user of the public ckksnet API."""
    tree = ast.parse(EXAMPLE.read_text())
    tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name == "main")]
    sources = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    sources |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {s for s in sources if s.startswith("ckksnet")} == {"ckksnet.kernels"}
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "ckksnet.kernels"
             for a in n.names}
    assert not any(name.startswith("_") for name in names)
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert len(classes) == 1 and [b.id for b in classes[0].bases] == ["Kernel"]


def test_silu_compiles_and_runs_encrypted(silu_module, silu_plan):
    model, plan = silu_plan
    steps = [s for s, _, _ in plan.steps if s.kind == "silu"]
    assert len(steps) == 1 and isinstance(steps[0], silu_module.SiLUStep) and isinstance(steps[0], Kernel)
    assert steps[0].coeffs is not None and len(steps[0].coeffs) == 16  # degree 31: T_1 .. T_31
    x = torch.from_numpy(IMAGES[:2]).permute(0, 3, 1, 2).float() / 255
    want = model(x).detach().double().numpy()
    ranges = {}
    twin = plan.twin(IMAGES[:2], strict=True, ranges=ranges)  # no input beyond any bound
    assert ranges[steps[0].name]["total"] > 0 and ranges[steps[0].name]["outside"] == 0
    assert np.max(np.abs(twin - want)) < 2e-3  # degree-31 SiLU + alpha-13 ReLU approximations
    # the twin's fast forms (sparse products for the linear maps) against every algorithm as written
    assert np.max(np.abs(plan.twin(IMAGES[:2], reference=True) - twin)) < 1e-12
    client = Client(plan)
    server = Server(plan, client.evaluation_keys())
    got = client.decrypt(server.run(client.encrypt(IMAGES[0])))
    assert np.max(np.abs(got - twin[0])) < 1e-5  # CKKS noise only (see test_compiler)
    assert got.argmax() == want[0].argmax()
    # the compile-time schedule predicted the run, the SiLU step included
    levels = lambda steps: [(s.name, s.level_in, s.level_out, s.bootstraps) for s in steps]  # noqa: E731
    assert levels(server.report.steps) == levels(plan.schedule.steps)


def test_silu_twin_matches_torch_silu(silu_module):
    step = silu_module.SiLUStep("s")
    done = step.finalize(6.0, 6.0, {})
    assert step.coeffs is None and done is not step  # finalize returns a new kernel
    x = np.linspace(-6, 6, 2001)
    ev = SlotEvaluator(fast=False)
    got = done.evaluate(ev, [x / 6.0], lambda v, levels: v) * 6.0
    want = torch.nn.functional.silu(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(got - want)) < 1e-4
    # on slot vectors with levels: it spends exactly levels()
    out = done.evaluate(ev, [ev.fresh(x / 6.0, done.levels())], lambda v, levels: v)
    assert out.level == 0 and np.array_equal(out.data * 6.0, got)


def test_plan_with_silu_saves_and_loads(silu_module, silu_plan, tmp_path, monkeypatch):
    _, plan = silu_plan
    plan.save(tmp_path)
    loaded = ckksnet.load_plan(tmp_path / "server_plan.ckksnet")
    step = next(s for s, _, _ in loaded.steps if s.kind == "silu")
    assert type(step) is silu_module.SiLUStep
    original = next(s for s, _, _ in plan.steps if s.kind == "silu")
    assert np.array_equal(step.coeffs, original.coeffs) and step.degree == original.degree
    assert np.array_equal(loaded.twin(IMAGES[:4]), plan.twin(IMAGES[:4]))
    assert loaded.schedule == plan.schedule
    spec = ckksnet.load_client_spec(tmp_path / "client_plan.ckksnet")
    assert spec.plan_id == plan.client_spec().plan_id
    # without the module that defines the kernel, the plan names a type nothing registered
    monkeypatch.delitem(PLAN_TYPES, "SiLUStep")
    with pytest.raises(CorruptDataError, match="SiLUStep"):
        ckksnet.load_plan(tmp_path / "server_plan.ckksnet")


def test_the_example_script_prints_its_result():
    """`python examples/silu_kernel.py` compiles a SiLU CNN and prints the twin against torch."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("SiLU kernel:") and "same top-1 on 16 of 16" in out.stdout

