"""Fuzzing every kind of file ckksnet reads (issue 18), at the test preset.

Files: the serialized context and public key (in a client's key folder and in the evaluation
bundle), the secret key, the relinearization, rotation and bootstrapping keys (their ``.ckks``
envelopes and raw ``.bin`` payloads), a ciphertext, the server and client plan files, and a
checkpoint's ``model.pt`` and ``model.json``. Damage: truncation at many points (inside every
field of the envelope), single-bit flips in every byte of the fixed header and at random places
in the JSON header, payload and checksum, single bytes set to random values, bytes appended,
files swapped for another kind's, for another key set's (or another model's), and deleted.

Each kind runs in a subprocess of its own (this file, run as a script), which loads every
damaged copy through the public loader a real reader uses (``load_evaluation_keys``,
``load_client_keys``, ``load_ciphertext``, ``load_plan``, ``load_client_spec``,
``load_checkpoint``) and reports JSON. Every case must raise the one specific
:class:`ckksnet.CkksnetError` subclass the file format implies (computed here from where the
damage fell), never another exception, never a crash (a signal) or a hang (a timeout, naming the
case). A load that succeeds must give bit-identical content: contexts, public and secret keys,
ciphertexts and plans re-serialized byte for byte; evaluation keys by what they compute (a
relinearized square, rotations, a bootstrap) against the original keys, within CKKS noise;
checkpoints tensor for tensor with equal metadata. Damaged cases run before the one undamaged
load in each process, so no key from a good file is in OpenFHE's key store while a damaged one
is read.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROTATIONS = [100, -7]  # the client's own rotation keys (bootstrapping brings 1..16, 24, ...)
BOOT_ROTATIONS = [5, 48]  # rotations by bootstrapping's keys (checks their key material)
FIXED = 22  # envelope bytes before the JSON header: magic, version, header and payload lengths
FORMAT = 2  # envelope format version (ckksnet.backend.serialize.FORMAT)
BIG = 64 << 20  # files larger than this get fewer, streamed cases (bootstrapping keys: ~360 MB)
TIMEOUT = 1800  # seconds per worker process: a hang fails naming the last case started (not a loaded machine)
SEED = 18

pytestmark = [pytest.mark.filterwarnings("ignore::ckksnet.core.preset.InsecurePresetWarning"),
              pytest.mark.slow]  # every kind of file, damaged many ways, loaded in subprocesses


# ====================================================================== the worker (subprocess)
def _worker(spec_path: str) -> None:
    """Run every group of the spec: its damaged cases, then its undamaged load; print JSON."""
    import warnings

    warnings.simplefilter("ignore")
    spec = json.loads(Path(spec_path).read_text())
    progress = Path(spec["progress"])
    out = {}
    for group in spec["groups"]:
        env = _Env(group)
        results = []
        for case in group["cases"] + [{"id": "undamaged", "folder": group["folder"], "damage": []}]:
            progress.write_text(f"{group['name']} {case['id']}")  # a crash or hang names the case
            work = Path(spec["scratch"]) / "case"
            if work.exists():
                shutil.rmtree(work)
            t = time.time()
            _prepare(Path(case["folder"]), work, case["damage"])
            res = {"id": case["id"]}
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                try:
                    obj = env.load(work)
                except Exception as exc:  # noqa: BLE001 - every exception is reported, judged by the parent
                    from ckksnet.errors import CkksnetError

                    res.update(error=type(exc).__name__, ckksnet=isinstance(exc, CkksnetError),
                               message=str(exc)[:300])
                else:
                    same, why = env.same(obj)
                    res.update(ok=True, identical=same, detail=why)
                    del obj
            res["warnings"] = sorted({w.category.__name__ for w in seen} - {"InsecurePresetWarning"})
            res["seconds"] = round(time.time() - t, 3)
            results.append(res)
            shutil.rmtree(work)
        out[group["name"]] = results
    print(json.dumps(out))


def _prepare(folder: Path, work: Path, damage: list) -> None:
    """``work``: hard links to ``folder``'s files, except those a damage entry names, copied."""
    work.mkdir(parents=True)
    touched = {d[0] for d in damage}
    for f in folder.iterdir():
        if f.is_file() and f.name not in touched:
            os.link(f, work / f.name)
    for name, op, *args in damage:
        src, dst = folder / name, work / name
        if op == "delete":
            continue
        if op == "replace":
            shutil.copyfile(args[0], dst)
        elif op == "truncate":
            with open(src, "rb") as fi, open(dst, "wb") as fo:
                left = args[0]
                while left > 0:
                    block = fi.read(min(left, 16 << 20))
                    fo.write(block)
                    left -= len(block)
        else:
            shutil.copyfile(src, dst)
            with open(dst, "r+b") as fh:
                if op == "append":
                    fh.seek(0, 2)
                    fh.write(bytes.fromhex(args[0]))
                else:  # flip (xor mask) or set (value) of the byte at args[0]
                    fh.seek(args[0])
                    old = fh.read(1)[0]
                    fh.seek(args[0])
                    fh.write(bytes([old ^ args[1] if op == "flip" else args[1]]))


class _Env:
    """The loader of one kind of file and its notion of 'the same content'."""

    def __init__(self, spec: dict):
        from ckksnet.backend import keys as K
        from ckksnet.backend import serialize as S
        from ckksnet.core import envelope

        self.spec, self.K, self.S = spec, K, S
        self.loader = spec["loader"]
        ref = spec["reference"]
        if self.loader in ("server_plan", "client_plan"):
            import ckksnet.kernels  # noqa: F401  (registers the kernel types plans name)
            from ckksnet.core import artifact  # registers the plan kinds

            self.artifact = artifact
        self.payloads = {k: envelope.unpack(Path(p).read_bytes(), k)[0] for k, p in ref.get("envelopes", {}).items()}
        if "client" in ref:
            self.client = K.load_client_keys(ref["client"])  # decrypts; installs no evaluation key
            self.ct = S.load_ciphertext(self.client, ref["ciphertext"])
            self.values = {k: np.load(p) for k, p in ref["values"].items()}
        if self.loader in ("server_plan", "client_plan"):
            self.fingerprint = _plan_fingerprint(self.payloads[self.loader])
        if self.loader == "checkpoint":
            import torch

            self.state = torch.load(Path(ref["checkpoint"]) / "model.pt", weights_only=True)
            self.meta = json.loads((Path(ref["checkpoint"]) / "model.json").read_text())

    def load(self, work: Path):
        K, S = self.K, self.S
        if self.loader == "eval":
            return K.load_evaluation_keys(work, rotations=ROTATIONS)
        if self.loader == "eval_boot":
            return K.load_evaluation_keys(work, rotations=ROTATIONS, bootstrap=True)
        if self.loader == "client":
            return K.load_client_keys(work)
        if self.loader == "ciphertext":
            return S.load_ciphertext(self.client, work / "x.ckks")
        if self.loader == "server_plan":
            return self.artifact.load_plan(work / "server_plan.ckksnet")
        if self.loader == "client_plan":
            return self.artifact.load_client_spec(work / "client_plan.ckksnet")
        if self.loader == "checkpoint":
            from ckksnet.models import load_checkpoint

            return load_checkpoint(work)
        raise ValueError(self.loader)

    def same(self, obj) -> tuple[bool, str]:
        """Whether a loaded object has the undamaged file's content. OpenFHE objects carry their
        context, whose state changes in a process (bootstrap precomputation), so the reference
        is the undamaged payload deserialized now, in the same state, and both re-serialized."""
        import openfhe as ofhe

        ser = lambda o: ofhe.Serialize(o, ofhe.BINARY)  # noqa: E731
        fresh = {"context": lambda b: ofhe.DeserializeCryptoContextString(b, ofhe.BINARY),
                 "public_key": lambda b: ofhe.DeserializePublicKeyString(b, ofhe.BINARY),
                 "secret_key": lambda b: ofhe.DeserializePrivateKeyString(b, ofhe.BINARY),
                 "ciphertext": lambda b: ofhe.DeserializeCiphertextString(b, ofhe.BINARY)}
        ref = lambda kind: ser(fresh[kind](self.payloads[kind]))  # noqa: E731
        if self.loader in ("eval", "eval_boot", "client"):
            if ser(obj.cc) != ref("context"):
                return False, "context differs"
            if ser(obj.public_key) != ref("public_key"):
                return False, "public key differs"
        if self.loader == "client":
            return obj.export_secret_key() == ref("secret_key"), "secret key"
        if self.loader in ("eval", "eval_boot"):
            ct = self.S.ciphertext_from_bytes(obj, self.S.ciphertext_to_bytes(self.client, self.ct))
            rots = ROTATIONS + (BOOT_ROTATIONS if self.loader == "eval_boot" else [])
            got = {"square": obj.mul(ct, ct), **{f"rot{k}": obj.rotate(ct, k) for k in rots}}
            for name, out in got.items():  # CKKS noise: ~1e-12 here; altered keys give O(1)
                err = float(np.max(np.abs(self.client.decrypt(out) - self.values[name])))
                if err > 1e-9:
                    return False, f"{name} differs by {err:.3g}"
            return True, "keys compute the same"
        if self.loader == "ciphertext":
            return ser(obj) == ref("ciphertext"), "ciphertext"
        if self.loader in ("server_plan", "client_plan"):
            return _plan_fingerprint(self.artifact.to_payload(obj)) == self.fingerprint, "plan payload"
        if self.loader == "checkpoint":
            import torch

            model, meta = obj
            state = model.state_dict()
            tensors = state.keys() == self.state.keys() and all(
                state[k].dtype == self.state[k].dtype and torch.equal(state[k], self.state[k]) for k in state)
            return tensors and meta == self.meta, f"tensors equal {tensors}, metadata equal {meta == self.meta}"
        raise ValueError(self.loader)


def _plan_fingerprint(payload: bytes) -> list:
    """A plan payload's content without the .npz's container details (its timestamps): the JSON
    tree's bytes and every array's dtype, shape and bytes."""
    import hashlib
    import io

    (n,) = struct.unpack_from("<I", payload, 0)
    with np.load(io.BytesIO(payload[4 + n:]), allow_pickle=False) as npz:
        arrays = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    return [hashlib.sha256(payload[:4 + n]).hexdigest()] + [
        [a.dtype.str, list(a.shape), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()] for a in arrays]


# ====================================================================== the cases (parent)
def _envelope_expect(data: bytes, offset: int, new: int) -> list[str]:
    """The error a changed byte of an envelope must give (ckksnet.backend.serialize.unpack's
    order: magic, version, lengths, checksum over everything)."""
    if offset < 8:
        return ["WrongFileTypeError"]
    if offset < 10:
        version = bytearray(data[8:10])
        version[offset - 8] = new
        return ["UnsupportedFormatError" if struct.unpack("<H", version)[0] > FORMAT else "CorruptDataError"]
    return ["CorruptDataError"]


def envelope_cases(path: Path, rng: random.Random, dense: bool = True) -> list[tuple[list, list[str]]]:
    """(damage, expected) for an envelope file: truncations in every field, flips of 3 random
    bits of each fixed-header byte, flips and byte sets in the JSON header, payload and
    checksum, appended bytes."""
    data = path.read_bytes()
    name, size = path.name, len(data)
    hlen, plen = struct.unpack_from("<IQ", data, 10)
    h0, p0 = FIXED, FIXED + hlen
    d0 = p0 + plen
    cuts = {0, 1, 4, 7, 8, 9, 10, 13, 14, 21, 22, h0 + hlen // 2, p0 - 1, p0, d0 - 1, d0, d0 + 16, size - 1}
    if plen:
        cuts |= {p0 + 1, p0 + plen // 2}
    cuts |= {rng.randrange(size) for _ in range(6)}
    cases = [([[name, "truncate", n]], ["CorruptDataError"]) for n in sorted(c for c in cuts if 0 <= c < size)]
    cases += [([[name, "append", "00"]], ["CorruptDataError"]), ([[name, "append", "ab" * 64]], ["CorruptDataError"])]
    spots = [(o, b) for o in range(FIXED) for b in rng.sample(range(8), 3 if dense else 1)]
    regions = [(h0, p0, 12), (p0, d0, 12 if plen else 0), (d0, size, 6)]
    for lo, hi, k in regions:
        spots += [(rng.randrange(lo, hi), rng.randrange(8)) for _ in range(k if dense else k // 3) if hi > lo]
    for off, bit in spots:
        cases.append(([[name, "flip", off, 1 << bit]], _envelope_expect(data, off, data[off] ^ (1 << bit))))
    for _ in range(16 if dense else 4):
        off = rng.randrange(size)
        new = (data[off] + rng.randrange(1, 256)) % 256
        cases.append(([[name, "set", off, new]], _envelope_expect(data, off, new)))
    return cases


def raw_cases(path: Path, rng: random.Random) -> list[tuple[list, list[str]]]:
    """A raw payload file (.bin), hashed in its envelope's header: any change is CorruptDataError."""
    name, size = path.name, path.stat().st_size
    big = size > BIG
    cuts = [0, 1, size - 1] + ([] if big else [size // 2] + [rng.randrange(size) for _ in range(3)])
    cases = [([[name, "truncate", n]], ["CorruptDataError"]) for n in cuts]
    cases += [([[name, "append", "00"]], ["CorruptDataError"]), ([[name, "delete"]], ["CorruptDataError"])]
    offs = [0, size - 1] + ([] if big else [size // 2] + [rng.randrange(size) for _ in range(6)])
    cases += [([[name, "flip", o, 1 << rng.randrange(8)]], ["CorruptDataError"]) for o in offs]
    if not big:
        data = path.read_bytes()
        for off in (rng.randrange(size) for _ in range(4)):
            cases.append(([[name, "set", off, (data[off] + rng.randrange(1, 256)) % 256]], ["CorruptDataError"]))
    return cases


def _json_text_cases(path: Path, rng: random.Random) -> list[tuple[list, list[str]]]:
    """model.json: truncations, flips and byte sets; the expected outcome from what the damaged
    text says: unreadable or a changed checked block -> DataError (ChecksumError is one); the
    same JSON -> it may load (and must be identical)."""
    data = path.read_bytes()
    meta = json.loads(data)
    size = len(data)

    def expect(damaged: bytes) -> list[str]:
        try:
            parsed = json.loads(damaged.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return ["DataError"]
        if parsed == meta:
            return ["identical"]
        if isinstance(parsed, dict) and "checksum" not in parsed:  # e.g. the key renamed "checksue"
            return ["DataError", "unverified"]
        if isinstance(parsed, dict) and all(parsed.get(k) == meta.get(k) for k in ("config", "calibration", "checksum")):
            return ["DataError", "ChecksumError", "descriptive"]  # see test_checkpoint_metadata_coverage
        return ["DataError", "ChecksumError"]

    cases = []
    for n in sorted({0, 1, size // 4, size // 2, size - 2, size - 1} | {rng.randrange(size) for _ in range(6)}):
        cases.append(([["model.json", "truncate", n]], expect(data[:n])))
    for _ in range(40):
        off, bit = rng.randrange(size), rng.randrange(8)
        cases.append(([["model.json", "flip", off, 1 << bit]],
                      expect(data[:off] + bytes([data[off] ^ (1 << bit)]) + data[off + 1:])))
    for _ in range(12):
        off = rng.randrange(size)
        new = (data[off] + rng.randrange(1, 256)) % 256
        cases.append(([["model.json", "set", off, new]], expect(data[:off] + bytes([new]) + data[off + 1:])))
    cases.append(([["model.json", "append", "0a20"]], ["identical"]))  # whitespace: the same JSON
    # one bit turns the key "checksum" into "checksue": the checkpoint then loads as one written
    # before checksums existed, unverified, with an UnverifiedCheckpointWarning (not silently)
    at = data.index(b'"checksum"') + 8
    cases.append(([["model.json", "flip", at, 8]], ["unverified"]))
    cases.append(([["model.json", "append", "7b7d"]], ["DataError"]))  # '{}' after the object
    return cases


def _model_pt_cases(path: Path, rng: random.Random) -> list[tuple[list, list[str]]]:
    """model.pt (a torch zip): any damage is DataError (ChecksumError for changed tensor bytes),
    or loads identically (bytes torch does not read)."""
    size = path.stat().st_size
    expected = ["DataError", "ChecksumError", "identical"]
    cases = [([["model.pt", "truncate", n]], ["DataError"])
             for n in sorted({0, 1, 30, size // 4, size // 2, size - 100, size - 22, size - 1}
                             | {rng.randrange(size) for _ in range(6)})]
    cases += [([["model.pt", "flip", rng.randrange(size), 1 << rng.randrange(8)]], expected) for _ in range(50)]
    cases += [([["model.pt", "set", rng.randrange(size), rng.randrange(256)]], expected) for _ in range(10)]
    cases.append(([["model.pt", "append", "00" * 7]], expected))
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Every kind of file, written once: key sets A (bootstrapping and rotation keys) and B (a
    second key set, rotation keys only), ciphertexts of both, a plan, two checkpoints; and the
    reference results of A's keys (the worker compares a loaded key set's results with them)."""
    import torch

    from ckksnet.backend import keys as K
    from ckksnet.backend import serialize as S
    from ckksnet.compiler import compile
    from ckksnet.models import ResNetCifar, save_checkpoint
    from ckksnet.compiler.calibrate import calibrate
    from tests.conftest import make_client

    t0 = time.time()
    root = tmp_path_factory.mktemp("fuzz")
    a, b = make_client(), make_client()
    a.gen_bootstrap_keys()
    for c in (a, b):
        c.gen_rotation_keys(ROTATIONS)
    assert {k % a.slots for k in ROTATIONS} <= {k for g, _ in a.rotation_key_maps for k in g}
    K.save_keys(a, root / "A")
    K.save_keys(b, root / "B")
    # the evaluation bundle without bootstrapping keys (most cases; loads without the 0.36 GB)
    shutil.copytree(root / "A" / "eval", root / "A_eval", ignore=lambda d, n: [x for x in n if "bootstrap" in x])
    (root / "A_client").mkdir()
    for name in ("context.ckks", "public_key.ckks", "secret_key.ckks"):
        shutil.copyfile(root / "A" / name, root / "A_client" / name)
    x = np.random.default_rng(SEED).uniform(-0.5, 0.5, a.slots)
    ct = a.encrypt(x, levels_left=6)
    for who, c in (("A", a), ("B", b)):
        (root / f"ct_{who}").mkdir()
        S.save_ciphertext(c, ct if who == "A" else c.encrypt(x), root / f"ct_{who}" / "x.ckks")
    srv = a.server()
    values = {"square": srv.mul(ct, ct), **{f"rot{k}": srv.rotate(ct, k) for k in ROTATIONS + BOOT_ROTATIONS}}
    for name, out in values.items():
        np.save(root / f"ref_{name}.npy", a.decrypt(out))
    # a plan (test preset, 8x8 images) and two checkpoints of one architecture
    torch.manual_seed(0)
    model = ResNetCifar(1, (2, 4, 4), 10).eval()
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    plan = compile(model, calibration=images, preset="test", image_size=(8, 8))
    plan.save(root / "plan")
    for i, folder in enumerate(("ck", "ck2")):
        torch.manual_seed(i)
        m = ResNetCifar(1, (2, 4, 4), 10).eval()
        meta = {"note": "fuzz", "accuracy": {"test": 12.5},
                "calibration": {"images": 8, "relus": calibrate(m, images)}}
        save_checkpoint(m, meta, root / folder)
    return root, round(time.time() - t0, 1)


def _kinds(root: Path) -> dict[str, dict]:
    """Per worker: the loader, the undamaged folder it loads, the references, and the cases."""
    A, B = root / "A", root / "B"
    rng = random.Random(SEED)
    refs = {"client": str(root / "A_client"), "ciphertext": str(root / "ct_A" / "x.ckks"),
            "values": {p.stem[4:]: str(p) for p in root.glob("ref_*.npy")}}
    env_eval = {**refs, "envelopes": {"context": str(A / "eval" / "context.ckks"),
                                      "public_key": str(A / "eval" / "public_key.ckks")}}
    wrong = {"WrongFileTypeError"}
    kinds: dict[str, dict] = {}

    def add(kind, loader, folder, reference, cases):
        kinds.setdefault(kind, {"loader": loader, "folder": str(folder), "reference": reference, "cases": []})
        kinds[kind]["cases"] += [{"folder": str(folder), "damage": d, "expect": e} for d, e in cases]

    # ---- context and public key: in the evaluation bundle (server) and the client's folder
    for kind, other_kind in (("context", "public_key"), ("public_key", "context")):
        f = f"{kind}.ckks"
        cases = envelope_cases(A / "eval" / f, rng, dense=kind == "context")
        cases += [([[f, "replace", str(B / "eval" / f)]], ["ContextMismatchError"]),
                  ([[f, "replace", str(A / "eval" / f"{other_kind}.ckks")]], sorted(wrong)),
                  ([[f, "replace", str(A / "eval" / "mult_keys.ckks")]], sorted(wrong)),
                  ([[f, "replace", str(root / "ct_A" / "x.ckks")]], sorted(wrong)),
                  ([[f, "replace", str(root / "plan" / "server_plan.ckksnet")]], sorted(wrong)),
                  ([[f, "replace", str(root / "ck" / "model.json")]], sorted(wrong)),
                  ([[f, "delete"]], ["SerializationError"])]
        add(kind, "eval", root / "A_eval", env_eval, cases)
        client_cases = envelope_cases(root / "A_client" / f, rng, dense=False)
        client_cases += [([[f, "replace", str(B / f)]], ["ContextMismatchError"]),
                         ([[f, "replace", str(A / "secret_key.ckks")]], sorted(wrong))]
        kinds[kind]["cases"] += [{"folder": str(root / "A_client"), "damage": d, "expect": e, "loader": "client"}
                                 for d, e in client_cases]
    # ---- the secret key (client folder)
    cases = envelope_cases(root / "A_client" / "secret_key.ckks", rng, dense=False)
    cases += [([["secret_key.ckks", "replace", str(B / "secret_key.ckks")]], ["ContextMismatchError"]),
              ([["secret_key.ckks", "replace", str(A / "public_key.ckks")]], sorted(wrong)),
              ([["secret_key.ckks", "delete"]], ["SerializationError"])]
    add("secret_key", "client", root / "A_client", {**refs, "envelopes": {
        "context": str(A / "context.ckks"), "public_key": str(A / "public_key.ckks"),
        "secret_key": str(A / "secret_key.ckks")}}, cases)
    # ---- relinearization and rotation keys: envelope and raw payload
    for kind, bins, other in (("mult_keys", ["mult_keys.bin"], "rotation_keys"),
                              ("rotation_keys", ["rotation_keys.0.bin"], "mult_keys")):
        f = f"{kind}.ckks"
        cases = envelope_cases(A / "eval" / f, rng, dense=False)
        cases += [([[f, "replace", str(B / "eval" / f)]], ["ContextMismatchError"]),
                  ([[f, "replace", str(A / "eval" / f"{other}.ckks")]], sorted(wrong)),
                  ([[f, "delete"]], ["SerializationError" if kind == "mult_keys" else "MissingKeyError"])]
        for name in bins:
            cases += raw_cases(A / "eval" / name, rng)
            cases += [([[name, "replace", str(B / "eval" / name)]], ["CorruptDataError"]),
                      ([[name, "replace", str(A / "eval" / ("rotation_keys.0.bin" if kind == "mult_keys"
                                                           else "mult_keys.bin"))]], ["CorruptDataError"])]
        # B's envelope and payload together: another key set's keys, consistently
        cases.append(([[f, "replace", str(B / "eval" / f)]] + [[n, "replace", str(B / "eval" / n)] for n in bins],
                      ["ContextMismatchError"]))
        add(kind, "eval", root / "A_eval", env_eval, cases)
    # ---- bootstrapping keys (the full bundle, ~0.36 GB of keys: fewer, streamed cases)
    f = "bootstrap_keys.ckks"
    cases = envelope_cases(A / "eval" / f, rng, dense=False)
    cases += raw_cases(A / "eval" / "bootstrap_keys.bin", rng)
    cases += [([[f, "replace", str(A / "eval" / "rotation_keys.ckks")]], sorted(wrong)),
              ([[f, "delete"]], ["MissingKeyError"]),
              ([["bootstrap_keys.bin", "replace", str(A / "eval" / "mult_keys.bin")]], ["CorruptDataError"])]
    add("bootstrap_keys", "eval_boot", A / "eval", env_eval, cases)
    # A's bootstrapping keys in B's bundle: another key set's
    kinds["bootstrap_keys"]["cases"].append(
        {"folder": str(B / "eval"), "expect": ["ContextMismatchError"], "damage": [
            [f, "replace", str(A / "eval" / f)], ["bootstrap_keys.bin", "replace", str(A / "eval" / "bootstrap_keys.bin")]]})
    # ---- a ciphertext
    cases = envelope_cases(root / "ct_A" / "x.ckks", rng)
    cases += [([["x.ckks", "replace", str(root / "ct_B" / "x.ckks")]], ["ContextMismatchError"]),
              ([["x.ckks", "replace", str(A / "public_key.ckks")]], sorted(wrong)),
              ([["x.ckks", "replace", str(root / "plan" / "client_plan.ckksnet")]], sorted(wrong)),
              ([["x.ckks", "delete"]], ["SerializationError"])]
    add("ciphertext", "ciphertext", root / "ct_A", {**refs, "envelopes": {"ciphertext": str(root / "ct_A" / "x.ckks")}},
        cases)
    # ---- plan files
    for kind, other in (("server_plan", "client_plan"), ("client_plan", "server_plan")):
        f = f"{kind}.ckksnet"
        cases = envelope_cases(root / "plan" / f, rng)
        cases += [([[f, "replace", str(root / "plan" / f"{other}.ckksnet")]], sorted(wrong)),
                  ([[f, "replace", str(root / "ct_A" / "x.ckks")]], sorted(wrong)),
                  ([[f, "replace", str(root / "ck" / "model.json")]], sorted(wrong)),
                  ([[f, "delete"]], ["SerializationError"])]
        add(kind, kind, root / "plan", {"envelopes": {kind: str(root / "plan" / f)}}, cases)
    # ---- checkpoints
    ck, ck2 = root / "ck", root / "ck2"
    cases = _json_text_cases(ck / "model.json", rng) + _model_pt_cases(ck / "model.pt", rng)
    cases += [([["model.pt", "replace", str(ck2 / "model.pt")]], ["ChecksumError"]),
              ([["model.json", "replace", str(ck2 / "model.json")]], ["ChecksumError"]),
              ([["model.pt", "replace", str(root / "ct_A" / "x.ckks")]], ["DataError"]),
              ([["model.json", "replace", str(root / "plan" / "client_plan.ckksnet")]], ["DataError"]),
              ([["model.pt", "replace", str(ck / "model.json")]], ["DataError"]),
              ([["model.pt", "delete"]], ["DataError"]), ([["model.json", "delete"]], ["DataError"])]
    add("checkpoint", "checkpoint", ck, {"checkpoint": str(ck)}, cases)
    for kind in kinds.values():
        for i, case in enumerate(kind["cases"]):
            case["id"] = f"{i}: " + "; ".join(" ".join(str(v) for v in d) for d in case["damage"])
    return kinds


#: worker processes and the kinds each checks, one group per (kind, loader). Loaders that make
#: OpenFHE install evaluation keys get a process to themselves (mult, rotation, bootstrapping
#: keys); torch is imported once for plans and checkpoints (~10 s on a busy machine).
PROCESSES = {"client_keys": ["context/client", "public_key/client", "secret_key/client"],
             "eval_bundle": ["context/eval", "public_key/eval"], "mult_keys": ["mult_keys/eval"],
             "rotation_keys": ["rotation_keys/eval"], "bootstrap_keys": ["bootstrap_keys/eval_boot"],
             "ciphertext": ["ciphertext/ciphertext"],
             "plans_and_checkpoints": ["server_plan/server_plan", "client_plan/client_plan", "checkpoint/checkpoint"]}
KINDS = ["context", "public_key", "secret_key", "mult_keys", "rotation_keys", "bootstrap_keys", "ciphertext",
         "server_plan", "client_plan", "checkpoint"]


def _run_process(root: Path, name: str, groups: list[dict]) -> dict:
    """Run one worker process over ``groups``; returns {group name: results} or {"failure": text}
    (a signal, a hang or a traceback, naming the case it was on)."""
    scratch = root / f"scratch_{name}"
    scratch.mkdir(exist_ok=True)
    progress = scratch / "progress"
    spec = {"scratch": str(scratch), "progress": str(progress),
            "groups": [{**g, "cases": [{k: v for k, v in c.items() if k != "expect"} for c in g["cases"]]}
                       for g in groups]}
    path = scratch / "spec.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.time()
    try:
        done = subprocess.run([sys.executable, __file__, str(path)], capture_output=True, text=True,
                              timeout=TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        return {"failure": f"{name}: hung (no answer in {TIMEOUT} s) on case {progress.read_text()!r}"}
    last = progress.read_text() if progress.exists() else "?"
    if done.returncode < 0:
        return {"failure": f"{name}: worker killed by signal {-done.returncode} on case {last!r}"}
    if done.returncode:
        return {"failure": f"{name}: worker failed on case {last!r}:\n{done.stderr[-3000:]}"}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "seconds": round(time.time() - t, 1)}


def _check(group: str, cases: list[dict], results: list[dict]) -> tuple[list[str], dict]:
    """Problems (empty if none) and a tally of outcomes."""
    assert len(results) == len(cases) + 1, f"{group}: {len(results)} results for {len(cases)} cases"
    problems, tally = [], {}
    *damaged, undamaged = results
    if not (undamaged.get("ok") and undamaged.get("identical")):
        problems.append(f"{group}: the undamaged files did not load identically: {undamaged}")
    for case, res in zip(cases, damaged):
        expect = case["expect"]
        changed = res.get("ok") and not res["identical"]
        if changed and "descriptive" in expect:
            outcome, good = "descriptive metadata changed (known gap)", True  # test_descriptive_...
        elif changed and "unverified" in expect and "UnverifiedCheckpointWarning" in res["warnings"]:
            outcome, good = "loaded unverified, with UnverifiedCheckpointWarning", True
        elif res.get("ok"):
            outcome = "identical" if res["identical"] else "CHANGED"
            good = res["identical"] and "identical" in expect
        else:
            outcome = res["error"]
            good = res["ckksnet"] and outcome in expect
        tally[outcome] = tally.get(outcome, 0) + 1
        if not good:
            problems.append(f"{group} case {case['id']}: expected {expect}, got {outcome}: "
                            f"{res.get('message') or res.get('detail')}")
    return problems, tally


@pytest.fixture(scope="module")
def outcomes(corpus):
    """Every worker process run once: {kind: (problems, tally, seconds)}."""
    from concurrent.futures import ThreadPoolExecutor

    root = corpus[0]
    kinds = _kinds(root)
    out, jobs = {}, {}
    for proc, names in PROCESSES.items():
        groups = []
        for name in names:
            kind, loader = name.split("/")
            spec = kinds[kind]
            cases = [c for c in spec["cases"] if c.get("loader", spec["loader"]) == loader]
            folder = spec["folder"] if loader == spec["loader"] else cases[0]["folder"]
            reference = spec["reference"]
            if loader == "client" and kind in ("context", "public_key"):
                reference = {**reference, "envelopes": {k: str(root / "A" / f"{k}.ckks")
                                                        for k in ("context", "public_key", "secret_key")}}
            groups.append({"name": name, "loader": loader, "folder": folder, "reference": reference, "cases": cases})
        jobs[proc] = groups
    t0 = time.time()
    with ThreadPoolExecutor(2) as pool:  # two worker processes at a time (the longest first)
        order = sorted(jobs, key=lambda n: n not in ("bootstrap_keys", "plans_and_checkpoints"))
        runs = {proc: pool.submit(_run_process, root, proc, jobs[proc]) for proc in order}
    for proc, groups in jobs.items():
        res = runs[proc].result()
        for g in groups:
            kind = g["name"].split("/")[0]
            problems, tally, secs = out.get(kind, ([], {}, 0.0))
            if "failure" in res:
                problems = problems + [res["failure"]]
            else:
                p, t = _check(g["name"], g["cases"], res[g["name"]])
                problems = problems + p
                tally = {k: tally.get(k, 0) + t.get(k, 0) for k in set(tally) | set(t)}
            out[kind] = (problems, tally, secs + res.get("seconds", 0.0) / len(groups))
    print(f"\nfuzz: files written in {corpus[1]} s, {sum(len(g['cases']) for j in jobs.values() for g in j)} "
          f"damaged copies loaded by {len(jobs)} processes in {time.time() - t0:.1f} s")
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_files_raise_specific_errors(outcomes, kind):
    problems, tally, seconds = outcomes[kind]
    print(f"\n{kind}: {sum(tally.values())} damaged copies, ~{seconds:.1f} s: {dict(sorted(tally.items()))}")
    assert not problems, "\n".join(problems[:30]) + (f"\n... {len(problems)} in all" if len(problems) > 30 else "")
    assert "CHANGED" not in tally and sum(tally.values()) > 20


@pytest.mark.xfail(strict=True, reason="known gap in models/checkpoint.py: the checksum covers weights, config "
                   "and calibration, not the descriptive metadata (training history, accuracy); remove this "
                   "marker once it does")
def test_descriptive_metadata_is_covered(corpus):
    from ckksnet.errors import ChecksumError
    from ckksnet.models import load_checkpoint

    work = corpus[0] / "ck_accuracy"
    shutil.copytree(corpus[0] / "ck", work)
    meta = json.loads((work / "model.json").read_text())
    meta["accuracy"]["test"] = 99.5
    (work / "model.json").write_text(json.dumps(meta, indent=2))
    with pytest.raises(ChecksumError):
        load_checkpoint(work)


def test_checkpoint_metadata_coverage(corpus):
    """What the checkpoint checksum does cover: a changed calibration figure is refused."""
    from ckksnet.errors import ChecksumError
    from ckksnet.models import load_checkpoint

    root = corpus[0]
    work = root / "ck_edit"
    shutil.copytree(root / "ck", work)
    meta = json.loads((work / "model.json").read_text())
    name = next(iter(meta["calibration"]["relus"]))
    meta["calibration"]["relus"][name]["max_abs"] *= 1.000001
    (work / "model.json").write_text(json.dumps(meta, indent=2))
    with pytest.raises(ChecksumError):
        load_checkpoint(work)


if __name__ == "__main__":
    _worker(sys.argv[1])
