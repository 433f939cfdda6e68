"""Compiler, kernels and the encrypted runtime at the test preset, on a reduced ResNet built by
the same code path as ResNet-20 (fewer channels, 8x8 images)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from ckksnet.compiler import compile
from ckksnet.compiler.lower import conv_matrix, fold_bn, pad_shortcut_matrix, pooled_linear_matrix
from ckksnet.compiler.steps import SumPoolStep
from ckksnet.errors import CompileError, RangeError, ShapeError
from ckksnet.layout.rotations import signed_powers_of_two
from ckksnet.kernels.linear import KeySwitchCounter, LinearMap, giant_steps
from ckksnet.kernels.pooled_dense import PooledDense, box_offsets, disjoint_shifts
from ckksnet.layout import Layout, PooledLayout, VectorLayout
from ckksnet.models import PadShortcut, ResNetCifar
from ckksnet.runtime import Client, RunReport, Server, execute, level_schedule
from ckksnet.runtime.levels import LevelTracer, Refresh
from tests.conftest import make_client

SLOTS = 2048  # the test preset's slot count


@pytest.fixture(scope="module")
def kclient():
    """A client of its own: kernel tests add many rotation keys."""
    return make_client()


@pytest.fixture(scope="module")
def kserver(kclient):
    return kclient.server()


def _random_bn(bn: nn.BatchNorm2d, gen: torch.Generator) -> nn.BatchNorm2d:
    bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.2)
    bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
    bn.weight.data.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
    bn.bias.data.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
    return bn.eval()


def _tiny_resnet() -> ResNetCifar:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = ResNetCifar(blocks=1, widths=(2, 4, 8))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            _random_bn(m, gen)
    return model.eval()


IMAGES = np.random.default_rng(0).integers(0, 256, (48, 8, 8, 3), dtype=np.uint8)


# ---------------------------------------------------------------- kernels against torch
@pytest.mark.parametrize("stride, gap, cin, cout, fold", [(1, 1, 4, 4, False), (2, 1, 4, 8, False), (1, 2, 8, 8, False),
                                                         (2, 2, 8, 16, False), (1, 1, 4, 4, True), (2, 2, 8, 16, True),
                                                         (1, 1, 4, 4, "lanes"), (2, 2, 8, 16, "lanes")])
def test_conv_bn_kernel_matches_torch(kclient, kserver, stride, gap, cin, cout, fold):
    gen = torch.Generator().manual_seed(stride * 10 + gap)
    conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    bn = _random_bn(nn.BatchNorm2d(cout), gen)
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
        lm.__dict__["giant_plan"] = (lm.baby_size, False)  # giant sums rotated one by one, not Horner
    x = torch.rand(1, cin, size, size, generator=gen) - 0.5
    want = bn(conv(x)).detach().double().numpy()[0]
    packed = src.pack(x.double().numpy()[0])
    assert np.max(np.abs(dst.unpack(lm.twin(packed)) - want)) < 1e-5
    assert np.max(np.abs(lm.twin_bsgs(packed) - lm.twin(packed))) < 1e-12
    kclient.gen_rotation_keys(lm.rotations())
    got = dst.unpack(kclient.decrypt(lm.encrypted(kserver, kclient.encrypt(packed))))
    assert np.max(np.abs(got - want)) < 1e-5


def test_baby_step_is_tuned_for_the_keys_present():
    """With the keys a server holds, n1 minimizes key switches (chained rotations), not indices."""
    src = Layout(8, 4, 4, 2, SLOTS)
    conv = nn.Conv2d(8, 8, 3, 1, 1, bias=False)
    lm = LinearMap.fold(*conv_matrix(*fold_bn(conv, None), 1, 1, src, src), input_span=src.span)
    keys = frozenset(signed_powers_of_two(SLOTS))
    count = KeySwitchCounter(SLOTS, keys)
    cost = lambda n1, horner: count(np.unique(lm.offsets % n1), giant_steps(np.unique(lm.offsets // n1), n1, horner))  # noqa: E731
    x = src.pack(np.random.default_rng(0).standard_normal((8, 4, 4)))
    for horner in (True, False):  # both ways of summing the giant steps compute the map
        lm.__dict__["giant_plan"] = (lm.baby_size, horner)
        assert np.max(np.abs(lm.twin_bsgs(x) - lm.twin(x))) < 1e-12
    default = lm._best_plan(None)
    tuned = lm.tune_for_keys(keys)
    assert lm.giant_plan == tuned and cost(*tuned) <= cost(*default) < float("inf")
    assert np.max(np.abs(lm.twin_bsgs(x) - lm.twin(x))) < 1e-12
    assert KeySwitchCounter(SLOTS, frozenset({2}))([1], []) == float("inf")  # odd: unreachable
    assert count([1], [8]) == 2 and count([1, 2], [8, 8]) == 4  # giants rotate separate sums


def test_shortcut_and_pool_linear_match_torch(kclient, kserver):
    src = Layout(4, 8, 8, 1, SLOTS)
    dst = src.strided(8, 2)
    lm = LinearMap(*pad_shortcut_matrix(src, dst, 2))
    x = torch.rand(1, 4, 8, 8) - 0.5
    want = PadShortcut(4, 8, 2)(x).double().numpy()[0]
    kclient.gen_rotation_keys(lm.rotations())
    got = dst.unpack(kclient.decrypt(lm.encrypted(kserver, kclient.encrypt(src.pack(x.double().numpy()[0])))))
    assert np.max(np.abs(got - want)) < 1e-9
    # rotate-and-sum pooling (gap-2 layout), then the dense layer on the channel sums
    fc = nn.Linear(8, 10)
    src = Layout(8, 4, 4, 2, SLOTS)
    pool = SumPoolStep("pool", src)
    out = VectorLayout(10, SLOTS)
    lm = LinearMap(*pooled_linear_matrix(fc, PooledLayout(src), out, 16))
    x = torch.rand(8, 4, 4) - 0.5
    want = fc(x.mean((1, 2))).detach().double().numpy()
    packed = src.pack(x.double().numpy())
    assert np.max(np.abs(out.unpack(lm.twin(pool.twin([packed]))) - want)) < 1e-6  # torch is float32
    assert len(pool.rotations()) == 4 and pool.levels() == 0
    kclient.gen_rotation_keys(pool.rotations() | lm.rotations())
    enc = lm.encrypted(kserver, pool.encrypted(kserver, [kclient.encrypt(packed)], None))
    assert np.max(np.abs(out.unpack(kclient.decrypt(enc)) - want)) < 1e-5
    # the same layer as masks and one box sum: 10 products, outputs in disjoint windows
    pooled = PooledLayout(src)
    dense = PooledDense(fc.weight.detach().double().numpy() / 16, fc.bias.detach().double().numpy(),
                        pooled.index, pooled.box, SLOTS, "fc")
    out2 = VectorLayout(10, SLOTS, tuple(int(p) for p in dense.outputs))
    garbage = pool.twin([packed])  # partial sums in the other slots must not leak into outputs
    assert np.max(np.abs(out2.unpack(dense.twin(garbage)) - want)) < 1e-6
    kclient.gen_rotation_keys(dense.rotations())
    before = dict(kserver.key_switches)
    enc = dense.encrypted(kserver, pool.encrypted(kserver, [kclient.encrypt(packed)], None))
    assert np.max(np.abs(out2.unpack(kclient.decrypt(enc)) - want)) < 1e-5
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
    assert np.max(np.abs(lm.twin(x) - (matrix @ x + bias))) < 1e-12
    x[SLOTS - 1] = 1.0  # a stray value outside the span reaches the output through a copy
    assert np.max(np.abs(lm.twin(x) - (matrix @ x + bias))) > 1e-3
    assert np.max(np.abs(lm.twin_bsgs(x) - lm.twin(x))) < 1e-12


def test_bn_folding_is_exact():
    gen = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(3, 5, 3, 1, 1, bias=True)
    bn = _random_bn(nn.BatchNorm2d(5), gen)
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
    with pytest.raises(ShapeError):
        Layout(64, 32, 32, 1, SLOTS)


# ---------------------------------------------------------------- compiler
def test_plan_twin_matches_torch():
    model = _tiny_resnet()
    plan = compile(model, calibration=IMAGES, preset="test", image_size=(8, 8))
    kinds = [s.kind for s, _, _ in plan.steps]
    assert kinds.count("relu") == 7 and kinds.count("add") == 3
    x = torch.from_numpy(IMAGES[:8]).permute(0, 3, 1, 2).float() / 255
    want = model(x).detach().numpy()
    twin = plan.twin(IMAGES[:8])
    # the only difference is the ReLU approximation (alpha 13): measured 3e-4 on logits ~2
    assert np.max(np.abs(twin - want)) < 2e-3
    assert np.array_equal(twin.argmax(1), want.argmax(1))
    assert all(r["outside"] == 0 for r in plan.relu_reports().values())


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
    with pytest.raises(RangeError):
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
    assert not hasattr(server.ckks, "decrypt")
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
        assert set(report["rotation_keys"]) == server.ckks.rotations
    if lanes is None:
        _check_level_schedule(plan, client, server)


def _check_level_schedule(plan, client, server):
    """The dry run predicts every level of a real run, and the drops it allows change no
    bootstrap: the run with them (server.run) makes the same bootstraps in the same steps,
    at equal or fewer levels, and its logits still match the twin."""
    schedule = level_schedule(plan)
    assert schedule.bootstraps > 0 and any(schedule.drops) and schedule.input_slack >= 0
    tracer = LevelTracer(plan.preset)
    traced = RunReport()
    execute(plan, tracer, tracer.fresh(plan.preset.depth), Refresh(tracer), traced, free_memory=False)
    plain = RunReport()  # a real run without the schedule: fresh input, no drops
    ct = client.ckks.encrypt(plan.preprocess(IMAGES[0]))
    logits = client.decrypt(execute(plan, server.ckks, ct, Refresh(server.ckks), plain))
    levels = lambda r: [(s.level_in, s.level_out, s.bootstraps) for s in r.steps]  # noqa: E731
    assert levels(traced) == levels(plain)
    dropped = client.encrypt(IMAGES[0])
    assert server.ckks.levels_left(dropped) == plan.preset.depth - schedule.input_slack
    out = client.decrypt(server.run(dropped))
    lowered = levels(server.report)
    assert [b for _, _, b in lowered] == [b for _, _, b in levels(plain)]
    assert all(a[1] <= b[1] for a, b in zip(lowered, levels(plain)))
    assert sum(a[1] < b[1] for a, b in zip(lowered, levels(plain))) > 0
    assert np.max(np.abs(out - logits)) < 1e-5 and np.max(np.abs(out - plan.twin(IMAGES[:1])[0])) < 1e-5
