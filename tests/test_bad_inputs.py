"""Bad images and bad arguments to the public API (issue 18), table-driven: every case must raise
one specific :class:`ckksnet.CkksnetError` subclass (never a bare TypeError, AttributeError or
OpenFHE RuntimeError). Test preset, a small plan that needs no bootstrapping (so no
bootstrapping keys are made)."""
from __future__ import annotations

import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import ckksnet
from ckksnet.approx import ReluApprox
from ckksnet.backend import CkksClient
from ckksnet.backend import keys as K
from ckksnet.backend import serialize as S
from ckksnet.runtime import load_client_spec, load_plan
from ckksnet.data import load_cifar10
from ckksnet.errors import (ApproxError, CkksnetError, CompileError, ContextMismatchError, CorruptDataError,
                            DataError, InputError, LevelError, MissingKeyError, NonFiniteError, PresetError,
                            RangeError, SerializationError, ShapeError, WrongFileTypeError, WrongTypeError)
from ckksnet.models import load_checkpoint
from ckksnet.nn import Normalize
from ckksnet.runtime import Client, Server
from tests.conftest import make_client

pytestmark = pytest.mark.filterwarnings("ignore::ckksnet.core.preset.InsecurePresetWarning")

IMAGES = np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Normalize(), nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(2, 10)).eval()


def _compile(**kw):
    args = {"calibration": IMAGES, "preset": "test", "image_size": (8, 8), **kw}
    return ckksnet.compile(kw.pop("model", None) or _model(), **{k: v for k, v in args.items() if k != "model"})


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A compiled plan (no bootstrapping), its client and server, ciphertexts, saved files."""
    plan = _compile()
    assert not plan.schedule.bootstrap_slots  # no bootstrapping keys needed
    client = Client(plan)
    server = Server(plan, client.evaluation_keys())
    other = make_client()  # another key set of the same preset
    folder = tmp_path_factory.mktemp("bad_inputs")
    plan.save(folder / "plan")
    ct = client.encrypt(IMAGES[0])
    S.save_ciphertext(client.keys, ct, folder / "x.ckks")
    (folder / "empty").mkdir()
    (folder / "empty.bin").write_bytes(b"")
    (folder / "note.json").write_text('{"kind": "server_plan"}')
    return types.SimpleNamespace(
        plan=plan, spec=plan.client_spec(), client=client, server=server, ckks=client.keys, srv=server.evaluator,
        ct=ct, other=other, other_ct=other.encrypt(np.full(8, 0.5)), dir=folder,
        spent=client.keys.encrypt(np.full(8, 0.5), levels_left=0),
        low=client.keys.encrypt(plan.preprocess(IMAGES[0]), levels_left=plan.schedule.input_level - 1))


def _f(shape, value, dtype=np.float64):
    return np.full(shape, value, dtype=dtype)


# (id, call(env), expected error, text the message must hold)
CASES = [
    # ---- images, through Client.encrypt, Plan.twin / preprocess, ClientSpec.preprocess
    ("image 4 channels", lambda e: e.client.encrypt(np.zeros((8, 8, 4), np.uint8)), ShapeError, "accepted"),
    ("image 32x32 for an 8x8 plan", lambda e: e.client.encrypt(np.zeros((32, 32, 3), np.uint8)), ShapeError, "(8, 8, 3)"),
    ("image float above 1", lambda e: e.client.encrypt(_f((3, 8, 8), 1.5)), RangeError, "[0, 1]"),
    ("image float below 0", lambda e: e.plan.twin(_f((1, 3, 8, 8), -0.1)), RangeError, "[0, 1]"),
    ("image NaN", lambda e: e.client.encrypt(_f((3, 8, 8), np.nan)), NonFiniteError, "NaN"),
    ("image inf", lambda e: e.spec.preprocess(_f((3, 8, 8), np.inf)), NonFiniteError, "infinite"),
    ("image complex", lambda e: e.client.encrypt(_f((3, 8, 8), 0.5, np.complex128)), InputError, "complex"),
    ("image int16", lambda e: e.client.encrypt(np.zeros((8, 8, 3), np.int16)), InputError, "uint8"),
    ("image bool", lambda e: e.plan.preprocess(np.zeros((8, 8, 3), bool)), InputError, "bool"),
    ("image None", lambda e: e.client.encrypt(None), InputError, ""),
    ("image a file name", lambda e: e.client.encrypt("cat.png"), InputError, "strings"),
    ("image ragged list", lambda e: e.client.encrypt([[0.1, 0.2], [0.3]]), ShapeError, "rectangular"),
    ("image masked array", lambda e: e.client.encrypt(np.ma.masked_array(_f((3, 8, 8), 0.5))), InputError, "masked"),
    ("image float channel-last", lambda e: e.plan.twin(_f((8, 8, 3), 0.5)), ShapeError, "channel-last"),
    ("empty batch", lambda e: e.plan.twin(np.zeros((0, 8, 8, 3), np.uint8)), ShapeError, "empty"),
    ("encrypt a batch", lambda e: e.client.encrypt(IMAGES[:2]), ShapeError, "one image"),
    ("torch tensor above 1", lambda e: e.plan.preprocess(torch.full((3, 8, 8), 2.0)), RangeError, "[0, 1]"),
    # ---- ciphertexts and keys where they belong
    ("run a numpy array", lambda e: e.server.run(np.zeros(e.plan.preset.slots)), WrongTypeError, "numpy array"),
    ("run None", lambda e: e.server.run(None), WrongTypeError, "Ciphertext"),
    ("run serialized bytes", lambda e: e.server.run(S.ciphertext_to_bytes(e.ckks, e.ct)), WrongTypeError, "bytes"),
    ("run another key set's ciphertext", lambda e: e.server.run(e.other_ct), ContextMismatchError, "another key set"),
    ("run a ciphertext with too few levels", lambda e: e.server.run(e.low), LevelError, "levels"),
    ("decrypt a numpy array", lambda e: e.client.decrypt(np.zeros(4)), WrongTypeError, "encrypt it first"),
    ("decrypt another key set's ciphertext", lambda e: e.client.decrypt(e.other_ct), ContextMismatchError, ""),
    ("Server with the secret-key holder", lambda e: Server(e.plan, e.ckks), WrongTypeError, "never holds the secret key"),
    ("Server with a Client", lambda e: Server(e.plan, e.client), WrongTypeError, "CkksServer"),
    ("Server without keys", lambda e: Server(e.plan, None), WrongTypeError, "CkksServer"),
    ("Server with a ClientSpec", lambda e: Server(e.spec, e.srv), WrongTypeError, "compiled Plan"),
    ("Server with a file name", lambda e: Server("artifacts/server_plan.ckksnet", e.srv), WrongTypeError, "Plan"),
    ("Server with keys lacking rotations", lambda e: Server(e.plan, e.other.server()), MissingKeyError, "rotation"),
    ("Client with evaluation keys", lambda e: Client(e.spec, keys=e.srv), WrongTypeError, "secret-key holder"),
    ("Client with a file name", lambda e: Client("client_plan.ckksnet"), WrongTypeError, "ClientSpec"),
    # ---- the CKKS layer
    ("mul by a string", lambda e: e.srv.mul(e.ct, "2"), WrongTypeError, "real number"),
    ("add NaN", lambda e: e.srv.add(e.ct, float("nan")), NonFiniteError, "not finite"),
    ("add a NaN vector", lambda e: e.srv.add(e.ct, _f(5, np.nan)), NonFiniteError, "NaN"),
    ("add a vector too long", lambda e: e.srv.add(e.ct, np.zeros(e.plan.preset.slots + 1)), ShapeError, "1-D"),
    ("rotate a numpy array", lambda e: e.srv.rotate(np.zeros(4), 1), WrongTypeError, "Ciphertext"),
    ("rotate without the key", lambda e: e.srv.rotate(e.ct, 1234), MissingKeyError, "1234"),
    ("rotate by a string", lambda e: e.srv.rotate(e.ct, "1"), WrongTypeError, "rotation index"),
    ("rotate by a float", lambda e: e.srv.rotate_many(e.ct, [1.5]), WrongTypeError, "rotation index"),
    ("rotation keys for strings", lambda e: e.other.gen_rotation_keys(["a"]), WrongTypeError, "rotation index"),
    ("drop to level '2'", lambda e: e.srv.drop_levels(e.ct, "2"), WrongTypeError, "levels_left"),
    ("drop to more levels", lambda e: e.srv.drop_levels(e.spent, 3), LevelError, "cannot raise"),
    ("bootstrap a list", lambda e: e.srv.bootstrap([0.5]), WrongTypeError, "encrypt it first"),
    ("bootstrap without keys", lambda e: e.srv.bootstrap(e.ct), MissingKeyError, "bootstrapping keys"),
    ("multiply a spent ciphertext", lambda e: e.srv.mul(e.spent, 2.0), LevelError, "0 left"),
    ("levels of a numpy array", lambda e: e.srv.levels_left(np.zeros(3)), WrongTypeError, "Ciphertext"),
    ("ReLU on a numpy array via the server", lambda e: ReluApprox.from_table(8, 1.0).encrypted(e.srv, np.zeros(4)),
     WrongTypeError, "Ciphertext"),
    ("encrypt a ciphertext", lambda e: e.ckks.encrypt(e.ct), WrongTypeError, "ciphertext"),
    ("encrypt strings", lambda e: e.ckks.encrypt(["a", "b"]), WrongTypeError, "real numbers"),
    ("encrypt a matrix", lambda e: e.ckks.encrypt(np.zeros((2, 2))), ShapeError, "1-D"),
    ("encrypt an empty vector", lambda e: e.ckks.encrypt(np.zeros(0)), ShapeError, "between 1"),
    ("encrypt beyond max_abs", lambda e: e.ckks.encrypt(_f(4, 2.0)), RangeError, "safe magnitude"),
    ("encrypt at level 99", lambda e: e.ckks.encrypt(_f(4, 0.5), levels_left=99), LevelError, "levels_left"),
    ("encrypt at level '3'", lambda e: e.ckks.encrypt(_f(4, 0.5), levels_left="3"), WrongTypeError, "int"),
    ("decrypt length 0", lambda e: e.ckks.decrypt(e.ct, 0), ShapeError, "length"),
    ("decrypt length '4'", lambda e: e.ckks.decrypt(e.ct, "4"), WrongTypeError, "int"),
    ("CkksClient of an int", lambda e: CkksClient(5), WrongTypeError, "preset"),
    ("CkksClient of an unknown preset", lambda e: CkksClient("fast"), PresetError, "unknown preset"),
    # ---- files and loaders
    ("load_plan on a directory", lambda e: load_plan(e.dir / "plan"), SerializationError, "no such file"),
    ("load_plan on a missing file", lambda e: load_plan(e.dir / "nope.ckksnet"), SerializationError, "no such file"),
    ("load_plan on the client plan", lambda e: load_plan(e.dir / "plan" / "client_plan.ckksnet"),
     WrongFileTypeError, "expected a server_plan"),
    ("load_client_spec on the server plan", lambda e: load_client_spec(e.dir / "plan" / "server_plan.ckksnet"),
     WrongFileTypeError, "expected a client_plan"),
    ("load_plan on a ciphertext", lambda e: load_plan(e.dir / "x.ckks"), WrongFileTypeError, "expected a server_plan, found a ciphertext"),
    ("load_plan on an empty file", lambda e: load_plan(e.dir / "empty.bin"), CorruptDataError, "truncated"),
    ("load_plan on a JSON file", lambda e: load_plan(e.dir / "note.json"), WrongFileTypeError, "magic"),
    ("load_ciphertext on a directory", lambda e: S.load_ciphertext(e.ckks, e.dir), SerializationError, "no such file"),
    ("load_ciphertext on a plan", lambda e: S.load_ciphertext(e.ckks, e.dir / "plan" / "server_plan.ckksnet"),
     WrongFileTypeError, "expected a ciphertext, found a server_plan"),
    ("load_ciphertext of another key set", lambda e: S.load_ciphertext(e.other, e.dir / "x.ckks"),
     ContextMismatchError, "another key set"),
    ("ciphertext from a str", lambda e: S.ciphertext_from_bytes(e.ckks, "CKKSNET"), WrongFileTypeError, "str"),
    ("ciphertext into a str context", lambda e: S.ciphertext_from_bytes("ctx", b""), WrongTypeError, "key set"),
    ("serialize with a str context", lambda e: S.ciphertext_to_bytes("ctx", e.ct), WrongTypeError, "key set"),
    ("serialize a numpy array", lambda e: S.ciphertext_to_bytes(e.ckks, np.zeros(3)), WrongTypeError, "Ciphertext"),
    ("save_keys from a server", lambda e: K.save_keys(e.srv, e.dir / "k1"), WrongTypeError, "secret key"),
    ("save_evaluation_keys from a server", lambda e: K.save_evaluation_keys(e.srv, e.dir / "k2"),
     WrongTypeError, "CkksClient"),
    ("load_evaluation_keys on a file", lambda e: K.load_evaluation_keys(e.dir / "x.ckks"), SerializationError,
     "no such folder"),
    ("load_evaluation_keys on an empty folder", lambda e: K.load_evaluation_keys(e.dir / "empty"),
     SerializationError, "required"),
    ("load_client_keys on an empty folder", lambda e: K.load_client_keys(e.dir / "empty"), SerializationError,
     "no such file"),
    ("load_checkpoint on an empty folder", lambda e: load_checkpoint(e.dir / "empty"), DataError, "missing"),
    ("load_checkpoint on a file", lambda e: load_checkpoint(e.dir / "x.ckks"), DataError, "missing"),
    ("load_cifar10 of an unknown split", lambda e: load_cifar10("valid"), DataError, "split"),
    ("from_table for a missing alpha", lambda e: ReluApprox.from_table(40, 1.0), ApproxError, "no shipped"),
    # ---- compile options
    ("compile without calibration", lambda e: _compile(calibration=None), CompileError, "calibration"),
    ("compile for an unknown preset", lambda e: _compile(preset="fast"), PresetError, "unknown preset"),
    ("compile with rotation_key_policy 'all'", lambda e: _compile(rotation_key_policy="all"), CompileError,
     "rotation_key_policy"),
    ("compile with alpha 40", lambda e: _compile(alpha=40), ApproxError, "alpha=40"),
    ("compile with eps 2^-3", lambda e: _compile(eps_bits=3), ApproxError, "eps=2^-3"),
    ("compile with relu_extension 0.5", lambda e: _compile(relu_extension=0.5), CompileError, "extension"),
    ("compile with relu_extension NaN", lambda e: _compile(relu_extension=float("nan")), CompileError, "extension"),
    ("compile with a GELU", lambda e: _compile(model=nn.Sequential(Normalize(), nn.Conv2d(3, 2, 3), nn.GELU())),
     CompileError, "GELU"),
    ("compile with calibration of wrong size", lambda e: _compile(calibration=np.zeros((2, 9, 9, 3), np.uint8)),
     ShapeError, ""),
    ("compile with a calibration dict lacking the ReLU", lambda e: _compile(calibration={"x": {"max_abs": 1.0}}),
     CompileError, "calibration"),
]


@pytest.mark.parametrize("call, error, text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_specific_ckksnet_error(env, call, error, text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CkksnetError) as info:
            call(env)
    assert isinstance(info.value, error), f"{type(info.value).__name__}: {info.value}"
    assert type(info.value) is not CkksnetError  # always a specific subclass
    assert text in str(info.value), str(info.value)


def test_the_table_covers_every_error_class():
    """Every error class a caller can get from bad input appears in the table."""
    raised = {c[2] for c in CASES}
    for cls in (ShapeError, RangeError, NonFiniteError, InputError, WrongTypeError, LevelError, MissingKeyError,
                ContextMismatchError, WrongFileTypeError, CorruptDataError, SerializationError, DataError,
                CompileError, ApproxError, PresetError):
        assert cls in raised, cls.__name__


def test_wrong_type_error_is_still_a_type_error(env):
    """Callers that caught the bare TypeError the context raised before keep working."""
    with pytest.raises(TypeError):
        env.server.run(np.zeros(4))


def test_good_inputs_still_work(env):
    """The table's fixtures are sound: the same calls with good arguments succeed."""
    logits = env.client.decrypt(env.server.run(env.client.encrypt(IMAGES[0])))
    assert np.max(np.abs(logits - env.plan.twin(IMAGES[0]))) < 1e-5
