"""The backend door: backends found by name, and the contract every backend meets.

A backend is one file (``ckksnet/backend/ops_<name>.py``). The contract test below runs the whole
path (compile -> keys -> encrypt -> run -> decrypt, in one process and through key and ciphertext
files, through ``runtime.Client`` / ``Server`` and the deployment engine) on each backend,
``cleartext`` (numpy slots, no encryption; nothing but its own file names it) and ``openfhe``;
a GPU backend is added to BACKENDS and must pass the same. Results are compared with torch.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import ckksnet
from ckksnet.backend.ops_cleartext import CleartextWarning
from ckksnet.core.backend import (EVAL_DIR, Backend, KeySet, SecretKeys, UnknownBackendError, backend_names,
                                  get_backend)
from ckksnet.core.preset import InsecurePresetWarning
from ckksnet.deploy import engine
from ckksnet.deploy.errors import InvalidKeysError
from ckksnet.errors import ContextMismatchError, MissingKeyError, WrongTypeError
from ckksnet.runtime import Client, Server
from tests.helpers import random_batchnorms

pytestmark = [pytest.mark.filterwarnings("ignore::ckksnet.core.preset.InsecurePresetWarning"),
              pytest.mark.filterwarnings("ignore::ckksnet.backend.ops_cleartext.CleartextWarning")]

BACKENDS = ["cleartext", "openfhe"]


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    return random_batchnorms(model, torch.Generator().manual_seed(1)).eval()


IMAGES = np.random.default_rng(0).uniform(0, 1, (8, 3, 8, 8))


@pytest.fixture(scope="module", params=BACKENDS)
def compiled(request):
    model = small_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        plan = ckksnet.compile(model, calibration=IMAGES, preset="test", input_shape=(3, 8, 8),
                               alpha=8, eps_bits=8, backend=request.param)
    with torch.no_grad():
        expected = model(torch.tensor(IMAGES[:2], dtype=torch.float32)).numpy()
    return request.param, plan, expected


def test_backends_are_found_by_name():
    assert {"cleartext", "openfhe"} <= set(backend_names())
    for name in ("cleartext", "openfhe"):
        backend = get_backend(name)
        assert isinstance(backend, Backend) and backend.name == name
    with pytest.raises(UnknownBackendError, match="cleartext, openfhe"):
        get_backend("cuda_someday")
    with pytest.raises(UnknownBackendError, match="lower-case"):
        get_backend("../etc")


def test_the_contract_in_one_process(compiled):
    name, plan, expected = compiled
    assert plan.backend == name and plan.client_spec().backend == name
    client = Client(plan)
    assert isinstance(client.keys, SecretKeys)
    server = Server(plan, client.evaluation_keys())
    assert isinstance(server.key_set, KeySet) and set(plan.schedule.key_rotations) <= server.key_set.rotations
    for image, want in zip(IMAGES[:2], expected):
        got = client.decrypt(server.run(client.encrypt(image)))
        assert np.max(np.abs(got - want)) < 2e-2 and got.argmax() == want.argmax()
    with pytest.raises(WrongTypeError, match="secret key"):
        Server(plan, client.keys)  # a server never takes the secret-key holder


def test_the_contract_through_files_and_the_engine(compiled, tmp_path):
    name, plan, expected = compiled
    client = Client(plan)
    client.save_keys(tmp_path / "keys")
    plan.save(tmp_path / "plan")
    loaded_plan = engine.load_plan(tmp_path / "plan" / "server_plan.ckksnet")
    assert loaded_plan.backend == name and engine.describe_plan(loaded_plan)["backend"] == name
    back = Client.load(ckksnet.load_client_spec(tmp_path / "plan" / "client_plan.ckksnet"), tmp_path / "keys")
    assert back.context_id == client.context_id
    bundle = tmp_path / "keys" / EVAL_DIR
    info = engine.validate_bundle(bundle, name, "test")
    assert info.keyset_id == client.context_id
    assert all(engine.bundle_file_allowed(f, name) for f in info.files)
    with pytest.raises(InvalidKeysError, match="preset"):
        engine.validate_bundle(bundle, name, "secure")
    data = back.ciphertext_to_bytes(back.encrypt(IMAGES[0]))
    assert engine.ciphertext_keyset(data) == client.context_id
    server = engine.load_server(loaded_plan, bundle)
    out = engine.run_job(server, data, lambda i, n, step: None)
    got = back.decrypt(back.ciphertext_from_bytes(out))
    assert np.max(np.abs(got - expected[0])) < 2e-2
    other = Client(plan)  # another key set: its ciphertexts are refused by name
    with pytest.raises(ContextMismatchError):
        server.ciphertext_from_bytes(other.ciphertext_to_bytes(other.encrypt(IMAGES[0])))


def test_a_bundle_lacking_a_key_is_refused_before_loading(compiled, tmp_path):
    name, plan, _ = compiled
    if not plan.schedule.key_rotations:
        pytest.skip("this plan needs no rotation key")  # never for the small CNN (pooling rotates)
    backend = get_backend(name)
    keys = backend.make_keys(plan.preset, (), bootstrap=False)
    backend.save_keys(keys, tmp_path / "keys")
    with pytest.raises(MissingKeyError):
        Server.load(plan, tmp_path / "keys" / EVAL_DIR)


def test_the_cleartext_backend_says_it_encrypts_nothing(compiled):
    name, plan, _ = compiled
    if name != "cleartext":
        return
    with pytest.warns(CleartextWarning, match="encrypts nothing"):
        Client(plan)


def test_a_plan_of_one_backend_refuses_another_backends_keys():
    model = small_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = ckksnet.compile(model, calibration=IMAGES, preset="test", input_shape=(3, 8, 8), alpha=8,
                               eps_bits=8, backend="cleartext")
        other = get_backend("cleartext").make_keys(plan.preset, (), False).evaluator()
        plan.backend = "openfhe"
        with pytest.raises(WrongTypeError, match="CkksServer"):
            Server(plan, other)


def test_an_interrupted_key_write_leaves_no_half_key_set(compiled, tmp_path, monkeypatch):
    """Issue #38 item 4: keys are complete or absent (a write interrupted after the secret key)."""
    name, plan, _ = compiled
    client = Client(plan)
    backend = client.backend
    real = type(backend).save_keys

    def interrupted(self, keys, folder):
        real(self, keys, folder)
        raise KeyboardInterrupt  # after every file: the rename must not happen

    monkeypatch.setattr(type(backend), "save_keys", interrupted)
    with pytest.raises(KeyboardInterrupt):
        client.save_keys(tmp_path / "keys")
    assert not (tmp_path / "keys").exists() and not list(tmp_path.iterdir())
    monkeypatch.setattr(type(backend), "save_keys", real)
    client.save_keys(tmp_path / "keys")
    other = Client(plan)
    other.save_keys(tmp_path / "keys")  # replaced whole (the CLI asks for --force first)
    assert Client.load(plan, tmp_path / "keys").context_id == other.context_id
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a key")
    with pytest.raises(ckksnet.SerializationError, match="other files"):
        client.save_keys(tmp_path / "mine")


def test_ciphertext_files_record_their_role(compiled, tmp_path):
    """Issue #38: decrypting an encrypted *input* (a 1-ciphertext input and output look alike)
    is refused from what the file records, as is running a run's output again."""
    name, plan, expected = compiled
    client = Client(plan)
    server = Server(plan, client.evaluation_keys())
    client.save_ciphertext(client.encrypt(IMAGES[0]), tmp_path / "in.ckks")
    with pytest.raises(ckksnet.InputError, match="in.ckks: it is an encrypted input"):
        client.load_ciphertext(tmp_path / "in.ckks", expect="output")
    server.save_ciphertext(server.run(server.load_ciphertext(tmp_path / "in.ckks")), tmp_path / "out.ckks")
    with pytest.raises(ckksnet.InputError, match="already the output of a run"):
        server.load_ciphertext(tmp_path / "out.ckks")
    got = client.decrypt(client.load_ciphertext(tmp_path / "out.ckks", expect="output"))
    assert np.max(np.abs(got - expected[0])) < 2e-2


def test_what_a_newcomer_broke_is_refused_by_name(compiled, tmp_path, monkeypatch):
    """From a newcomer's pass: another backend's secret keys, an in-memory encrypted input given
    to decrypt, a plan file naming no backend, a key folder that is a file, unknown roles."""
    name, plan, _ = compiled
    other = "openfhe" if name == "cleartext" else "cleartext"
    foreign = get_backend(other).make_keys(plan.preset, (), False)
    with pytest.raises(ckksnet.BackendError, match=f"{other!r} keys"):
        Client(plan, keys=foreign)
    client = Client(plan)
    assert plan.client_spec().output_level == plan.schedule.steps[-1].level_out
    with pytest.raises(ckksnet.InputError, match="levels of an encrypted input"):
        client.decrypt(client.encrypt(IMAGES[0]))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ckksnet.SerializationError, match="is a file"):
        client.save_keys(tmp_path / "file")
    with pytest.raises(ckksnet.InputError, match="role"):
        client.ciphertext_to_bytes(client.encrypt(IMAGES[0]), role="bogus")
    plan.save(tmp_path / "plan")
    monkeypatch.setattr(plan, "backend", "Bad Name!")
    plan.save(tmp_path / "bad")
    with pytest.raises(ckksnet.CorruptDataError, match="bad/server_plan.ckksnet: the plan's backend"):
        ckksnet.load_plan(tmp_path / "bad" / "server_plan.ckksnet")
    monkeypatch.setattr(plan, "backend", "nosuch")
    with pytest.raises(ckksnet.UnknownBackendError, match="no backend 'nosuch'"):
        engine.describe_plan(plan)  # a service refuses to start with it


def test_a_backend_outside_ckksnet_is_found_through_the_environment(tmp_path, monkeypatch):
    (tmp_path / "outside_backend.py").write_text(
        "from ckksnet.backend.ops_cleartext import Cleartext\n"
        "from ckksnet.core.backend import register_backend\n\n\n"
        "class Outside(Cleartext):\n    name = 'outside'\n\n\nregister_backend(Outside())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnknownBackendError, match="CKKSNET_BACKEND_MODULES"):
        get_backend("outside")
    monkeypatch.setenv("CKKSNET_BACKEND_MODULES", "outside_backend")
    assert get_backend("outside").name == "outside"
    with pytest.raises(ckksnet.BackendError, match="registered already"):
        from ckksnet.backend.ops_cleartext import Cleartext
        from ckksnet.core.backend import register_backend

        class Impostor(Cleartext):
            name = "openfhe"
        register_backend(Impostor())


def test_the_command_line_runs_a_plan_compiled_for_another_backend(tmp_path, capsys):
    """compile --backend cleartext, then keygen, encrypt, run and decrypt: the CLI reaches keys and
    ciphertexts only through the plan's backend."""
    from ckksnet.deploy.cli import main as cli

    np.save(tmp_path / "calibration.npy", IMAGES)
    np.save(tmp_path / "image.npy", IMAGES[0])
    model = ["--model", "tests.test_backend_door:small_cnn", "--input-shape", "3", "8", "8"]
    assert cli(["compile", *model, "--calibration", str(tmp_path / "calibration.npy"), "--preset", "test",
                "--backend", "cleartext", "--alpha", "8", "--eps-bits", "8", "--out", str(tmp_path / "plan")]) == 0
    client_plan, server_plan = str(tmp_path / "plan" / "client_plan.ckksnet"), str(tmp_path / "plan" / "server_plan.ckksnet")
    assert ckksnet.load_plan(server_plan).backend == "cleartext"
    assert cli(["keygen", "--client", client_plan, "--out", str(tmp_path / "keys")]) == 0
    assert cli(["encrypt", str(tmp_path / "image.npy"), "--keys", str(tmp_path / "keys"), "--client", client_plan,
                "--out", str(tmp_path / "ct")]) == 0
    assert cli(["decrypt", str(tmp_path / "ct" / "image.ckks"), "--keys", str(tmp_path / "keys"),
                "--client", client_plan]) == 2  # an encrypted input holds no logits
    assert "it is an encrypted input" in capsys.readouterr().err
    assert cli(["run", "--plan", server_plan, "--eval-keys", str(tmp_path / "keys" / EVAL_DIR),
                "--in", str(tmp_path / "ct" / "image.ckks"), "--out", str(tmp_path / "out.ckks")]) == 0
    capsys.readouterr()
    assert cli(["decrypt", str(tmp_path / "out.ckks"), "--keys", str(tmp_path / "keys"), "--client", client_plan,
                "--json"]) == 0
    import json

    logits = np.array(json.loads(capsys.readouterr().out)["logits"])
    with torch.no_grad():
        want = small_cnn()(torch.tensor(IMAGES[:1], dtype=torch.float32))[0].numpy()
    assert np.max(np.abs(logits - want)) < 2e-2
