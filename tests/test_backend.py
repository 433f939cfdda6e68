"""CKKS backend at the test preset: arithmetic against numpy, bootstrapping, key split, bad input."""
from __future__ import annotations

import gc

import warnings

import numpy as np
import pytest

from ckksnet.backend import CkksServer
from ckksnet.core.preset import SECURE, InsecurePresetWarning, get_preset
from ckksnet.errors import (ContextMismatchError, LevelError, MissingKeyError, NonFiniteError,
                            PresetError, RangeError, ShapeError)
from tests.conftest import make_client

# Fresh encryptions at the test preset decrypt to ~1e-13; products to ~1e-12. These bounds
# leave two orders of magnitude of margin and still catch any wrong slot or sign.
TOL = 1e-9


@pytest.fixture
def x(client):
    return np.random.default_rng(7).uniform(-1, 1, client.slots)


def test_round_trip(client, x):
    assert np.max(np.abs(client.decrypt(client.encrypt(x)) - x)) < TOL


def test_short_vector_is_zero_padded(client):
    v = np.array([0.5, -0.25, 0.125])
    out = client.decrypt(client.encrypt(v))
    assert np.allclose(out[:3], v, atol=TOL) and np.max(np.abs(out[3:])) < TOL
    assert client.decrypt(client.encrypt(v), length=3).shape == (3,)


def test_add_sub_mul_against_numpy(client, server, x):
    y = np.random.default_rng(8).uniform(-1, 1, client.slots)
    cx, cy = client.encrypt(x), client.encrypt(y)
    cases = {
        "ct+ct": (server.add(cx, cy), x + y),
        "ct-ct": (server.sub(cx, cy), x - y),
        "ct+pt": (server.add(cx, y), x + y),
        "ct+scalar": (server.add(cx, 0.5), x + 0.5),
        "ct*ct": (server.mul(cx, cy), x * y),
        "ct*pt": (server.mul(cx, y), x * y),
        "ct*scalar": (server.mul(cx, -3.0), -3.0 * x),
        "ct^2": (server.square(cx), x * x),
        "sum": (server.add_many([cx, cy, cx]), 2 * x + y),
    }
    for name, (ct, want) in cases.items():
        assert np.max(np.abs(client.decrypt(ct) - want)) < TOL, name


def test_plaintext_ops_on_an_unrescaled_product_at_the_last_level(client, server, x):
    """A product with no level left still sits at its old RNS level: plaintexts must be encoded
    there (regression: encoding by levels_left asked OpenFHE for a level past the depth)."""
    prod = server.mul(client.encrypt(x, levels_left=1), x)
    assert server.levels_left(prod) == 0
    assert np.max(np.abs(client.decrypt(server.add(prod, x)) - (x * x + x))) < TOL
    assert np.max(np.abs(client.decrypt(server.sub(prod, x)) - (x * x - x))) < TOL


def test_multiplication_spends_one_level(client, server, x):
    ct = client.encrypt(x)
    prod = server.mul(ct, ct)
    assert server.levels_left(prod) == server.levels_left(ct) - 1 == client.preset.depth - 1


def test_rotate_and_hoisted_rotations(client, server, x):
    ct = client.encrypt(x)
    for k in (1, 2, 5, -1):
        assert np.max(np.abs(client.decrypt(server.rotate(ct, k)) - np.roll(x, -k))) < TOL
    hoisted = server.rotate_many(ct, [0, 1, 2, 5, -1])
    assert set(hoisted) == {0, 1, 2, 5, -1}
    for k, r in hoisted.items():
        assert np.max(np.abs(client.decrypt(r) - np.roll(x, -k))) < TOL


def test_missing_rotation_key(client, server, x):
    ct = client.encrypt(x)
    k = min(set(range(1, client.slots)) - client.rotations)  # bootstrapping brought 1..16 and more
    with pytest.raises(MissingKeyError, match=f"index {k}"):
        server.rotate(ct, k)
    with pytest.raises(MissingKeyError):
        server.rotate_many(ct, [1, k])


def test_bootstrap_rotation_keys_are_reused(client, server, x):
    # OpenFHE's bootstrapping keys include rotations; the inventory lists them so kernels chain
    # rotations from them instead of generating keys of their own
    assert {3, 4, 8, 16} <= client.rotations
    ct = client.encrypt(x)
    for k in (3, 16):
        assert np.max(np.abs(client.decrypt(server.rotate(ct, k)) - np.roll(x, -k))) < TOL
    k = min(set(range(1, client.slots)) - client.rotations)
    out = server.rotate_composed(ct, [k, 37, -3])  # chains of keys present, first hops hoisted
    for j, c in out.items():
        assert np.max(np.abs(client.decrypt(c) - np.roll(x, -j))) < TOL
    # nothing it made stays alive in a reference cycle (a full-size run held gigabytes that way)
    gc.collect()
    gc.disable()
    try:
        del out
        server.rotate_composed(ct, [k, 37, -3, 1001])
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_bootstrap_precision_and_levels(client, server, x):
    ct = client.encrypt(x, levels_left=1)
    out = server.bootstrap(ct)
    err = np.max(np.abs(client.decrypt(out) - x))
    # Measured 23-24 bits at the test preset (59-bit scaling); 16 bits is the project's floor.
    assert -np.log2(err) >= 16
    assert server.levels_left(out) == client.preset.levels_after_bootstrap


def test_level_error_when_spent(client, server, x):
    ct = client.encrypt(x, levels_left=0)
    with pytest.raises(LevelError, match="needs 1 level"):
        server.mul(ct, ct)
    with pytest.raises(LevelError, match="bootstrapping needs 1 level"):
        server.bootstrap(ct)
    with pytest.raises(LevelError):
        server.drop_levels(client.encrypt(x, levels_left=2), 3)
    assert server.levels_left(server.drop_levels(client.encrypt(x), 4)) == 4


@pytest.mark.parametrize("bad, error", [
    (np.zeros((4, 4)), ShapeError),
    (np.zeros(0), ShapeError),
    (np.array([0.1, np.nan]), NonFiniteError),
    (np.array([np.inf, 0.0]), NonFiniteError),
    (np.array([0.5, 1.5]), RangeError),
])
def test_bad_input(client, bad, error):
    with pytest.raises(error):
        client.encrypt(bad)


def test_too_long_vector(client):
    with pytest.raises(ShapeError, match="length"):
        client.encrypt(np.zeros(client.slots + 1))


def test_server_has_no_secret_and_cannot_decrypt(client, server, x):
    assert isinstance(server, CkksServer)
    assert not hasattr(server, "decrypt")
    assert not any("secret" in name.lower() for name in vars(server))
    for value in vars(server).values():
        assert value is not getattr(client, "_secret_key")


def test_ciphertext_of_another_context_is_rejected(client, server):
    other = make_client()
    foreign = other.encrypt(np.array([0.5]))
    with pytest.raises(ContextMismatchError):
        server.add(foreign, foreign)
    with pytest.raises(ContextMismatchError):
        client.decrypt(foreign)


def test_presets():
    assert get_preset() is SECURE
    assert SECURE.security == "HEStd_128_classic" and SECURE.ring_dim == 1 << 16 and SECURE.bootstrap
    assert SECURE.levels_after_bootstrap == SECURE.depth - SECURE.bootstrap_depth > 0
    with pytest.warns(InsecurePresetWarning):
        get_preset("test")
    with pytest.warns(InsecurePresetWarning):  # every time, not once per process
        get_preset("test")
    with pytest.raises(PresetError, match="unknown preset"):
        get_preset("fast")
    with pytest.raises(PresetError, match="no level"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            get_preset(SECURE.with_(depth=10))
