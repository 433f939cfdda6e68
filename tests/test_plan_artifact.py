"""Plan artifacts at the test preset, on the tiny ResNet of test_compiler: ``plan.save`` writes a
server artifact (the whole plan) and a client artifact (no weights); loading gives the same
twin and the same encrypted run; a client and a server in fresh processes, each with its own
artifact only, compute the right logits; damaged files are refused with a specific error; the
schedule matches the encrypted run; nothing mutates the plan."""
from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ckksnet
from ckksnet.backend import serialize as S
from ckksnet.core import envelope
from ckksnet.core.preset import InsecurePresetWarning
from ckksnet.compiler import compile
from ckksnet.core import artifact, envelope
from ckksnet.core.plan import CLIENT_FILE, SERVER_FILE, ClientSpec, Plan
from ckksnet.errors import CorruptDataError, UnsupportedFormatError, WrongFileTypeError
from ckksnet.kernels import LinearMap, PooledDense
from ckksnet.runtime import Client, Server
from tests.test_compiler import IMAGES, _tiny_resnet

pytestmark = pytest.mark.filterwarnings("ignore::ckksnet.core.preset.InsecurePresetWarning")

ROOT = Path(__file__).resolve().parents[1]
LOADERS = {"server_plan": (SERVER_FILE, ckksnet.load_plan), "client_plan": (CLIENT_FILE, ckksnet.load_client_spec)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = _tiny_resnet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        plan = compile(model, calibration=IMAGES, preset="test", image_size=(8, 8))
    folder = plan.save(tmp_path_factory.mktemp("plan"))
    return SimpleNamespace(model=model, plan=plan, folder=folder, plan_id=artifact.plan_id(plan))


@pytest.fixture(scope="module")
def runs(tiny):
    """One image encrypted once, run by a server of the plan and by a server of the loaded plan
    (the same keys). The plan's id is taken before any of it."""
    before = artifact.plan_id(tiny.plan)
    client = Client(tiny.plan)
    server = Server(tiny.plan, client.evaluation_keys())
    ct = client.encrypt(IMAGES[0])
    sent = S.ciphertext_to_bytes(client.keys, ct)
    out = server.run(ct)
    loaded = ckksnet.load_plan(tiny.folder / SERVER_FILE)
    loaded_server = Server(loaded, client.evaluation_keys())
    loaded_out = loaded_server.run(ct)
    assert S.ciphertext_to_bytes(client.keys, ct) == sent  # a run leaves its input as it was
    return SimpleNamespace(client=client, server=server, out=out, loaded=loaded, loaded_server=loaded_server,
                           loaded_out=loaded_out, plan_id_before=before)


# ---------------------------------------------------------------- round trips
def test_save_load_gives_the_same_plan_and_twin(tiny):
    plan, folder = tiny.plan, tiny.folder
    assert {p.name for p in folder.iterdir()} == {SERVER_FILE, CLIENT_FILE}
    loaded = ckksnet.load_plan(folder / SERVER_FILE)
    assert isinstance(loaded, Plan) and loaded is not plan
    assert artifact.plan_id(loaded) == tiny.plan_id  # the same payload, byte for byte
    assert loaded.schedule == plan.schedule and loaded.preset == plan.preset
    assert [(type(s).__name__, s.name, i, o) for s, i, o in loaded.steps] == \
        [(type(s).__name__, s.name, i, o) for s, i, o in plan.steps]
    for (a, _, _), (b, _, _) in zip(plan.steps, loaded.steps):
        if isinstance(getattr(a, "kernel", None), LinearMap):
            assert (a.kernel.matrix != b.kernel.matrix).nnz == 0 and np.array_equal(a.kernel.bias, b.kernel.bias)
            assert b.kernel.giant_plan == a.kernel.giant_plan  # tuned at compile time, kept
    # floats round-trip exactly: bit-identical logits, fast twin and reference alike
    for kwargs in ({}, {"reference": True}):
        assert np.array_equal(loaded.twin(IMAGES[:8], **kwargs), plan.twin(IMAGES[:8], **kwargs))
    spec = ckksnet.load_client_spec(folder / CLIENT_FILE)
    want = plan.client_spec()
    assert isinstance(spec, ClientSpec) and spec.plan_id == tiny.plan_id == want.plan_id
    for name in ("preset", "input_layout", "input_scale", "input_level", "output_layout", "output_scale",
                 "rotation_keys", "bootstrap_slots", "classes", "model_id"):
        assert getattr(spec, name) == getattr(want, name), name
    assert np.array_equal(spec.mean, want.mean) and np.array_equal(spec.std, want.std)
    assert np.array_equal(spec.preprocess(IMAGES[:4]), plan.preprocess(IMAGES[:4]))
    _, header = envelope.unpack((folder / SERVER_FILE).read_bytes(), "server_plan")
    assert header["plan_id"] == tiny.plan_id and header["model_id"] == plan.model_id == spec.model_id


def test_loaded_plan_gives_identical_encrypted_results(tiny, runs):
    # the same ciphertext through the same kernels: the same output ciphertext, bit for bit.
    # (Not compared after decryption: OpenFHE's CKKS decoding adds fresh noise of the size of
    # the error each time, so two decryptions of one ciphertext differ by about 1e-8 here.)
    assert S.ciphertext_to_bytes(runs.client.keys, runs.loaded_out) == S.ciphertext_to_bytes(runs.client.keys, runs.out)
    logits = runs.client.decrypt(runs.out)
    assert np.max(np.abs(runs.client.decrypt(runs.loaded_out) - logits)) < 1e-6
    assert np.max(np.abs(logits - tiny.plan.twin(IMAGES[0]))) < 1e-5  # CKKS noise (see test_compiler)
    steps = lambda r: [(s.name, s.level_in, s.level_out, s.bootstraps, s.key_switches) for s in r.steps]  # noqa: E731
    assert steps(runs.loaded_server.report) == steps(runs.server.report)


def test_schedule_matches_the_encrypted_run(tiny, runs):
    sched, report = tiny.plan.schedule, runs.server.report
    assert sched.bootstraps == report.bootstraps > 0
    assert [(s.name, s.bootstraps) for s in sched.steps] == [(s.name, s.bootstraps) for s in report.steps]
    assert [(s.level_in, s.level_out) for s in sched.steps] == [(s.level_in, s.level_out) for s in report.steps]


def test_nothing_mutates_the_plan(tiny, runs):
    """Compiling fixed everything: building a Client and a Server and running (the ``runs``
    fixture), the twin and saving leave the plan's payload as it was."""
    plan = tiny.plan
    assert runs.plan_id_before == tiny.plan_id == artifact.plan_id(plan)
    plan.twin(IMAGES[:4])
    plan.twin(IMAGES[:2], reference=True, ranges={})
    plan.client_spec()
    assert artifact.plan_id(plan) == tiny.plan_id
    assert artifact.plan_id(runs.loaded) == tiny.plan_id  # the loaded plan, after its own run


# ---------------------------------------------------------------- client and server apart
CLIENT = """
import sys, warnings
warnings.simplefilter("ignore")
import numpy as np
import ckksnet
from ckksnet.backend import keys as K, serialize as S
spec_path, key_dir, image_path, ct_path = sys.argv[1:]
client = ckksnet.Client(ckksnet.load_client_spec(spec_path))
K.save_keys(client.keys, key_dir)
S.save_ciphertext(client.keys, client.encrypt(np.load(image_path)), ct_path)
"""

SERVER = """
import json, sys, warnings
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
warnings.simplefilter("ignore")
import ckksnet
from ckksnet.backend import keys as K, serialize as S
plan_path, eval_dir, ct_path, out_path = sys.argv[1:]
plan = ckksnet.load_plan(plan_path)
keys = K.load_evaluation_keys(eval_dir, rotations=plan.schedule.key_rotations,
                              bootstrap=bool(plan.schedule.bootstrap_slots))
server = ckksnet.Server(plan, keys)
S.save_ciphertext(keys, server.run(S.load_ciphertext(keys, ct_path)), out_path)
print(json.dumps({"bootstraps": server.report.bootstraps, "opened": opened}))
"""

DECRYPT = """
import json, sys, warnings
warnings.simplefilter("ignore")
import ckksnet
from ckksnet.backend import keys as K, serialize as S
spec_path, key_dir, out_path = sys.argv[1:]
client = ckksnet.Client(ckksnet.load_client_spec(spec_path), keys=K.load_client_keys(key_dir))
print(json.dumps(client.decrypt(S.load_ciphertext(client.keys, out_path)).tolist()))
"""


def _python(script: str, *args) -> str:
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_client_and_server_in_fresh_processes(tiny, tmp_path):
    """The client process has the client artifact only, the server process the server
    artifact and the evaluation keys only; each is a fresh Python. The logits are right."""
    client_dir, server_dir = tmp_path / "client", tmp_path / "server"
    client_dir.mkdir()
    server_dir.mkdir()
    spec_path = Path(shutil.copy(tiny.folder / CLIENT_FILE, client_dir))
    plan_path = Path(shutil.copy(tiny.folder / SERVER_FILE, server_dir))
    image = IMAGES[2]
    np.save(client_dir / "image.npy", image)
    keys, ct, out = client_dir / "keys", tmp_path / "ct.ckks", tmp_path / "out.ckks"
    _python(CLIENT, spec_path, keys, client_dir / "image.npy", ct)
    shutil.copytree(keys / "eval", server_dir / "eval")  # what the client ships: never its secret key
    ran = json.loads(_python(SERVER, plan_path, server_dir / "eval", ct, out))
    assert ran["bootstraps"] == tiny.plan.schedule.bootstraps > 0
    assert not [p for p in ran["opened"] if str(client_dir) in p or "secret_key" in p]
    logits = np.array(json.loads(_python(DECRYPT, spec_path, keys, out)))
    twin = tiny.plan.twin(image)
    with torch.no_grad():
        want = tiny.model(torch.from_numpy(image[None]).permute(0, 3, 1, 2).float() / 255).double().numpy()[0]
    assert np.max(np.abs(logits - twin)) < 1e-5  # CKKS noise only (see test_compiler)
    assert np.max(np.abs(logits - want)) <= np.max(np.abs(twin - want)) + 1e-5
    assert logits.argmax() == want.argmax()


# ---------------------------------------------------------------- the client artifact holds no weight
def _numbers(node, out: set) -> None:
    """Every number of a JSON tree."""
    if isinstance(node, dict):
        for v in node.values():
            _numbers(v, out)
    elif isinstance(node, list):
        for v in node:
            _numbers(v, out)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        out.add(float(node))


def _file_numbers(data: bytes, kind: str = "client_plan") -> set[float]:
    """Every number in a plan artifact: header JSON, payload JSON tree, npz arrays."""
    payload, header = envelope.unpack(data, kind)
    (n,) = struct.unpack_from("<I", payload, 0)
    tree = json.loads(payload[4:4 + n])
    numbers: set[float] = set()
    _numbers(header, numbers)
    _numbers(tree, numbers)
    with np.load(io.BytesIO(payload[4 + n:]), allow_pickle=False) as npz:
        for name in npz.files:
            arr = npz[name]
            assert arr.dtype.kind in "biuf", f"{name}: {arr.dtype}"  # plain numbers only
            numbers.update(arr.astype(np.float64).ravel().tolist())
    assert isinstance(artifact.from_payload(payload), ClientSpec if kind == "client_plan" else Plan)
    return numbers


def _weights(model, plan) -> set[float]:
    """Every weight, bias and BatchNorm value of the model (not the Normalize constants), and
    what the compiler made of them: folded convolution matrices and biases, the dense layer."""
    out: set[float] = set()
    for name, t in model.state_dict().items():
        if not name.startswith("normalize.") and not name.endswith("num_batches_tracked"):
            out.update(t.detach().double().numpy().ravel().tolist())
    for step, _, _ in plan.steps:
        kernel = getattr(step, "kernel", None)
        if isinstance(kernel, LinearMap):
            out.update(kernel.matrix.data.tolist())
            out.update(kernel.bias.tolist())
        elif isinstance(kernel, PooledDense):
            out.update(kernel.weight.ravel().tolist())
            out.update(kernel.bias.tolist())
    # zeros (bias slots no output uses) and unit entries carry nothing of the model
    return out - {0.0, 1.0, -1.0}


def test_client_artifact_holds_no_weight(tiny):
    model, plan = tiny.model, tiny.plan
    data = (tiny.folder / CLIENT_FILE).read_bytes()
    numbers = _file_numbers(data)
    server = (tiny.folder / SERVER_FILE).read_bytes()
    # the parse sees the numbers: the client's preprocessing is there, and in the server
    # artifact, parsed alike, the folded weights ...
    mean = model.normalize.mean.double().numpy().ravel()
    std = model.normalize.std.double().numpy().ravel()
    assert set(mean.tolist()) <= numbers and set(std.tolist()) <= numbers
    assert set(plan.steps[0][0].kernel.matrix.data.tolist()) <= _file_numbers(server, "server_plan")
    # ... and no weight is in the client artifact, raw or folded
    weights = _weights(model, plan)
    assert len(weights) > 1000
    assert not weights & numbers, sorted(weights & numbers)[:5]
    # nor their float64 bytes anywhere in the file, while the server artifact holds them
    sample = plan.steps[0][0].kernel.matrix.data
    assert len(sample) > 50
    for v in sample[:: max(1, len(sample) // 64)]:
        raw = np.float64(v).tobytes()
        assert raw in server and raw not in data
    for v in list(weights)[:: max(1, len(weights) // 200)]:
        assert np.float64(v).tobytes() not in data


# ---------------------------------------------------------------- damaged files
# Plan files are envelopes of ckksnet.backend.serialize: magic (8 bytes), format version
# (uint16), header and payload lengths (uint32, uint64), the JSON header, the payload, and a
# SHA-256 over all of it (32 bytes).
FIXED = len(envelope.MAGIC) + 2 + 4 + 8
VERSION = range(len(envelope.MAGIC), len(envelope.MAGIC) + 2)


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _header_end(data: bytes) -> int:
    (hlen,) = struct.unpack_from("<I", data, len(envelope.MAGIC) + 2)
    return FIXED + hlen


@pytest.mark.parametrize("kind", list(LOADERS))
def test_truncated_files_are_corrupt(tiny, tmp_path, kind):
    filename, load = LOADERS[kind]
    data = (tiny.folder / filename).read_bytes()
    end = _header_end(data)
    cuts = sorted({*range(0, FIXED + 2),  # inside the magic, the version, the lengths
                   *np.linspace(FIXED + 2, end + 8, 24, dtype=int).tolist(),  # the header
                   *np.linspace(end + 8, len(data) - 33, 24, dtype=int).tolist(),  # the payload
                   *range(len(data) - 33, len(data))})  # the checksum
    for cut in cuts:
        with pytest.raises(CorruptDataError, match="truncated") as info:
            load(_write(tmp_path, f"cut{cut}", data[:cut]))
        if cut < len(envelope.MAGIC):
            assert "magic" in str(info.value)
    with pytest.raises(CorruptDataError, match="beyond the end"):  # and one byte too many
        load(_write(tmp_path, "longer", data + b"\0"))


@pytest.mark.parametrize("kind", list(LOADERS))
def test_bit_flips_are_corrupt(tiny, tmp_path, kind):
    filename, load = LOADERS[kind]
    data = (tiny.folder / filename).read_bytes()
    end = _header_end(data)
    rng = np.random.default_rng(0)
    positions = [p for p in range(len(envelope.MAGIC), end) if p not in VERSION]  # lengths and header
    positions += sorted(rng.choice(np.arange(end, len(data) - 32), 150, replace=False).tolist())  # payload
    positions += list(range(len(data) - 32, len(data)))  # the checksum itself
    for pos in positions:
        for bit in (pos % 8, (pos + 3) % 8):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            with pytest.raises(CorruptDataError):
                load(_write(tmp_path, "flip", bytes(flipped)))
    for pos in VERSION:  # a flipped version reads as another format (or an invalid one)
        for bit in range(8):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            with pytest.raises((UnsupportedFormatError, CorruptDataError)):
                load(_write(tmp_path, "version", bytes(flipped)))
    for pos in range(len(envelope.MAGIC)):  # a damaged magic is not a ckksnet file at all
        flipped = bytearray(data)
        flipped[pos] ^= 0x40
        with pytest.raises(WrongFileTypeError) as info:
            load(_write(tmp_path, "magic", bytes(flipped)))
        assert type(info.value) is WrongFileTypeError


def test_wrong_kind_newer_format_and_garbage(tiny, tmp_path, monkeypatch):
    server, client = tiny.folder / SERVER_FILE, tiny.folder / CLIENT_FILE
    with pytest.raises(WrongFileTypeError, match="expected a server_plan, found a client_plan") as info:
        ckksnet.load_plan(client)
    assert type(info.value) is WrongFileTypeError
    with pytest.raises(WrongFileTypeError, match="expected a client_plan, found a server_plan") as info:
        ckksnet.load_client_spec(server)
    assert type(info.value) is WrongFileTypeError
    # files written by a newer ckksnet: the format version says so
    monkeypatch.setattr(envelope, "FORMAT", envelope.FORMAT + 1)  # the envelope writes it
    newer = tiny.plan.save(tmp_path / "newer")
    monkeypatch.undo()
    for filename, load in LOADERS.values():
        with pytest.raises(UnsupportedFormatError, match="newer"):
            load(newer / filename)
    assert issubclass(UnsupportedFormatError, WrongFileTypeError)
    # anything that is not a plan file, a ckksnet file of another kind included
    rng = np.random.default_rng(1)
    garbage = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in (8, 100, 5000)]
    garbage += [b"PK\x03\x04" + bytes(100), b'{"format": 2, "kind": "server_plan"}', b"\x00" * 64,
                envelope.pack("ciphertext", b"\x01\x02", {"context_id": "0" * 64, "preset": "test"})]
    buf = io.BytesIO()
    np.savez(buf, np.zeros(3))
    garbage.append(buf.getvalue())
    for i, blob in enumerate(garbage):
        path = _write(tmp_path, f"garbage{i}", blob)
        for _, load in LOADERS.values():
            with pytest.raises(WrongFileTypeError) as info:
                load(path)
            assert type(info.value) is WrongFileTypeError, blob[:16]


def test_forged_files_run_no_code(tiny, tmp_path):
    """Well-formed envelopes (valid checksums) around payloads no ckksnet writes: loading names
    registered types only and reads arrays without pickle, so each is refused."""
    payload = artifact.to_payload(tiny.plan)
    (n,) = struct.unpack_from("<I", payload, 0)
    tree, arrays = payload[4:4 + n], payload[4 + n:]
    fields = {"model_id": tiny.plan.model_id, "preset": "test", "plan_id": tiny.plan_id}

    def forged(tree_bytes: bytes, npz: bytes, kind: str = "server_plan") -> Path:
        body = struct.pack("<I", len(tree_bytes)) + tree_bytes + npz
        return _write(tmp_path, "forged", envelope.pack(kind, body, fields))

    assert isinstance(ckksnet.load_plan(forged(tree, arrays)), Plan)  # the unaltered payload loads
    with pytest.raises(CorruptDataError, match="unknown type 'Popen'"):
        ckksnet.load_plan(forged(tree.replace(b'"@type":"Plan"', b'"@type":"Popen"', 1), arrays))
    buf = io.BytesIO()
    np.savez(buf, np.array([print], dtype=object))  # a pickled object array
    with pytest.raises(CorruptDataError):
        ckksnet.load_plan(forged(tree, buf.getvalue()))
    spec = artifact.to_payload(tiny.plan.client_spec())
    with pytest.raises(CorruptDataError, match="holds a ClientSpec"):
        ckksnet.load_plan(_write(tmp_path, "swapped", envelope.pack("server_plan", spec, fields)))
    with pytest.raises(CorruptDataError):
        ckksnet.load_plan(forged(b"[1, 2", arrays))


def test_a_field_renamed_in_python_keeps_its_name_in_plan_files(tiny):
    """Plan.rotation_key_policy was Plan.rotation_keys: files store it under that name still, so
    their bytes (and plan ids) are unchanged and plans saved before the rename load."""
    plan = tiny.plan
    payload = artifact.to_payload(plan)
    (n,) = struct.unpack_from("<I", payload, 0)
    fields = json.loads(payload[4:4 + n])["fields"]
    assert fields["rotation_keys"] == plan.rotation_key_policy == "reuse" and "rotation_key_policy" not in fields
    loaded = artifact.from_payload(payload)
    assert loaded.rotation_key_policy == "reuse" and artifact.plan_id(loaded) == tiny.plan_id
