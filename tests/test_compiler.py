"""Compiler, kernels and the encrypted runtime at the test preset, on a reduced ResNet built by
the same code path as ResNet-20 (fewer channels, 8x8 images).

Each kernel is checked three ways: its algorithm as written on numpy slots (``SlotEvaluator``
with ``fast=False``: the reference) against torch, its fast twin (``fast_twin``) against the
reference, and the same algorithm on OpenFHE ciphertexts (``kernel.evaluate(server, ct)``)
against the reference and torch."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from ckksnet.core.preset import get_preset
from ckksnet.core.slots import SlotEvaluator
from ckksnet.core.tracer import LevelTracer
from ckksnet.compiler import compile
from ckksnet.compiler.affine import conv_matrix, fold_bn, pad_shortcut_matrix, pooled_linear_matrix
from ckksnet.core.plan import ActivationRangeWarning
from ckksnet.errors import CompileError, NonFiniteError, RangeError, ShapeError
from ckksnet.kernels import LinearMap, PooledDense, SumPoolStep
from ckksnet.kernels.linear import KeySwitchCounter, giant_steps
from ckksnet.kernels.pooled_dense import box_offsets, disjoint_shifts
from ckksnet.layout import Layout, PooledLayout, VectorLayout
from ckksnet.layout.rotations import signed_powers_of_two
from ckksnet.models import PadShortcut, ResNetCifar
from ckksnet.runtime import Client, RunReport, Server
from ckksnet.core.walker import GreedyRefresh, walk
from tests.conftest import make_client
from tests.helpers import random_bn

SLOTS = 2048  # the test preset's slot count
# Encrypted kernel vs its numpy reference: CKKS noise of fresh encryption and one or two rescales
# at the test preset (59-bit scale). Measured: at most 4.4e-13 (a map in lanes); 1e-10 is a 200x
# margin and still catches a wrong diagonal, mask or rotation (errors of 1e-3 or more).
NOISE = 1e-10


@pytest.fixture(scope="module")
def kclient():
    """A client of its own: kernel tests add many rotation keys."""
    return make_client()


@pytest.fixture(scope="module")
def kserver(kclient):
    return kclient.server()


def _tiny_resnet() -> ResNetCifar:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = ResNetCifar(blocks=1, widths=(2, 4, 8))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            random_bn(m, gen)
    return model.eval()


IMAGES = np.random.default_rng(0).integers(0, 256, (48, 8, 8, 3), dtype=np.uint8)


def _reference(kernel, x: np.ndarray, levels: int = 4):
    """The kernel's algorithm as written (rotations, products), on numpy slots with levels:
    (output slots, levels spent, the evaluator with its key-switch counts)."""
    ev = SlotEvaluator(SLOTS, fast=False)
    out = kernel.evaluate(ev, ev.fresh(x, levels))
    return out.data, levels - out.level, ev


def _encrypted(kclient, kserver, kernel, x: np.ndarray, levels: int = 4):
    """The same algorithm on a ciphertext of x with ``levels`` levels: (decrypted output, levels
    spent, rotations the server made). Generates the rotation keys the kernel needs first."""
    kclient.gen_rotation_keys(kernel.rotations())
    ct = kclient.encrypt(x, levels_left=levels)
    before = kserver.key_switches["rotations"]
    out = kernel.evaluate(kserver, ct)
    return (kclient.decrypt(out), kserver.levels_left(ct) - kserver.levels_left(out),
            kserver.key_switches["rotations"] - before)


# ---------------------------------------------------------------- kernels against torch
@pytest.mark.parametrize("stride, gap, cin, cout, fold", [(1, 1, 4, 4, False), (2, 1, 4, 8, False), (1, 2, 8, 8, False),
                                                         (2, 2, 8, 16, False), (1, 1, 4, 4, True), (2, 2, 8, 16, True),
                                                         (1, 1, 4, 4, "lanes"), (2, 2, 8, 16, "lanes")])
def test_conv_bn_kernel_matches_torch(kclient, kserver, stride, gap, cin, cout, fold):
    gen = torch.Generator().manual_seed(stride * 10 + gap)
    conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    bn = random_bn(nn.BatchNorm2d(cout), gen)
    size = 8 // gap
    src = Layout(cin, size, size, gap, SLOTS)
    dst = src.strided(cout, stride)
    matrix, bias = conv_matrix(*fold_bn(conv, bn), stride, 1, src, dst)
    lm = LinearMap.fold(matrix, bias, input_span=src.span, lanes=fold == "lanes") if fold else LinearMap(matrix, bias)
    if fold:  # the input fills 1/8 of the slots: replicated, the map needs fewer diagonals
        unfolded = LinearMap(matrix, bias)
        assert lm.period < SLOTS and len(lm.offsets) < len(unfolded.offsets)
        assert unfolded.period == SLOTS and LinearMap.fold(matrix, bias).period == SLOTS
    if fold == "lanes":  # 8 lanes: each product serves up to 8 diagonals, for one more level
        folded = LinearMap.fold(matrix, bias, input_span=src.span, lanes=False)
        assert lm.lanes == SLOTS // lm.period > 1 and lm.levels() == 2 and folded.levels() == 1
        assert len(lm.offsets) * 2 < len(folded.offsets)
        lm = replace(lm, baby_step=lm.baby_step_size, horner=False)  # giant sums rotated one by one, not Horner
        assert lm.giant_plan[1] is False
    x = torch.rand(1, cin, size, size, generator=gen) - 0.5
    want = bn(conv(x)).detach().double().numpy()[0]
    packed = src.pack(x.double().numpy()[0])
    fast = lm.fast_twin(packed)
    assert np.max(np.abs(dst.unpack(fast) - want)) < 1e-5  # torch computes in float32
    ref, spent, ev = _reference(lm, packed)
    assert spent == lm.levels() and np.max(np.abs(ref - fast)) < 1e-12
    got, spent, rotations = _encrypted(kclient, kserver, lm, packed)
    assert spent == lm.levels()
    assert np.max(np.abs(got - ref)) < NOISE
    assert np.max(np.abs(dst.unpack(got) - want)) < 1e-5
    # a key for every index the map needs: one key switch per rotation, as numpy counts them
    assert rotations == ev.key_switches["rotations"] > 0


def test_baby_step_is_tuned_for_the_keys_present():
    """With the keys a server holds, n1 minimizes key switches (chained rotations), not indices."""
    src = Layout(8, 4, 4, 2, SLOTS)
    conv = nn.Conv2d(8, 8, 3, 1, 1, bias=False)
    lm = LinearMap.fold(*conv_matrix(*fold_bn(conv, None), 1, 1, src, src), input_span=src.span)
    keys = frozenset(signed_powers_of_two(SLOTS))
    count = KeySwitchCounter(SLOTS, keys)
    cost = lambda n1, horner: count(np.unique(lm.offsets % n1), giant_steps(np.unique(lm.offsets // n1), n1, horner))  # noqa: E731
    x = src.pack(np.random.default_rng(0).standard_normal((8, 4, 4)))
    default = lm.giant_plan
    assert lm.baby_step == 0 and default == lm._best_plan(None)  # untuned: fewest rotation indices
    for horner in (True, False):  # both ways of summing the giant steps compute the map
        variant = replace(lm, baby_step=default[0], horner=horner)
        assert np.max(np.abs(_reference(variant, x)[0] - lm.fast_twin(x))) < 1e-12
    tuned = lm.tuned(keys)
    assert tuned is not lm and lm.baby_step == 0 and lm.giant_plan == default  # a new map; lm unchanged
    assert tuned.giant_plan == (tuned.baby_step, tuned.horner) == lm._best_plan(keys)
    assert cost(*tuned.giant_plan) <= cost(*default) < float("inf")
    assert np.max(np.abs(_reference(tuned, x)[0] - lm.fast_twin(x))) < 1e-12
    # the level tracer, chaining rotations from these keys as the server does, counts what the
    # tuning minimized, plus the replication's rotations
    tracer = LevelTracer(get_preset("test"), keys)
    out = tuned.evaluate(tracer, tracer.fresh(3))
    assert tracer.levels_left(out) == 3 - tuned.levels()
    replication = sum(len(count.chain(-span)) for span in tuned.shifts)
    assert tuned.shifts and tracer.key_switches["rotations"] == cost(*tuned.giant_plan) + replication
    assert KeySwitchCounter(SLOTS, frozenset({2}))([1], []) == float("inf")  # odd: unreachable
    assert count([1], [8]) == 2 and count([1, 2], [8, 8]) == 4  # giants rotate separate sums


def test_shortcut_and_pool_linear_match_torch(kclient, kserver):
    src = Layout(4, 8, 8, 1, SLOTS)
    dst = src.strided(8, 2)
    lm = LinearMap(*pad_shortcut_matrix(src, dst, 2))
    x = torch.rand(1, 4, 8, 8) - 0.5
    want = PadShortcut(4, 8, 2)(x).double().numpy()[0]
    packed = src.pack(x.double().numpy()[0])
    ref, spent, _ = _reference(lm, packed)
    assert np.max(np.abs(dst.unpack(ref) - want)) < 1e-12 and spent == 1  # a selection: exact
    assert np.max(np.abs(lm.fast_twin(packed) - ref)) < 1e-12
    got, spent, _ = _encrypted(kclient, kserver, lm, packed)
    assert spent == 1 and np.max(np.abs(got - ref)) < NOISE
    assert np.max(np.abs(dst.unpack(got) - want)) < 1e-9
    # rotate-and-sum pooling (gap-2 layout), then the dense layer on the channel sums
    fc = nn.Linear(8, 10)
    src = Layout(8, 4, 4, 2, SLOTS)
    pool = SumPoolStep("pool", src)
    out = VectorLayout(10, SLOTS)
    lm = LinearMap(*pooled_linear_matrix(fc, PooledLayout(src), out, 16))
    x = torch.rand(8, 4, 4) - 0.5
    want = fc(x.mean((1, 2))).detach().double().numpy()
    packed = src.pack(x.double().numpy())
    ev = SlotEvaluator(SLOTS, fast=False)
    pooled = pool.evaluate(ev, [ev.fresh(packed, 2)], None)
    assert pooled.level == 2 and len(pool.rotations()) == 4 and pool.levels() == 0
    ref = lm.evaluate(ev, pooled)
    assert np.max(np.abs(out.unpack(ref.data) - want)) < 1e-6  # torch is float32
    assert np.max(np.abs(lm.fast_twin(pooled.data) - ref.data)) < 1e-12
    kclient.gen_rotation_keys(pool.rotations() | lm.rotations())
    enc_pooled = pool.evaluate(kserver, [kclient.encrypt(packed, levels_left=2)], None)
    assert kserver.levels_left(enc_pooled) == 2
    assert np.max(np.abs(kclient.decrypt(enc_pooled) - pooled.data)) < NOISE
    enc = kclient.decrypt(lm.evaluate(kserver, enc_pooled))
    assert np.max(np.abs(enc - ref.data)) < NOISE and np.max(np.abs(out.unpack(enc) - want)) < 1e-5
    # the same layer as masks and one box sum: 10 products, outputs in disjoint windows
    layout = PooledLayout(src)
    dense = PooledDense(fc.weight.detach().double().numpy() / 16, fc.bias.detach().double().numpy(),
                        layout.index, layout.box, SLOTS, "fc")
    out2 = VectorLayout(10, SLOTS, tuple(int(p) for p in dense.outputs))
    ref2 = dense.evaluate(ev, pooled)  # partial sums in the other slots must not leak into outputs
    assert ref2.level == 1 and np.max(np.abs(out2.unpack(ref2.data) - want)) < 1e-6
    kclient.gen_rotation_keys(dense.rotations())
    before = dict(kserver.key_switches)
    enc = dense.evaluate(kserver, pool.evaluate(kserver, [kclient.encrypt(packed)], None))
    got = kclient.decrypt(enc)
    assert np.max(np.abs(got - ref2.data)) < NOISE and np.max(np.abs(out2.unpack(got) - want)) < 1e-5
    # one key switch per rotation (every index has its key): pooling, 9 shifts, the box sum
    switches = kserver.key_switches["rotations"] - before["rotations"]
    assert switches == len(pool.rotations()) + len(dense.rotations()) == 4 + 9 + 3


def test_pooled_dense_windows_are_disjoint():
    box = ((1, 4), (32, 4), (1024, 4))  # ResNet-20 stage 3: 64 channel sums, gap 4
    shifts = disjoint_shifts(10, box, 1 << 14)
    windows = [set(((box_offsets(box) - r) % (1 << 14)).tolist()) for r in shifts]
    assert all(not (a & b) for i, a in enumerate(windows) for b in windows[i + 1:])
    assert shifts[:8] == [0, 4, 8, 12, 16, 20, 24, 28]
    # for ResNet-20's 64 -> 10 layer it beats the diagonal method by far (for 8 channels it does not)
    pooled = PooledLayout(Layout(64, 8, 8, 4, 1 << 14))
    fc = nn.Linear(64, 10)
    dense = PooledDense(fc.weight.detach().double().numpy(), np.zeros(10), pooled.index, pooled.box, 1 << 14)
    generic = LinearMap.fold(*pooled_linear_matrix(fc, pooled, VectorLayout(10, 1 << 14), 64), "fc", 1 << 14)
    assert dense.cost() * 2 < generic.cost()
    with pytest.raises(ValueError, match="do not fit"):
        disjoint_shifts(5, ((1, 64),), 256)
    with pytest.raises(ValueError, match="offset of the box"):
        PooledDense(np.ones((2, 2)), np.zeros(2), [0, 3], ((1, 2),), 64)


def test_folding_needs_zeros_outside_the_span():
    """The folded map reads copies of the input: it equals the plain map only when the input is
    zero outside its span, which is what layouts guarantee (and the twin reproduces otherwise)."""
    src = Layout(4, 8, 8, 1, SLOTS)
    conv = nn.Conv2d(4, 4, 3, 1, 1, bias=False)
    matrix, bias = conv_matrix(*fold_bn(conv, None), 1, 1, src, src)
    lm = LinearMap.fold(matrix, bias, input_span=src.span)
    assert lm.period == 256 and {SLOTS - 256, SLOTS - 512, SLOTS - 1024} <= lm.rotations()
    x = src.pack(np.random.default_rng(1).uniform(-1, 1, (4, 8, 8)))
    assert np.max(np.abs(lm.fast_twin(x) - (matrix @ x + bias))) < 1e-12
    assert np.max(np.abs(_reference(lm, x)[0] - (matrix @ x + bias))) < 1e-12
    x[SLOTS - 1] = 1.0  # a stray value outside the span reaches the output through a copy
    assert np.max(np.abs(lm.fast_twin(x) - (matrix @ x + bias))) > 1e-3
    assert np.max(np.abs(_reference(lm, x)[0] - lm.fast_twin(x))) < 1e-12


def test_bn_folding_is_exact():
    gen = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(3, 5, 3, 1, 1, bias=True)
    bn = random_bn(nn.BatchNorm2d(5), gen)
    w, b = fold_bn(conv, bn)
    x = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    folded = torch.nn.functional.conv2d(x, torch.from_numpy(w), torch.from_numpy(b), padding=1)
    ref = bn.double()(conv.double()(x))
    assert torch.max(torch.abs(folded - ref)) < 1e-12


def test_layout_round_trip_and_multiplexing():
    lay = Layout(8, 4, 4, 2, SLOTS)
    x = np.random.default_rng(0).normal(size=(8, 4, 4))
    assert np.array_equal(lay.unpack(lay.pack(x)), x)
    assert len(np.unique(lay.index)) == 8 * 16 and lay.used == 2 * 64
    assert Layout(64, 32, 32, 1, SLOTS).ciphertexts == 64 * 1024 // SLOTS  # larger: several ciphertexts
    with pytest.raises(ShapeError):
        Layout(0, 32, 32, 1, SLOTS)


# ---------------------------------------------------------------- compiler
def test_plan_twin_matches_torch():
    model = _tiny_resnet()
    plan = compile(model, calibration=IMAGES, preset="test", image_size=(8, 8))
    kinds = [s.kind for s, _, _ in plan.steps]
    assert kinds.count("relu") == 7 and kinds.count("add") == 3
    x = torch.from_numpy(IMAGES[:8]).permute(0, 3, 1, 2).float() / 255
    want = model(x).detach().numpy()
    ranges = {}
    twin = plan.twin(IMAGES[:8], ranges=ranges)
    # the only difference is the ReLU approximation (alpha 13): measured 3e-4 on logits ~2
    assert np.max(np.abs(twin - want)) < 2e-3
    assert np.array_equal(twin.argmax(1), want.argmax(1))
    # every ReLU saw every input slot of the 8 images, none beyond its bound B
    relus = {s.name for s, _, _ in plan.steps if s.kind == "relu"}
    assert set(ranges) == relus
    assert all(r["outside"] == 0 and r["total"] > 0 and 0 < r["max_ratio"] <= 1 for r in ranges.values())
    # the fast twin (sparse products) is every kernel's algorithm as written, and strict passes
    assert np.max(np.abs(plan.twin(IMAGES[:8], reference=True, strict=True) - twin)) < 1e-12


def test_twin_reports_inputs_beyond_an_activation_bound():
    """Bounds below the calibrated ranges (margin 0.5): the twin names the layers whose inputs
    left [-B, B], warns, or with strict raises."""
    plan = compile(_tiny_resnet(), calibration=IMAGES, preset="test", image_size=(8, 8), margin=0.5)
    ranges = {}
    with pytest.warns(ActivationRangeWarning, match="beyond their approximation's interval"):
        plan.twin(IMAGES[:8], ranges=ranges)
    assert set(ranges) == {s.name for s, _, _ in plan.steps if s.kind == "relu"}
    # the stem ReLU sees finite inputs beyond its bound, by at most 1 / margin (B is at least half
    # its calibrated max: the scale it shares along the shortcut may be larger); the diverged
    # polynomial then sends later layers inputs beyond theirs (inf and NaN counted too)
    stem = ranges[next(s.name for s, _, _ in plan.steps if s.kind == "relu")]
    assert stem["outside"] > 0 and 1 < stem["max_ratio"] <= 2 + 1e-9
    assert all(r["outside"] > 0 for r in ranges.values())
    with pytest.raises(RangeError, match="beyond"):
        plan.twin(IMAGES[:8], strict=True)


def test_unsupported_module_is_named():
    model = _tiny_resnet()
    model.layers[0].relu1 = nn.GELU()
    with pytest.raises(CompileError, match=r"layers\.0\.relu1.*GELU"):
        compile(model, calibration=IMAGES, preset="test", image_size=(8, 8))


def test_bad_images_are_rejected():
    plan = compile(_tiny_resnet(), calibration=IMAGES, preset="test", image_size=(8, 8))
    with pytest.raises(ShapeError):
        plan.preprocess(np.zeros((8, 8, 4), dtype=np.uint8))
    with pytest.raises(RangeError):
        plan.preprocess(np.full((3, 8, 8), 1.5))
    with pytest.raises(NonFiniteError):
        plan.preprocess(np.full((3, 8, 8), np.nan))


# ---------------------------------------------------------------- the whole network, encrypted
@pytest.mark.parametrize("lanes, pooled_dense", [(None, None), (True, True)])
def test_encrypted_network_matches_plaintext_and_twin(lanes, pooled_dense):
    model = _tiny_resnet()
    plan = compile(model, calibration=IMAGES, preset="test", image_size=(8, 8), lanes=lanes,
                   pooled_dense=pooled_dense)
    laned = [s for s, _, _ in plan.steps if s.kind == "linear" and getattr(s.kernel, "lanes", 1) > 1]
    assert bool(laned) == bool(lanes)  # the cost model keeps this small net out of lanes
    dense = [s for s, _, _ in plan.steps if isinstance(getattr(s, "kernel", None), PooledDense)]
    assert len(dense) == (1 if pooled_dense else 0)  # ... and its 8-channel fc in the diagonal method
    client = Client(plan)
    server = Server(plan, client.evaluation_keys())
    assert not hasattr(server.evaluator, "decrypt")
    x = torch.from_numpy(IMAGES[:2]).permute(0, 3, 1, 2).float() / 255
    want = model(x).detach().double().numpy()
    twin = plan.twin(IMAGES[:2])
    for i in range(2):
        logits = client.decrypt(server.run(client.encrypt(IMAGES[i])))
        # Encrypted vs twin is CKKS noise only: measured 1e-7 at the test preset (bootstrapping
        # at 24 bits, ReLU slopes near zero amplify it); 1e-5 is a 70x margin. Against torch the
        # ReLU approximation adds its own error, bounded by the twin's.
        assert np.max(np.abs(logits - twin[i])) < 1e-5
        assert np.max(np.abs(logits - want[i])) <= np.max(np.abs(twin[i] - want[i])) + 1e-5
        assert logits.argmax() == want[i].argmax()
        report = server.report.to_dict()
        assert report["bootstraps"] > 0 and len(report["steps"]) == len(plan.steps)
        assert all(s["level_out"] >= 0 for s in report["steps"])
        # every ReLU relinearizes, every linear map here rotates; the keys present are listed
        assert all(s["key_switches"] > 0 for s in report["steps"] if s["kind"] in ("linear", "relu"))
        assert report["key_switches"] == sum(s["key_switches"] for s in report["steps"])
        assert set(report["rotation_keys"]) == server.evaluator.rotations
        _check_schedule_predicts(plan, server.report)
    if lanes is None:
        _check_greedy_run(plan, client, server, IMAGES[1], logits, twin[1])


def _check_schedule_predicts(plan, report: RunReport) -> None:
    """The compile-time schedule predicts every level, bootstrap and key switch of the real run."""
    fields = lambda s: (s.name, s.kind, s.level_in, s.level_out, s.bootstraps, s.key_switches)  # noqa: E731
    assert [fields(s) for s in plan.schedule.steps] == [fields(s) for s in report.steps]
    assert plan.schedule.bootstraps == report.bootstraps > 0
    assert plan.schedule.key_switches == sum(s.key_switches for s in report.steps)


def _check_greedy_run(plan, client, server, image, logits, twin) -> None:
    """The schedule's drops change no bootstrap: a greedy run (bootstrap only when a stage lacks
    its levels) from a fresh ciphertext with every level makes the same bootstraps in the same
    steps, with the same key switches, at equal or more levels, and gives the same logits within
    noise. The schedule encrypts the input below the depth (the first layers do not need it)."""
    sched = plan.schedule
    assert 0 < sched.input_level < plan.preset.depth
    assert server.report.steps[0].level_in == sched.input_level
    ct = client.keys.encrypt(plan.preprocess(image))
    assert server.evaluator.levels_left(ct) == plan.preset.depth
    greedy, refresh = RunReport(), GreedyRefresh(server.evaluator)
    out = client.decrypt(walk(plan, server.evaluator, ct, refresh, greedy))
    scheduled = server.report.steps
    assert [(s.name, s.bootstraps) for s in greedy.steps] == [(s.name, s.bootstraps) for s in scheduled]
    assert [s.key_switches for s in greedy.steps] == [s.key_switches for s in scheduled]
    # the schedule was derived from exactly these refresh decisions
    assert refresh.decisions == [d is not None for d in sched.decisions()]
    assert all(s.level_out <= g.level_out for s, g in zip(scheduled, greedy.steps))
    assert sum(s.level_out < g.level_out for s, g in zip(scheduled, greedy.steps)) > 0
    assert np.max(np.abs(out - logits)) < 1e-5 and np.max(np.abs(out - twin)) < 1e-5
