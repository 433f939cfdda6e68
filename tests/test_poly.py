"""Polynomial activations (issue 37): ckksnet.nn.PolyAct, its least-squares ReLU fit, the PolyStep
kernel (twin, levels, ciphertexts), plan files holding it, and the twin's range report. Test
preset only."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import ckksnet
from ckksnet.approx.poly import evaluate, relu_fit, relu_fit_error, relu_fit_unit
from ckksnet.core import artifact
from ckksnet.core.preset import InsecurePresetWarning
from ckksnet.core.plan import ActivationRangeWarning
from ckksnet.errors import CorruptDataError, RangeError
from ckksnet.kernels import PolyStep
from ckksnet.nn import PolyAct
from tests.helpers import random_batchnorms


def small_cnn(*acts: nn.Module) -> nn.Sequential:
    """conv-BN-act, average pooling, conv-BN-act, global pooling, linear: 8x8 RGB inputs."""
    a, b = acts
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), a, nn.AvgPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), b,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def perturbed(act: PolyAct, seed: int) -> PolyAct:
    """A trained-looking PolyAct: its ReLU fit moved a little (so no coefficient is special)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        act.coefficients.add_(0.1 * torch.randn(act.coefficients.shape, generator=g))
    return act


def compiled(model: nn.Module, images: np.ndarray, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        return ckksnet.compile(model, calibration=images, preset="test", input_shape=(3, 8, 8), **kw)


def torch_logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images).float()).double().numpy()


IMAGES = np.random.default_rng(0).random((16, 3, 8, 8))


# ------------------------------------------------------------------ the module and its fit
@pytest.mark.parametrize("degree", [2, 3, 4])
def test_from_relu_is_the_least_squares_fit_and_small_on_its_interval(degree):
    bound = 3.5
    act = PolyAct.from_relu(bound, degree)
    x = torch.linspace(-bound, bound, 2001)
    with torch.no_grad():
        y = act(x).double().numpy()
    assert np.allclose(y, evaluate(relu_fit(bound, degree), x.double().numpy() / bound), atol=1e-5)
    # the same as a sampled least-squares fit (numpy), on the unit interval
    t = np.linspace(-1, 1, 20001)
    sampled = np.linalg.lstsq(np.vander(t, degree + 1, increasing=True), np.maximum(t, 0), rcond=None)[0]
    assert np.allclose(sampled, relu_fit_unit(degree), atol=1e-3)
    err = relu_fit_error(bound, degree)
    assert err["max"] < 0.1 * bound and err["rms"] < 0.04 * bound  # degree 2: 3/32 B at 0
    assert np.max(np.abs(y - np.maximum(x.numpy(), 0))) < 0.1 * bound
    assert act.degree == degree and float(act.bound) == bound and act.coefficients.requires_grad


def test_higher_degrees_fit_better_and_bad_arguments_are_refused():
    errs = [relu_fit_error(1.0, d)["rms"] for d in (2, 3, 4)]
    assert errs[0] > errs[2]
    for bad in (1, 5, 2.0, True):
        with pytest.raises(ValueError, match="degree 2, 3 or 4"):
            PolyAct(bad)
    with pytest.raises(ValueError, match="positive"):
        PolyAct(2, bound=0.0)
    with pytest.raises(ValueError, match="3 coefficients"):
        PolyAct(2, coefficients=[1.0, 2.0])


# ------------------------------------------------------------------ the kernel on the twin, levels
@pytest.mark.parametrize("degree", [2, 3, 4])
def test_the_twin_equals_torch_and_the_algorithm_its_fast_form(degree):
    torch.manual_seed(degree)
    model = random_batchnorms(small_cnn(perturbed(PolyAct(degree, 3.0), 1), perturbed(PolyAct(degree, 2.0), 2)),
                              torch.Generator().manual_seed(3))
    net = compiled(model, IMAGES)
    want = torch_logits(model, IMAGES)
    twin = net.twin(IMAGES, strict=True)
    assert np.max(np.abs(twin - want)) < 1e-5
    assert np.max(np.abs(net.twin(IMAGES[:4], reference=True) - twin[:4])) < 1e-9  # the algorithm as written
    assert [s.kind for s, _, _ in net.steps].count(f"poly{degree}") == 2


def level_costs(net) -> dict:
    return {s.name: s.level_in - s.level_out for s in net.schedule.steps if s.kind.startswith("poly")}


def test_level_costs_on_the_tracer():
    """Degree 2 read by a convolution folds its leading coefficient into it: 1 level; read by
    pooling (not a linear step) it costs 2; degree 3: 2; degree 4: 3 (ceil(log2 4) + 1)."""
    for degree, want in ((2, {"2": 1, "6": 2}), (3, {"2": 2, "6": 2}), (4, {"2": 3, "6": 3})):
        model = random_batchnorms(small_cnn(PolyAct(degree, 3.0), PolyAct(degree, 3.0)),
                                  torch.Generator().manual_seed(4))
        net = compiled(model, IMAGES)
        assert level_costs(net) == want, degree
        assert {s.name: s.levels() for s, _, _ in net.steps if s.kind.startswith("poly")} == want
    folded = [s for s, _, _ in compiled(random_batchnorms(small_cnn(PolyAct(2, 3.0), PolyAct(2, 3.0)),
                                                          torch.Generator().manual_seed(4)), IMAGES).steps
              if s.kind.startswith("poly")]
    assert [s.fold for s in folded] == [True, False]


def test_a_negative_leading_coefficient_is_not_folded_and_still_exact():
    act = PolyAct(2, 2.0, coefficients=[0.3, 1.0, -0.5])
    model = random_batchnorms(small_cnn(act, PolyAct(2, 2.0)), torch.Generator().manual_seed(5))
    net = compiled(model, IMAGES)
    assert level_costs(net)["2"] == 2
    assert np.max(np.abs(net.twin(IMAGES) - torch_logits(model, IMAGES))) < 1e-5


# ------------------------------------------------------------------ ciphertexts, mixed networks
def encrypted_logits(net, images) -> np.ndarray:
    client = ckksnet.Client(net)
    server = ckksnet.Server(net, client.evaluation_keys())
    return np.stack([client.decrypt(server.run(client.encrypt(im))) for im in images])


def test_polynomial_kernels_on_ciphertexts():
    """Degrees 2 (folded) and 4 in one network, on OpenFHE ciphertexts at the test preset."""
    torch.manual_seed(6)
    model = random_batchnorms(small_cnn(perturbed(PolyAct(2, 3.0), 7), perturbed(PolyAct(4, 2.0), 8)),
                              torch.Generator().manual_seed(9))
    net = compiled(model, IMAGES)
    want = torch_logits(model, IMAGES[:2])
    got = encrypted_logits(net, IMAGES[:2])
    assert np.max(np.abs(got - want)) < 1e-3 and np.array_equal(got.argmax(1), want.argmax(1))


def test_a_mixed_relu_and_polynomial_network():
    """A ReLU where the network is sensitive, a polynomial elsewhere: twin and ciphertexts."""
    torch.manual_seed(10)
    model = random_batchnorms(small_cnn(nn.ReLU(), perturbed(PolyAct(3, 2.0), 11)),
                              torch.Generator().manual_seed(12))
    net = compiled(model, IMAGES, alpha=8, eps_bits=8)
    kinds = {s.name: s.kind for s, _, _ in net.steps}
    assert kinds["2"] == "relu" and kinds["6"] == "poly3"
    want = torch_logits(model, IMAGES)
    twin = net.twin(IMAGES, strict=True)
    assert np.max(np.abs(twin - want)) < 2e-2 and np.array_equal(twin.argmax(1), want.argmax(1))
    got = encrypted_logits(net, IMAGES[:1])
    assert np.max(np.abs(got - twin[:1])) < 1e-3


# ------------------------------------------------------------------ plan files, bad input
def test_plans_round_trip_and_an_unknown_activation_is_refused_by_name(tmp_path):
    model = random_batchnorms(small_cnn(perturbed(PolyAct(2, 3.0), 13), perturbed(PolyAct(4, 2.0), 14)),
                              torch.Generator().manual_seed(15))
    net = compiled(model, IMAGES)
    net.save(tmp_path / "plan")
    back = ckksnet.load_plan(tmp_path / "plan" / "server_plan.ckksnet")
    polys = [s for s, _, _ in back.steps if isinstance(s, PolyStep)]
    assert [(s.q, s.fold, s.output_scale, s.layout) for s in polys] == \
        [(s.q, s.fold, s.output_scale, s.layout) for s, _, _ in net.steps if isinstance(s, PolyStep)]
    assert np.array_equal(back.twin(IMAGES), net.twin(IMAGES))  # bit-identical
    payload = artifact.to_payload(net)
    forged = payload.replace(b'"@type":"PolyStep"', b'"@type":"QuinticStep"')
    import struct
    (n,) = struct.unpack_from("<I", payload, 0)
    tree = payload[4:4 + n].replace(b'"@type":"PolyStep"', b'"@type":"QuinticStep"')
    forged = struct.pack("<I", len(tree)) + tree + payload[4 + n:]
    with pytest.raises(CorruptDataError, match="unknown type 'QuinticStep'"):
        artifact.from_payload(forged)


def test_an_input_beyond_the_bound_is_reported_like_a_relus():
    model = random_batchnorms(small_cnn(PolyAct(3, 3.0), PolyAct(2, 3.0)), torch.Generator().manual_seed(16))
    net = compiled(model, 0.5 + 0.02 * IMAGES)  # calibrated on nearly grey images
    with pytest.warns(ActivationRangeWarning, match=r"'2' up to"):
        net.twin(np.round(IMAGES))  # black and white
    ranges: dict = {}
    with pytest.raises(RangeError, match="beyond their approximation's interval"):
        net.twin(np.round(IMAGES), strict=True, ranges=ranges)
    assert ranges["2"]["outside"] and set(ranges) == {"2", "6"}
    from ckksnet.fidelity import activation_reports  # the fidelity report lists them as it lists ReLUs'

    report = activation_reports(net, ranges)
    step = next(s for s, _, _ in net.steps if s.name == "2")
    assert report["2"]["outside"] == ranges["2"]["outside"] and report["2"]["bound"] == step.input_scale > 0


def test_a_polynomial_resnet_folds_activations_read_by_a_shortcut_too():
    """In a ResNet, a block's output feeds the next convolution and the identity shortcut's
    addition: the shortcut reads it through an identity linear step, so the polynomial still folds
    (1 level); only the last activation (read by pooling) costs 2. Twin and ciphertexts."""
    from ckksnet.models.poly import to_polynomial
    from ckksnet.models.resnet import ResNetCifar

    torch.manual_seed(17)
    model = ResNetCifar(1, (4, 8, 8), 10)
    to_polynomial(model, 2, default=3.0)
    from ckksnet.training.poly import reestimate_batchnorm  # batch norms that keep the activations in range

    pixels = np.random.default_rng(18).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    model = reestimate_batchnorm(model, pixels)
    net = compiled(model, IMAGES)
    costs = level_costs(net)
    assert costs == {"relu": 1, "layers.0.relu1": 1, "layers.0.relu2": 1, "layers.1.relu1": 1,
                     "layers.1.relu2": 1, "layers.2.relu1": 1, "layers.2.relu2": 2}
    assert [s.name for s, _, _ in net.steps if s.name.endswith(":shortcut")] == ["relu:shortcut"]
    want = torch_logits(model, IMAGES)
    twin = net.twin(IMAGES, strict=True)
    assert np.max(np.abs(twin - want)) < 1e-5 and np.max(np.abs(want)) > 0.1
    got = encrypted_logits(net, IMAGES[:1])
    assert np.max(np.abs(got - want[:1])) < 1e-3


def test_an_mlp_with_polynomial_activations():
    """PolyAct after dense layers (vector layouts): twin, the algorithm as written, ciphertexts."""
    torch.manual_seed(19)
    model = random_batchnorms(nn.Sequential(nn.Flatten(), nn.Linear(48, 24), nn.BatchNorm1d(24), PolyAct(2, 3.0),
                                            nn.Linear(24, 16), PolyAct(4, 3.0), nn.Linear(16, 10)),
                              torch.Generator().manual_seed(20))
    images = np.random.default_rng(21).random((16, 3, 4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        net = ckksnet.compile(model, calibration=images, preset="test", input_shape=(3, 4, 4))
    assert level_costs(net) == {"3": 1, "5": 3}
    want = torch_logits(model, images)
    assert np.max(np.abs(net.twin(images) - want)) < 1e-5
    assert np.max(np.abs(net.twin(images[:2], reference=True) - want[:2])) < 1e-5
    assert np.max(np.abs(encrypted_logits(net, images[:1]) - want[:1])) < 1e-3
