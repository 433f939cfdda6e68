"""Activations over several ciphertexts (issue #29): layouts that span k ciphertexts, the block
linear map, every kernel with k = 1, 2 and 3 input and output ciphertexts, twin and encrypted
against torch (test preset: 2,048 slots per ciphertext)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn as nn

from ckksnet import compile
from ckksnet.core.slots import SlotEvaluator
from ckksnet.core.tiles import Tiles, TiledEvaluator, join, split_packed, tiles_of
from ckksnet.errors import ShapeError
from ckksnet.kernels.linear import BlockLinearMap, LinearStep
from ckksnet.layout import Layout
from ckksnet.runtime import Client, Server
from tests.helpers import random_batchnorms

SLOTS = 2048


def test_a_layout_larger_than_a_ciphertext_spans_several():
    lay = Layout(24, 16, 16, 1, SLOTS)  # 6,144 values: 3 ciphertexts
    assert lay.ciphertexts == 3 and lay.aligned
    x = np.random.default_rng(0).normal(size=(2, 24, 16, 16))
    packed = lay.pack(x)
    assert packed.shape == (2, 3 * SLOTS)
    assert np.array_equal(lay.unpack(packed), x)
    parts = split_packed(packed, SLOTS)
    assert len(parts) == 3 and all(p.shape == (2, SLOTS) for p in parts)
    assert Layout(3, 16, 16, 1, SLOTS).ciphertexts == 1
    assert not Layout(1, 64, 64, 1, SLOTS).aligned  # one 4,096-slot grid over two ciphertexts
    # a stride-2 map keeps the multiplexed grid only where that spans no more ciphertexts
    assert Layout(16, 16, 16, 1, SLOTS).resized(32, 8, 8, (2, 2)).ciphertexts == 1


def test_tiled_evaluator_runs_each_tile_and_splits_long_plaintexts():
    ev = TiledEvaluator(SlotEvaluator(SLOTS))
    rng = np.random.default_rng(1)
    a, b = (Tiles(ev.fresh(rng.normal(size=SLOTS), 5) for _ in range(2)) for _ in range(2))
    long = rng.normal(size=2 * SLOTS)
    prod = ev.mul(a, long)
    assert isinstance(prod, Tiles) and ev.levels_left(prod) == 4
    for t in range(2):
        assert np.allclose(prod[t].data, a[t].data * long[t * SLOTS:(t + 1) * SLOTS])
    rot = ev.rotate_composed(ev.add(a, b), [3])[3]
    assert np.allclose(rot[1].data, np.roll(a[1].data + b[1].data, -3))  # each ciphertext on its own
    assert ev.levels_left(ev.bootstrap(ev.drop_levels(a, 2))) > 2
    assert join(tiles_of(a)) == a and join([a[0]]) is a[0]


@pytest.mark.parametrize("k_in, k_out", [(1, 2), (2, 1), (2, 3), (3, 3)])
def test_block_linear_map_is_the_matrix_with_shared_rotations(k_in, k_out):
    """The baby-step giant-step algorithm over blocks (rotations, as the ciphertexts run it)
    equals the sparse matrix, and makes each input's baby steps once, each output's giant steps
    once: far fewer rotations than k_in x k_out separate maps."""
    rng = np.random.default_rng(k_in * 10 + k_out)
    n_in, n_out = k_in * SLOTS, k_out * SLOTS
    m = sp.random(n_out, n_in, density=0.002, random_state=int(rng.integers(1 << 30)), format="csr")
    bias = rng.normal(size=n_out)
    bm = BlockLinearMap.split(m, bias, SLOTS, "m", [SLOTS] * k_in)
    x = rng.normal(size=n_in)
    base = SlotEvaluator(SLOTS, fast=False)
    ev = TiledEvaluator(base)
    out = bm.evaluate(ev, join([base.fresh(p, 3) for p in split_packed(x, SLOTS)]))
    got = np.concatenate([t.data for t in tiles_of(out)])
    assert np.allclose(got, m @ x + bias, atol=1e-9)
    assert np.allclose(bm.fast_twin(x[None])[0], m @ x + bias, atol=1e-9)
    babies, giants = bm._rotation_sets(bm.n1)
    assert base.key_switches["rotations"] == sum(map(len, babies)) + sum(map(len, giants))
    assert all(ev.levels_left(t) == 2 for t in tiles_of(out))  # one level


class _Wide(nn.Module):
    """k changes along the way: 3x16x16 (1 ciphertext) -> 16 ch (2) -> 24 ch (3) -> identity
    shortcut at 3 -> stride-2 projection shortcut to 32 ch at 8x8 (1) -> pool -> dense. ReLUs at
    k = 2, 3 and 1 (kept few: each refresh of a 3-ciphertext value is 3 bootstraps)."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24)
        self.c3, self.b3 = nn.Conv2d(24, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24)
        self.c4, self.b4 = nn.Conv2d(24, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
        self.proj, self.bp = nn.Conv2d(24, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = x + self.b3(self.c3(x))                                   # identity shortcut, k = 3
        x = torch.relu(self.b4(self.c4(x)) + self.bp(self.proj(x)))   # projection shortcut, 3 -> 1
        return self.fc(x.mean((2, 3)))


class _PoolWide(nn.Module):
    """Global pooling and the dense layer on a tensor over 3 ciphertexts (24 ch x 16 x 16)."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.b1(self.c1(x))).mean((2, 3)))


def _model(cls, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return random_batchnorms(cls(), torch.Generator().manual_seed(seed))


def _images(channels: int, n: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, channels), dtype=np.uint8)


def _torch(model: nn.Module, plan, images: np.ndarray) -> np.ndarray:
    from ckksnet.inputs import as_images

    x, _ = as_images(images, *plan.input_layout.shape)
    x = (x - plan.mean[None, :, None, None]) / plan.std[None, :, None, None]
    with torch.no_grad():
        return model(torch.from_numpy(x).float()).double().numpy()


def _compile(model, images):
    """At the test preset with the alpha-8 sign table (fewer levels, so fewer bootstraps: each
    refresh of a 3-ciphertext value is 3 of them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the insecure test preset says so
        return compile(model, calibration=images, preset="test", image_size=(16, 16), alpha=8, eps_bits=8)


def _widths(plan) -> list[tuple[str, int, int]]:
    """(step, ciphertexts in, ciphertexts out) per step."""
    return [(s.name, plan.values[ins[0]].layout.ciphertexts, plan.values[o].layout.ciphertexts)
            for s, ins, o in plan.steps]


@pytest.fixture(scope="module")
def wide():
    images = _images(3)
    model = _model(_Wide, 3)
    return model, _compile(model, images), images


@pytest.fixture(scope="module")
def pool_wide():
    images = _images(1, seed=1)
    model = _model(_PoolWide, 4)
    return model, _compile(model, images), images


def test_the_plan_changes_k_along_the_network(wide):
    _, plan, _ = wide
    widths = dict((n, (a, b)) for n, a, b in _widths(plan))
    assert widths["c1"] == (1, 2) and widths["c2"] == (2, 3) and widths["c3"] == (3, 3)
    kinds = {s.kind: set() for s, _, _ in plan.steps}
    for (s, ins, o), (_, a, b) in zip(plan.steps, _widths(plan)):
        kinds[s.kind] |= {a, b}
    assert {1, 2, 3} <= kinds["relu"] and 3 in kinds["add"] and {1, 3} <= kinds["linear"]
    assert any(isinstance(s, LinearStep) and isinstance(s.kernel, BlockLinearMap) for s, _, _ in plan.steps)
    # bootstraps count ciphertexts: a refresh of a 3-ciphertext value takes 3
    assert plan.schedule.bootstraps >= 3


def test_pooling_reads_three_ciphertexts(pool_wide):
    _, plan, _ = pool_wide
    kinds = [(s.kind, a, b) for (s, _, _), (_, a, b) in zip(plan.steps, _widths(plan))]
    assert ("relu", 3, 3) in kinds and any(k == "pool" and a == 3 for k, a, _ in kinds)


@pytest.mark.parametrize("which", ["wide", "pool_wide"])
def test_twin_over_several_ciphertexts_matches_torch(which, request):
    model, plan, images = request.getfixturevalue(which)
    want = _torch(model, plan, images[:6])
    twin = plan.twin(images[:6], strict=True)
    assert np.max(np.abs(twin - want)) < 2e-2          # the alpha-8 ReLU approximation only
    assert np.array_equal(twin.argmax(1), want.argmax(1))
    # the fast twin (sparse products per block) is every kernel's algorithm as written
    assert np.max(np.abs(plan.twin(images[:2], reference=True) - twin[:2])) < 1e-10


@pytest.mark.parametrize("which", ["wide", "pool_wide"])
def test_encrypted_over_several_ciphertexts_matches_torch(which, request):
    model, plan, images = request.getfixturevalue(which)
    client = Client(plan)
    server = Server(plan, client.evaluation_keys())
    ct = client.encrypt(images[0])
    assert len(tiles_of(ct)) == plan.input_layout.ciphertexts
    logits = client.decrypt(server.run(ct))
    want = _torch(model, plan, images[:1])[0]
    twin = plan.twin(images[:1])[0]
    assert np.max(np.abs(logits - twin)) < 1e-4            # CKKS noise only
    assert np.max(np.abs(logits - want)) <= np.max(np.abs(twin - want)) + 1e-4
    assert logits.argmax() == want.argmax()
    assert server.report.bootstraps == plan.schedule.bootstraps
    with pytest.raises(Exception, match="ciphertext"):  # a wrong number of input ciphertexts is refused
        server.run(Tiles(tiles_of(ct) * 2))
    if len(tiles_of(ct)) > 1:  # decrypting the input by mistake: refused, not meaningless logits
        with pytest.raises(ShapeError, match="an input ciphertext holds no logits"):
            client.decrypt(ct)


def test_tiles_round_trip_through_a_ciphertext_file_and_corrupt_ones_are_refused(pool_wide, tmp_path):
    from ckksnet.backend.serialize import ciphertext_from_bytes, ciphertext_to_bytes, load_ciphertext, \
        save_ciphertext
    from ckksnet.core.envelope import pack, unpack
    from ckksnet.errors import CorruptDataError

    _, plan, images = pool_wide
    client = Client(plan, bootstrap_keys=False)
    ct = client.encrypt(images[0])
    tiles = Tiles([ct, client.keys.encrypt(np.arange(SLOTS) / SLOTS, levels_left=3)])
    back = load_ciphertext(client.keys, save_ciphertext(client.keys, tiles, tmp_path / "t.ckks"))
    assert isinstance(back, Tiles) and len(back) == 2
    assert np.allclose(client.keys.decrypt(back[1]), np.arange(SLOTS) / SLOTS, atol=1e-4)
    payload, header = unpack(ciphertext_to_bytes(client.keys, tiles), "ciphertext")
    for bad in ([len(payload) - 1], [], [0, len(payload)], [len(payload) // 2, len(payload)], "x"):
        with pytest.raises(CorruptDataError, match="tiles"):
            fields = {k: v for k, v in header.items() if k != "kind"} | {"tiles": bad}
            ciphertext_from_bytes(client.keys, pack("ciphertext", payload, fields))
    with pytest.raises(CorruptDataError):  # sizes that add up but cut a ciphertext in two
        fields = {k: v for k, v in header.items() if k != "kind"} | {"tiles": [1, len(payload) - 1]}
        ciphertext_from_bytes(client.keys, pack("ciphertext", payload, fields))


@pytest.mark.slow
def test_the_command_line_flow_with_a_two_ciphertext_input(tmp_path):
    """examples/client_server.sh (compile, keygen, serve, query upload, encrypt, query run,
    decrypt, predict: one process each) on 32x32 images, which fill two ciphertexts."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    from ckksnet.models import ResNetCifar, save_checkpoint
    from ckksnet.training import calibrate

    root = Path(__file__).resolve().parents[1]
    torch.manual_seed(0)
    model = random_batchnorms(ResNetCifar(blocks=1, widths=(2, 4, 8)), torch.Generator().manual_seed(1))
    images = np.random.default_rng(5).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    ck = save_checkpoint(model, {"calibration": {"relus": calibrate(model, images)}}, tmp_path / "ck")
    Image.fromarray(images[3]).save(tmp_path / "cat.png")
    env = {**os.environ, "IMAGE_SIZE": "32", "PYTHON": sys.executable, "ALPHA": "8", "EPS_BITS": "8",
           "CKKSNET": str(Path(sys.executable).parent / "ckksnet"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    work = tmp_path / "work"
    done = subprocess.run(["bash", str(root / "examples" / "client_server.sh"), "test", str(ck),
                           str(tmp_path / "cat.png"), str(work)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    enc = json.loads((work / "decrypt.json").read_text())
    plain = json.loads((work / "predict.json").read_text())["predictions"][0]
    assert enc["predicted"] == plain["predicted"]
    assert np.max(np.abs(np.array(enc["logits"]) - plain["logits"])) < 2e-2  # alpha-8 ReLU + CKKS noise


def test_dense_layers_read_and_write_several_ciphertexts():
    """An MLP on flattened 3x32x32 images: dense 3,072 -> 2,500 (2 ciphertexts -> 2), ReLU on 2,
    dense 2,500 -> 10 (2 -> 1); twin and encrypted against torch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2500), nn.ReLU(), nn.Linear(2500, 10)).eval()
    images = np.random.default_rng(2).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the insecure test preset says so
        plan = compile(model, calibration=images, preset="test", input_shape=(3, 32, 32), alpha=8, eps_bits=8)
    assert [(s.kind, a, b) for (s, _, _), (_, a, b) in zip(plan.steps, _widths(plan))] == \
        [("linear", 2, 2), ("relu", 2, 2), ("linear", 2, 1)]
    want = _torch(model, plan, images[:3])
    assert np.max(np.abs(plan.twin(images[:3]) - want)) < 2e-2
    client = Client(plan)
    logits = client.decrypt(Server(plan, client.evaluation_keys()).run(client.encrypt(images[0])))
    assert np.max(np.abs(logits - want[0])) < 2e-2 and logits.argmax() == want[0].argmax()
