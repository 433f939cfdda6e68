"""The documented extension path: examples/silu_kernel.py adds nn.SiLU with one class + register."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from ckksnet.compiler import compile
from ckksnet.models import ResNetCifar
from ckksnet.runtime import Client, Server

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "silu_kernel.py"


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


def test_silu_compiles_and_runs_encrypted(silu_module):
    images = np.random.default_rng(1).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    model = _silu_net()
    plan = compile(model, calibration=images, preset="test", image_size=(8, 8))
    assert [s.kind for s, _, _ in plan.steps].count("silu") == 1
    x = torch.from_numpy(images[:2]).permute(0, 3, 1, 2).float() / 255
    want = model(x).detach().double().numpy()
    twin = plan.twin(images[:2])
    assert np.max(np.abs(twin - want)) < 2e-3  # degree-31 SiLU + alpha-13 ReLU approximations
    client = Client(plan)
    server = Server(plan, client.evaluation_keys())
    got = client.decrypt(server.run(client.encrypt(images[0])))
    assert np.max(np.abs(got - twin[0])) < 1e-5  # CKKS noise only (see test_compiler)
    assert got.argmax() == want[0].argmax()


def test_silu_twin_matches_torch_silu(silu_module):
    step = silu_module.SiLUStep("s")
    step.finalize(6.0, 6.0, {})
    x = np.linspace(-6, 6, 2001)
    got = step.twin([x / 6.0]) * 6.0
    assert np.max(np.abs(got - x / (1 + np.exp(-x)))) < 1e-4
