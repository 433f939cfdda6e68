"""ReLU inputs beyond their bound B (issue 18): the domain extension (``relu_extension=L``) keeps
the ReLU within its stated error up to L B, in float64, encrypted and through a compiled plan;
without it the polynomial explodes and the ciphertext fails to decrypt, which is a
:class:`DecryptionError` that says what to do. Test preset only."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ckksnet.approx import ReluApprox
from ckksnet.approx.relu import RangeReport, extension_bits
from ckksnet.compiler import compile
from ckksnet.runtime import load_client_spec, load_plan
from ckksnet.core.plan import ActivationRangeWarning
from ckksnet.errors import ApproxError, CkksnetError, CompileError, DecryptionError
from ckksnet.models import ResNetCifar
from ckksnet.runtime import Client, Server
from tests.conftest import make_client
from tests.helpers import random_batchnorms

pytestmark = pytest.mark.filterwarnings("ignore::ckksnet.core.preset.InsecurePresetWarning")

# alpha 13 with eps 2^-8: L = 4 uses the shipped eps 2^-10 table (degrees 15/31/27, sign depth
# 14 instead of 12: ceil(log2 4) = 2 levels more)
ALPHA, EPS_BITS, L = 13, 8, 4.0


def _pointwise_ok(relu: ReluApprox, x: np.ndarray) -> bool:
    """Every |ReLU_B(x) - ReLU(x)| within the stated bound at its x (module docstring)."""
    b = relu.error_bounds()
    err = np.abs(relu.twin(x) - np.maximum(x, 0))
    far = np.abs(x) >= relu.sign.eps * relu.domain
    return bool(np.all(err[far] <= np.abs(x[far]) * b["relative"] * (1 + 1e-9))
                and np.all(err[~far] <= b["near_zero"]))


# ---------------------------------------------------------------- float64
@pytest.mark.parametrize("alpha, eps_bits, ext", [(13, 8, 2.0), (13, 8, 4.0), (13, 9, 2.0), (10, 8, 4.0),
                                                  (8, 8, 4.0), (13, 9, 4.0), (13, 9, 8.0), (13, 8, 8.0)])
def test_extended_relu_meets_its_stated_error(alpha, eps_bits, ext):
    try:
        relu = ReluApprox.from_table(alpha, 20.0, eps_bits, ext)
    except ApproxError:
        pytest.skip(f"no shipped table for alpha {alpha}, eps 2^-{eps_bits + extension_bits(ext)}")
    assert relu.domain == 20.0 * ext and relu.sign.eps == 2.0 ** -(eps_bits + extension_bits(ext))
    near = np.geomspace(1e-6, relu.domain, 20_001)
    grid = np.concatenate([np.linspace(-relu.domain, relu.domain, 200_001), near, -near])
    assert _pointwise_ok(relu, grid)
    m, b = relu.measured_errors(100_001), relu.error_bounds()
    assert m["inside"] <= b["inside"] and m["extended"] <= b["extended"]
    assert m["extended_relative"] <= b["relative"] * (1 + 1e-9)
    # inside [-B, B] no worse than the unextended approximation's bound (same eps B)
    plain = ReluApprox.from_table(alpha, 20.0, eps_bits)
    assert b["near_zero"] <= plain.error_bounds()["near_zero"] * 1.01
    # the price: about ceil(log2 L) levels of sign depth, the minimax composite's on the wider
    # ratio (alpha 13, eps 2^-9: +1, +2, +4 for L = 2, 4, 8; alpha 8, eps 2^-8: +1 for L = 4)
    assert 0 < relu.depth() - plain.depth() <= 2 * extension_bits(ext)
    known = {(13, 9, 2.0): 1, (13, 9, 4.0): 2, (13, 9, 8.0): 4, (8, 8, 4.0): 1}
    assert relu.depth() - plain.depth() == known.get((alpha, eps_bits, ext), relu.depth() - plain.depth())


def test_without_extension_the_polynomial_explodes_just_beyond_b():
    plain = ReluApprox.from_table(ALPHA, 1.0, EPS_BITS)
    ext = ReluApprox.from_table(ALPHA, 1.0, EPS_BITS, L)
    x = np.array([1.01, -1.01, 1.5, -2.0, 3.0, -3.99, 4.0])
    with np.errstate(all="ignore"):
        y = plain.twin(x)
    assert not np.all(np.isfinite(y)) or np.max(np.abs(y)) > 1e100  # about -2e163 at 1.01 B
    err = np.abs(ext.twin(x) - np.maximum(x, 0))
    assert np.all(err <= np.abs(x) * ext.error_bounds()["relative"] * (1 + 1e-9))
    # beyond L B the extended one diverges too: the bound is stated, not a clip
    with np.errstate(all="ignore"):
        assert abs(ext.twin(np.array([5.0]))[0] - 5.0) > 1.0


def test_range_report_counts_beyond_b_and_beyond_the_domain():
    relu = ReluApprox.from_table(ALPHA, 1.0, EPS_BITS, L)
    rep = RangeReport()
    relu.twin(np.array([0.5, -1.5, 3.0, -4.5]), rep)
    assert (rep.total, rep.beyond_bound, rep.outside, rep.max_ratio) == (4, 3, 1, 4.5)
    rep = RangeReport()
    relu.twin(np.array([0.5, -1.5, 3.0, -4.5]) / 4.0, rep, prescaled=True)  # x / (L B)
    assert (rep.total, rep.beyond_bound, rep.outside, rep.max_ratio) == (4, 3, 1, 4.5)


@pytest.mark.parametrize("bad", [0.5, 0.0, -4.0, float("nan"), float("inf"), "4", None, True])
def test_bad_extension_is_an_approx_error(bad):
    with pytest.raises(ApproxError, match="extension"):
        ReluApprox.from_table(ALPHA, 1.0, EPS_BITS, bad)


def test_missing_extension_table_names_the_extension():
    with pytest.raises(ApproxError, match="domain extension L = 1024 needs eps bits 9 \\+ 10"):
        ReluApprox.from_table(ALPHA, 1.0, 9, 1024)


# ---------------------------------------------------------------- encrypted, bare
@pytest.fixture(scope="module")
def ckks():
    """A test-preset client without bootstrapping keys (the bare ReLU needs none)."""
    client = make_client()
    return client, client.server()


def test_encrypted_extended_relu_up_to_l_b(ckks):
    client, server = ckks
    bound = 0.25  # B; inputs span [-L B, L B] = [-1, 1], the preset's safe magnitude
    relu = ReluApprox.from_table(ALPHA, bound, EPS_BITS, L)
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, client.slots)
    x[:64] = np.linspace(-0.01, 0.01, 64)  # near zero
    x[64:72] = [bound * 1.01, -bound * 1.01, 0.5, -0.5, 0.99, -0.99, 1.0, -1.0]  # beyond B
    ct = client.encrypt(x)
    out = relu.encrypted(server, ct)
    assert server.levels_left(ct) - server.levels_left(out) == relu.depth() == relu.sign.depth + 2
    got = client.decrypt(out)
    assert np.max(np.abs(got - relu.twin(x))) < 1e-9  # CKKS noise only (measured ~1e-11)
    err = np.abs(got - np.maximum(x, 0))
    b = relu.error_bounds()
    far = np.abs(x) >= relu.sign.eps * relu.domain
    assert np.all(err[far] <= np.abs(x[far]) * b["relative"] + 1e-9)
    assert np.all(err[~far] <= b["near_zero"] + 1e-9)
    assert np.max(err[np.abs(x) > bound]) <= b["extended"] + 1e-9


def test_exploded_relu_is_a_decryption_error_that_says_what_to_do(ckks):
    """The same inputs through the unextended ReLU (B = 0.25, inputs up to 4 B): the composite
    explodes, OpenFHE cannot decode the result, and the error names the likely cause and the
    remedies."""
    client, server = ckks
    relu = ReluApprox.from_table(ALPHA, 0.25, EPS_BITS)
    x = np.linspace(-1, 1, client.slots)
    with pytest.raises(DecryptionError) as err:
        client.decrypt(relu.encrypted(server, client.encrypt(x)))
    text = str(err.value)
    for words in ("bound B", "recalibrate", "margin", "relu_extension", "approximation error"):
        assert words in text
    assert isinstance(err.value, CkksnetError) and isinstance(err.value.__cause__, RuntimeError)


def test_value_squared_past_the_modulus_is_a_decryption_error(ckks):
    client, server = ckks
    ct = client.encrypt(np.full(16, 0.9))
    with pytest.raises(DecryptionError, match="bound B"):
        for _ in range(8):  # 1.8^2 ... grows past what the remaining modulus holds
            ct = server.mul(server.add(ct, ct), server.add(ct, ct))
            client.decrypt(ct, 16)


# ---------------------------------------------------------------- through a compiled plan
def _tiny_resnet() -> ResNetCifar:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    return random_batchnorms(ResNetCifar(blocks=1, widths=(2, 4, 8)), gen)


IMAGES = np.random.default_rng(0).integers(0, 256, (48, 8, 8, 3), dtype=np.uint8)
MARGIN = 0.5  # B = half the calibrated max: the calibration images themselves reach 2 B


def _compile(ext: float):
    return compile(_tiny_resnet(), calibration=IMAGES, preset="test", image_size=(8, 8), margin=MARGIN,
                   eps_bits=EPS_BITS, relu_extension=ext)


@pytest.fixture(scope="module")
def extended():
    return _compile(L)


def _torch(images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return _tiny_resnet()(x).double().numpy()


def test_twin_with_extension_handles_inputs_up_to_l_b(extended):
    plain = _compile(1.0)
    with pytest.warns(ActivationRangeWarning):  # without extension: inputs beyond B diverge
        bad = plain.twin(IMAGES[:8])
    assert not np.all(np.isfinite(bad)) or np.max(np.abs(bad - _torch(IMAGES[:8]))) > 1e3
    ranges = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", ActivationRangeWarning)  # within L B: no warning
        twin = extended.twin(IMAGES[:8], ranges=ranges, strict=True)
    # stored inputs are x / (L B): max_ratio 0.5 is |x| = 2 B, beyond B yet within L B
    assert max(r["max_ratio"] for r in ranges.values()) * L > 1.5
    assert all(r["outside"] == 0 for r in ranges.values())
    want = _torch(IMAGES[:8])
    assert np.max(np.abs(twin - want)) < 2e-3 and np.array_equal(twin.argmax(1), want.argmax(1))
    relus = [s for s, _, _ in extended.steps if s.kind == "relu"]
    plain_relus = [s for s, _, _ in plain.steps if s.kind == "relu"]
    assert all(s.extension == L and s.relu.extension == L for s in relus)
    assert all(a.levels() == b.levels() + 2 for a, b in zip(relus, plain_relus))
    assert extended.options["relu_extension"] == L


def test_saved_plan_keeps_the_extension(extended, tmp_path):
    extended.save(tmp_path)
    loaded = load_plan(tmp_path / "server_plan.ckksnet")
    assert loaded.options["relu_extension"] == L
    assert [(s.extension, s.relu.extension, s.relu.bound) for s, _, _ in loaded.steps if s.kind == "relu"] == \
        [(s.extension, s.relu.extension, s.relu.bound) for s, _, _ in extended.steps if s.kind == "relu"]
    assert np.array_equal(loaded.twin(IMAGES[:4]), extended.twin(IMAGES[:4]))
    spec = load_client_spec(tmp_path / "client_plan.ckksnet")
    assert spec.input_scale == extended.client_spec().input_scale


@pytest.mark.parametrize("bad", [0.5, float("nan"), "4"])
def test_compile_refuses_a_bad_extension(bad):
    with pytest.raises(CompileError, match="extension"):
        _compile(bad)


def test_encrypted_plan_with_extension_matches_twin(extended):
    """Encrypted, with bootstrapping (the schedule may bootstrap a ReLU's input x / (L B) before
    its first component: it lies in [-1, 1]), on images whose ReLU inputs reach 2 B."""
    client = Client(extended)
    server = Server(extended, client.evaluation_keys())
    ranges = {}
    twin = extended.twin(IMAGES[:1], ranges=ranges)[0]
    assert max(r["max_ratio"] for r in ranges.values()) * L > 1.4  # this image drives a ReLU to 1.44 B
    want = _torch(IMAGES[:1])[0]
    logits = client.decrypt(server.run(client.encrypt(IMAGES[0])))
    assert np.max(np.abs(logits - twin)) < 1e-5  # CKKS noise (measured ~1e-7 unextended)
    assert np.max(np.abs(logits - want)) <= np.max(np.abs(twin - want)) + 1e-5
    assert logits.argmax() == want.argmax()
    assert server.report.bootstraps == extended.schedule.bootstraps > 0
