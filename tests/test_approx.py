"""Composite minimax sign / ReLU: shipped tables meet their bounds; encrypted matches the twin."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ckksnet.approx import (BUDGET_TABLES, SHIPPED_ALPHAS, SHIPPED_EPS_BITS, RangeReport, ReluApprox, count_products,
                            count_relinearizations, depth_of, design, eval_odd, load_table)
from ckksnet.approx.remez import odd_minimax_sign
from ckksnet.backend.context import Ciphertext
from ckksnet.core.slots import SlotEvaluator
from ckksnet.core.tracer import LevelTracer
from ckksnet.deploy.cli import main as cli
from ckksnet.errors import ApproxError, LevelError

SHIPPED = [(a, e) for e in SHIPPED_EPS_BITS for a in SHIPPED_ALPHAS] + sorted(BUDGET_TABLES)


class CountingServer:
    """The server's evaluator, counting the ciphertext x ciphertext products made through it."""

    def __init__(self, server):
        self.server, self.products = server, 0

    def __getattr__(self, name):
        return getattr(self.server, name)

    def mul(self, a, b):
        self.products += isinstance(b, Ciphertext)
        return self.server.mul(a, b)

    def mul_lazy(self, a, b):
        self.products += 1
        return self.server.mul_lazy(a, b)


@pytest.mark.parametrize("alpha, eps_bits", SHIPPED)
def test_shipped_table_meets_bound(alpha, eps_bits):
    comp = load_table(alpha, eps_bits)
    assert comp.alpha == alpha and comp.eps == 2.0 ** -eps_bits
    bound = 2.0 ** -alpha
    pos = np.linspace(comp.eps, 1.0, 100_001)
    pos = np.concatenate([pos, np.geomspace(comp.eps, 1.0, 100_001)])
    assert np.max(np.abs(comp(pos) - 1)) <= bound
    assert np.max(np.abs(comp(-pos) + 1)) <= bound
    assert comp.depth == sum(math.ceil(math.log2(d + 1)) for d in comp.degrees)
    assert comp.products == sum(count_products(c) for c in comp.components)
    assert [len(c) for c in comp.components] == [(d + 1) // 2 for d in comp.degrees]


def test_level_budget_table_splits_into_two_depth_5_components():
    """alpha 10 at eps 2^-7: degrees 31, 31 (depth 5 + 5), what 6 usable levels per bootstrap
    need for a convolution + ReLU in 2 bootstraps ([conv 1 + 5] [5 + x 1])."""
    comp = load_table(10, 7)
    assert comp.degrees == BUDGET_TABLES[(10, 7)] == (31, 31) and comp.depth == 10
    assert ReluApprox.from_table(10, 1.0, 7).stage_depths == [5, 5, 1]  # + the product by x


def test_paper_degrees_for_alpha_13():
    """alpha 13 at eps 2^-9: the search finds the paper's 15, 15, 27 (depth 13)."""
    comp = load_table(13, 9)
    assert comp.degrees == (15, 15, 27) and comp.depth == 13


def test_remez_equioscillates_and_is_deterministic():
    a, b = 0.05, 1.0
    r = odd_minimax_sign(7, a, b)
    assert r == odd_minimax_sign(7, a, b)
    x = np.linspace(a, b, 200_001)
    full = np.zeros(8)
    full[1::2] = r.coeffs
    err = np.polynomial.chebyshev.chebval(x / r.scale, full) - 1
    assert abs(np.max(np.abs(err)) - r.error) < 1e-6 * r.error
    # minimax: 5 (= m + 1) alternating extrema of equal size
    ext = [i for i in range(1, len(x) - 1) if (err[i] - err[i - 1]) * (err[i + 1] - err[i]) <= 0]
    peaks = np.abs(err[[0] + ext + [len(x) - 1]])
    assert np.sum(peaks > 0.999 * r.error) >= 5


def test_design_matches_the_measured_reference():
    # ../shared/approx-notes.md: 15, 15, 27 reaches 2^-13.3 at eps 2^-9 and 2^-7.3 at 2^-10
    assert -math.log2(design(2.0 ** -9, [15, 15, 27]).error) == pytest.approx(13.3, abs=0.1)
    assert -math.log2(design(2.0 ** -10, [15, 15, 27]).error) == pytest.approx(7.3, abs=0.1)


@pytest.mark.parametrize("degree", [1, 3, 7, 15, 27, 31])
def test_eval_odd_matches_numpy(degree):
    coeffs = np.random.default_rng(degree).normal(0, 1, (degree + 1) // 2)
    x = np.linspace(-1, 1, 1001)
    full = np.zeros(degree + 1)
    full[1::2] = coeffs
    assert np.allclose(eval_odd(SlotEvaluator(), x, coeffs), np.polynomial.chebyshev.chebval(x, full),
                       atol=1e-12)


@pytest.mark.parametrize("degree", [3, 15, 27])
def test_encrypted_depth_is_optimal(client, server, degree):
    coeffs = np.random.default_rng(degree).normal(0, 0.2, (degree + 1) // 2)
    x = np.linspace(-1, 1, client.slots)
    ct = client.encrypt(x)
    counting = CountingServer(server)
    before = server.key_switches["relinearizations"]
    out = eval_odd(counting, ct, coeffs)
    assert server.levels_left(ct) - server.levels_left(out) == depth_of(degree)
    assert counting.products == count_products(coeffs)
    # lazy relinearization: one key switch per chain of products, and a 2-element result
    relins = server.key_switches["relinearizations"] - before
    assert relins == count_relinearizations(coeffs)
    assert out.NumberCiphertextElements() == 2
    if degree >= 15:
        assert relins < counting.products
    assert np.max(np.abs(client.decrypt(out) - eval_odd(SlotEvaluator(), x, coeffs))) < 1e-8
    # the level tracer and numpy slots with levels spend the same levels and key switches
    tracer, slots = LevelTracer(server.preset), SlotEvaluator(client.slots)
    traced = eval_odd(tracer, tracer.fresh(server.levels_left(ct)), coeffs)
    on_slots = eval_odd(slots, slots.fresh(x, server.levels_left(ct)), coeffs)
    assert tracer.levels_left(traced) == slots.levels_left(on_slots) == server.levels_left(out)
    assert tracer.key_switches["relinearizations"] == slots.key_switches["relinearizations"] == relins
    assert slots.products == counting.products


# Encrypted vs twin. Fresh encryption noise at the test preset is ~1e-13; the composite's slope
# near 0 is about 1/eps (2^9) per unit of input, and |x| <= B = 4 here. Measured: 2.6e-13
# (alpha 13) and 4.8e-12 (alpha 6). 1e-9 leaves a 200x margin and still catches any wrong
# coefficient, stage order or level mismatch (those give errors of 1e-4 or more).
@pytest.mark.parametrize("alpha", [6, 13])
def test_encrypted_relu_matches_twin(client, server, alpha):
    relu = ReluApprox.from_table(alpha, bound=4.0)
    x = np.random.default_rng(alpha).uniform(-4, 4, client.slots)
    x[:64] = np.linspace(-0.02, 0.02, 64)  # the hard region near zero
    ct = client.encrypt(x / 4.0)  # inputs must be within the preset's safe magnitude
    ct = server.mul(ct, 4.0)
    before = server.key_switches["relinearizations"]
    out = relu.evaluate(server, ct)
    # one key switch per chain of products (lazy), plus the final x * (1 + p) / 2
    assert server.key_switches["relinearizations"] - before == relu.sign.relinearizations + 1
    assert server.levels_left(ct) - server.levels_left(out) == relu.depth()
    got = client.decrypt(out)
    slots = SlotEvaluator(client.slots)
    ref = relu.evaluate(slots, slots.fresh(x, server.levels_left(ct)))  # the same algorithm on numpy slots
    assert ref.level == server.levels_left(out) and np.array_equal(ref.data, relu.twin(x))
    assert np.max(np.abs(got - ref.data)) < 1e-9
    assert np.max(np.abs(got - np.maximum(x, 0))) <= relu.max_error(400_001) + 1e-9


def test_relu_error_bounds():
    relu = ReluApprox.from_table(13, bound=20.0)
    x = np.linspace(-20, 20, 400_001)
    err = np.abs(relu.twin(x) - np.maximum(x, 0))
    eps_b = relu.sign.eps * 20.0
    far = np.abs(x) >= eps_b
    assert np.all(err[far] <= np.abs(x[far]) * 2.0 ** -14 * (1 + 1e-9))
    assert np.all(err[~far] <= eps_b * (1 + relu.near_zero_gain()) / 2)


def test_prescaled_input_saves_a_level():
    relu = ReluApprox.from_table(8, bound=3.0)
    assert relu.depth(prescaled=True) == relu.depth() - 1 == relu.sign.depth + 1
    x = np.linspace(-3, 3, 1001)
    assert np.allclose(relu.twin(x / 3.0, prescaled=True) * 3.0, relu.twin(x), atol=1e-12)


def test_out_of_range_inputs_are_counted_not_clipped():
    relu = ReluApprox.from_table(8, bound=1.0)
    report = RangeReport()
    x = np.array([0.5, -0.9, 1.5, -2.0])
    y = relu.twin(x, report)
    assert (report.total, report.outside, report.max_ratio) == (4, 2, 2.0)
    # outside [-B, B] the polynomial diverges (here to inf/nan); nothing clips it to ReLU's 0
    assert not np.isclose(y[3], 0.0, atol=0.1) and not np.isclose(y[2], 1.5, atol=0.1)


def test_bad_arguments(client, server):
    with pytest.raises(ApproxError, match="no shipped sign table"):
        ReluApprox.from_table(40, 1.0)
    with pytest.raises(ApproxError, match="positive"):
        ReluApprox.from_table(8, 0.0)
    with pytest.raises(ApproxError):
        ReluApprox.from_table(8, float("nan"))
    relu = ReluApprox.from_table(13, 1.0)
    ct = client.encrypt(np.array([0.5]), levels_left=relu.depth() - 1)
    with pytest.raises(LevelError, match="composite ReLU needs 15"):
        relu.evaluate(server, ct)
    slots = SlotEvaluator(client.slots)
    with pytest.raises(LevelError, match="composite ReLU needs 15"):  # the twin checks levels alike
        relu.evaluate(slots, slots.fresh(np.array([0.5]), relu.depth() - 1))


def test_cli_report_rechecks_with_numpy_alone(capsys):
    assert cli(["approx", "relu", "--alpha", "13", "--json", "--points", "100000"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["degrees"] == [15, 15, 27] and rep["sign_depth"] == 13 and rep["relu_depth"] == 14
    x = np.linspace(rep["eps"], 1, 100_000)
    y = x
    for c in rep["components"]:
        full = np.zeros(2 * len(c))
        full[1::2] = c
        y = np.polynomial.chebyshev.chebval(y, full)
    assert np.max(np.abs(y - 1)) <= 2.0 ** -13
    assert rep["max_sign_error_on_eps_1"] <= 2.0 ** -13
