"""Serialization round trips and the validation of what is loaded."""
from __future__ import annotations

import numpy as np
import pytest

from ckksnet.backend import keys as K, serialize as S
from ckksnet.core import envelope
from ckksnet.errors import (ContextMismatchError, CorruptDataError, SerializationError,
                            WrongFileTypeError)
from tests.conftest import make_client

TOL = 1e-9


@pytest.fixture(scope="module")
def x(client):
    return np.random.default_rng(3).uniform(-1, 1, client.slots)


def test_ciphertext_round_trip_bytes_and_file(client, x, tmp_path):
    ct = client.encrypt(x)
    back = S.ciphertext_from_bytes(client, S.ciphertext_to_bytes(client, ct))
    assert np.max(np.abs(client.decrypt(back) - x)) < TOL
    path = envelope.save(S.ciphertext_to_bytes(client, ct), tmp_path / "x.ckks")
    assert np.max(np.abs(client.decrypt(S.ciphertext_from_bytes(client, envelope.load(path))) - x)) < TOL


def test_server_from_serialized_keys(client, x, tmp_path):
    """Context, public key, mult, rotation and bootstrap keys all round-trip through files."""
    folder = K.save_evaluation_keys(client, tmp_path / "keys")
    parts = ("context", "public_key", "mult_keys", "rotation_keys", "bootstrap_keys")
    assert {p.name for p in folder.glob("*.ckks")} == {f"{k}.ckks" for k in parts}  # + raw .bin payloads
    server = K.load_evaluation_keys(folder)
    assert server.context_id == client.context_id
    assert server.rotations == client.rotations and server.has_bootstrap_keys
    assert server.preset == client.preset
    ct = client.encrypt(x, levels_left=2)
    assert np.max(np.abs(client.decrypt(server.rotate(ct, 5)) - np.roll(x, -5))) < TOL
    assert np.max(np.abs(client.decrypt(server.mul(ct, ct)) - x * x)) < TOL
    boot = server.bootstrap(server.mul(ct, 0.5))
    assert -np.log2(np.max(np.abs(client.decrypt(boot) - 0.5 * x))) >= 16
    # a ciphertext computed by the rebuilt server goes back to the client through bytes
    out = S.ciphertext_from_bytes(client, S.ciphertext_to_bytes(server, server.add(ct, ct)))
    assert np.max(np.abs(client.decrypt(out) - 2 * x)) < TOL


def test_rotation_keys_hold_only_the_generated_ones(client):
    data = S.rotation_keys_to_bytes(client)
    _, header = envelope.unpack(data, "rotation_keys", client.context_id)
    indices = [i for g in header["extra"]["groups"] for i in g["indices"]]
    generated = [i for group, _ in client.rotation_key_maps for i in group]
    assert sorted(indices) == sorted(generated) and set(generated) <= client.rotations
    # each key is a few MB at the test preset; the bootstrapping keys are hundreds of MB
    assert len(data) < len(S.bootstrap_keys_to_bytes(client)) / 4


def test_wrong_kind_is_rejected(client, x):
    ct_bytes = S.ciphertext_to_bytes(client, client.encrypt(x))
    with pytest.raises(WrongFileTypeError, match="expected a public_key, found a ciphertext"):
        S.server_from_bytes(S.context_to_bytes(client), ct_bytes)
    with pytest.raises(WrongFileTypeError, match="magic"):
        S.ciphertext_from_bytes(client, b"PK\x03\x04 this is a zip file")


def test_truncated_and_corrupt_data(client, x):
    data = S.ciphertext_to_bytes(client, client.encrypt(x))
    with pytest.raises(CorruptDataError, match="truncated"):
        S.ciphertext_from_bytes(client, data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[-100] ^= 0xFF
    with pytest.raises(CorruptDataError, match="checksum"):
        S.ciphertext_from_bytes(client, bytes(flipped))
    with pytest.raises(CorruptDataError):
        S.ciphertext_from_bytes(client, data[:12])
    header_broken = bytearray(data)
    header_broken[14] = ord("}")
    with pytest.raises(CorruptDataError, match="header"):
        S.ciphertext_from_bytes(client, bytes(header_broken))


def test_ciphertext_from_another_context(client):
    other = make_client()
    data = S.ciphertext_to_bytes(other, other.encrypt(np.array([0.25])))
    with pytest.raises(ContextMismatchError):
        S.ciphertext_from_bytes(client, data)


def test_keys_of_another_context(client):
    other = make_client()
    with pytest.raises(ContextMismatchError):
        S.server_from_bytes(S.context_to_bytes(client), S.public_key_to_bytes(other))


def test_missing_file(tmp_path):
    with pytest.raises(SerializationError, match="no such file"):
        envelope.load(tmp_path / "nothing.ckks")
    with pytest.raises(SerializationError, match="required"):
        K.load_evaluation_keys(tmp_path)
