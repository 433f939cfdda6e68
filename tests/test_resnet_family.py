"""The CIFAR ResNet family of He et al. (depths 20, 32, 44, 56, 110; shortcuts A and B): compiled
at reduced width (2/4/8 channels, 8x8 images) and checked against torch through the twin, its
plan reported, and the smallest members run encrypted at the test preset."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ckksnet.core.preset import InsecurePresetWarning
from ckksnet.compiler import compile
from ckksnet.compiler.graph import activation_nodes, trace
from ckksnet.compiler.report import plan_report
from ckksnet.models import load_bundled
from ckksnet.models.resnet import DEPTHS, BasicBlock, ResNetCifar, build, resnet20, resnet_cifar
from ckksnet.runtime import Client, Server
from tests.test_models_people_write import randomize, torch_logits

IMAGES = np.random.default_rng(3).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
TINY = (2, 4, 8)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        yield


def tiny(depth: int, shortcut: str) -> ResNetCifar:
    return randomize(resnet_cifar(depth, shortcut, widths=TINY), seed=depth)


def test_family_definition():
    assert DEPTHS == (20, 32, 44, 56, 110)
    for depth in DEPTHS:
        model = resnet_cifar(depth)
        blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
        convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        assert len(blocks) == 3 * (depth - 2) // 6 and convs + 1 == depth  # + the dense layer
    b = resnet_cifar(56, "B")
    assert isinstance(b.layers[9].shortcut, torch.nn.Sequential) and b.config["shortcut"] == "B"
    assert build(b.config).state_dict().keys() == b.state_dict().keys()
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 0.26e6 < params(resnet_cifar(20)) < 0.28e6 and 1.6e6 < params(resnet_cifar(110)) < 1.8e6
    for bad in (21, 6, "20"):
        with pytest.raises(ValueError, match="6n \\+ 2"):
            resnet_cifar(bad)
    with pytest.raises(ValueError, match="shortcut"):
        resnet_cifar(20, "C")


def test_resnet20_and_the_bundled_checkpoint_are_unchanged():
    model, meta = load_bundled()
    assert "shortcut" not in resnet20().config and model.config == resnet20().config | {
        k: model.config[k] for k in ("mean", "std")}
    assert model.state_dict().keys() == resnet20().state_dict().keys()
    assert resnet_cifar(20).state_dict().keys() == resnet20().state_dict().keys()
    # the stored calibration is keyed by exactly the names the compiler gives the ReLU steps
    names = set(activation_nodes(trace(model), dict(model.named_modules())).values())
    assert names == set(meta["calibration"]["relus"])


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_family_twin_matches_torch(depth, shortcut):
    model = tiny(depth, shortcut)
    plan = compile(model, calibration=IMAGES, preset="test", image_size=(8, 8))
    n = (depth - 2) // 6
    kinds = [s.kind for s, _, _ in plan.steps]
    assert kinds.count("relu") == 6 * n + 1 and kinds.count("add") == 3 * n and kinds.count("pool") == 1
    # option A: each downsampling shortcut is one fixed linear map; option B: conv + BN, one map
    assert kinds.count("linear") == 1 + 6 * n + 2 + 1
    want = torch_logits(model, IMAGES[:6])
    got = plan.twin(IMAGES[:6])
    assert np.max(np.abs(got - want)) < 2e-3 * max(1.0, np.max(np.abs(want)))
    assert np.array_equal(got.argmax(1), want.argmax(1))
    report = plan_report(plan)["totals"]
    # a ReLU (14 levels) needs more than the 10 levels a bootstrap leaves at the test preset
    assert report["bootstraps"] > 6 * n + 1 and report["estimated_seconds"] > 0


# one encrypted image per family member, shortcuts alternating. The ReLU's bootstraps dominate
# (2-3 per ReLU at the test preset, about 1-2 s each): the deeper members use alpha = 6 (sign
# error 2^-6, fewer levels, 1.5 bootstraps per ReLU) to keep the family's share of CI at about
# a quarter of an hour; the comparison is with the twin of the same plan, so the check is the
# same (CKKS noise only).
FAMILY = [(20, "A", 13, 9), (32, "B", 8, 8), (44, "A", 6, 8), (56, "B", 6, 8), (110, "A", 6, 8)]


@pytest.mark.slow
@pytest.mark.parametrize("depth, shortcut, alpha, eps_bits", FAMILY)
def test_family_runs_encrypted(depth, shortcut, alpha, eps_bits):
    """Each member of the family (tiny width, 8x8 image) runs encrypted at the test preset: the
    logits equal the twin's within CKKS noise and the run bootstraps as the schedule says."""
    model = tiny(depth, shortcut)
    plan = compile(model, calibration=IMAGES, preset="test", image_size=(8, 8), alpha=alpha, eps_bits=eps_bits)
    client = Client(plan)
    server = Server(plan, client.evaluation_keys())
    twin = plan.twin(IMAGES[:1])[0]
    got = client.decrypt(server.run(client.encrypt(IMAGES[0])))
    # CKKS noise only (see test_compiler): 1e-7 measured on ResNet-8, a margin for depth
    assert np.max(np.abs(got - twin)) < 1e-4 * max(1.0, np.max(np.abs(twin)))
    assert server.report.bootstraps == plan.schedule.bootstraps
