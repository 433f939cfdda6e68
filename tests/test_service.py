"""``ckksnet serve`` and ``ckksnet.deploy.remote``, end to end at the insecure test preset: a real uvicorn
server in its own process group on a free loopback port, worker subprocesses, SQLite on disk.

The model is a small random-weight CNN (convolution, batch norm, ReLU, pooling, dense) so that a
job costs seconds; the owner's keys include bootstrapping keys, so the upload and the worker's
key loading take the same path as a real bundle (0.38 GB here, ~11 GiB at the secure preset).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import time
import warnings
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn as nn

import ckksnet
from ckksnet.backend import CkksClient
from ckksnet.core.preset import InsecurePresetWarning
from ckksnet.backend.keys import save_keys
from ckksnet.backend.serialize import ciphertext_from_bytes, ciphertext_to_bytes
from ckksnet.nn import Normalize
from ckksnet.deploy.remote import JobFailedError, RemoteClient, RemoteError
from ckksnet.deploy.service.bundle import TarReceiver, tar_length, tar_stream
from ckksnet.deploy.errors import BadUploadError, ConflictError
from ckksnet.deploy.service.store import Store, token_hash, token_matches

IMAGES = np.random.default_rng(3).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)


# ---------------------------------------------------------------- the world: plan, keys, ciphertexts
def _model() -> nn.Module:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.copy_(torch.randn(4, generator=gen) * 0.2)
    bn.running_var.copy_(torch.rand(4, generator=gen) + 0.5)
    return nn.Sequential(Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), nn.Conv2d(3, 4, 3, 1, 1, bias=False), bn,
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()


def _client(plan, bootstrap: bool) -> ckksnet.Client:
    """A client of ``plan`` with keys made here; ``bootstrap`` adds bootstrapping keys, which this
    plan does not use but a ResNet's bundle holds: the upload and the worker's key loading then
    take the path of a real bundle (a 0.38 GB file here, ~10 GiB at the secure preset)."""
    spec = plan.client_spec()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        keys = CkksClient("test")
        if bootstrap:
            keys.gen_bootstrap_keys()
        keys.gen_rotation_keys(spec.rotation_keys)
    return ckksnet.Client(spec, keys=keys)


class World:
    """Plan artifact, three key sets (owner ``a`` with bootstrapping keys, ``b`` and ``c``
    without), the owner's ciphertexts of IMAGES[:4] and the plaintext model's logits."""

    def __init__(self, root: Path):
        model = _model()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecurePresetWarning)
            self.plan = ckksnet.compile(model, calibration=IMAGES, preset="test", image_size=(8, 8))
        self.plan_path = self.plan.save(root / "plan") / "server_plan.ckksnet"
        self.clients = {name: _client(self.plan, name == "a") for name in "abc"}
        self.eval = {name: save_keys(c.keys, root / f"keys_{name}") / "eval" for name, c in self.clients.items()}
        owner = self.clients["a"]
        self.cts = [ciphertext_to_bytes(owner.keys, owner.encrypt(img)) for img in IMAGES[:4]]
        x = torch.from_numpy(IMAGES[:4]).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            self.logits = model(x).numpy()

    def decrypt(self, data: bytes) -> np.ndarray:
        owner = self.clients["a"]
        return owner.decrypt(ciphertext_from_bytes(owner.keys, data))


# ---------------------------------------------------------------- the server process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``ckksnet serve`` in a subprocess, its own process group (workers included)."""

    def __init__(self, plan: Path, state: Path, log: Path):
        self.plan, self.state, self.log = plan, state, log
        self.proc: subprocess.Popen | None = None

    def start(self, *flags: str, port: int | None = None) -> "Served":
        self.port = port or _free_port()
        cmd = [sys.executable, "-m", "ckksnet.deploy.cli", "serve", "--plan", str(self.plan),
               "--state", str(self.state), "--port", str(self.port), "--log-level", "warning", *flags]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=2, verify=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("the server did not come up:\n" + self.log.read_text()[-3000:])

    scheme = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def signal_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group: server and workers die at once."""
        self.signal_group(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("service_world"))


@pytest.fixture(scope="module")
def served(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("service_state")
    srv = Served(world.plan_path, root / "state", root / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def owner(world, served) -> RemoteClient:
    """The owner's session: key set ``a`` uploaded."""
    remote = RemoteClient(served.url)
    keyset_id, token = remote.upload_keys(world.eval["a"])
    assert keyset_id == world.clients["a"].keys.context_id and len(token) >= 40
    yield remote
    remote.close()


def _post_tar(url: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{url}/keysets", content=body, headers={"Content-Type": "application/x-tar"}, timeout=120)


def _keyset_files(served: Served, keyset_id: str) -> dict[str, int]:
    folder = served.state / "keysets" / keyset_id
    return {p.name: p.stat().st_size for p in folder.iterdir()}


# ---------------------------------------------------------------- parts, without a server
def _receive(body: bytes, folder: Path, chunk: int, allowed=lambda name: True) -> dict[str, int]:
    folder.mkdir()
    receiver = TarReceiver(folder, allowed)
    for i in range(0, len(body), chunk):
        receiver.feed(body[i:i + chunk])
    return receiver.finish()


def test_tar_stream_round_trips_in_any_chunking(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    files = {"empty.ckks": b"", "a.bin": os.urandom(1000), "b.bin": os.urandom(512), "c.ckks": os.urandom(70_000)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    body = b"".join(tar_stream(src))
    assert len(body) == tar_length(src)
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:  # a standard tar
        assert sorted(tar.getnames()) == sorted(files)
    for chunk in (1, 7, 511, 512, 513, 65536):
        out = tmp_path / f"out{chunk}"
        assert _receive(body, out, chunk) == {n: len(d) for n, d in files.items()}
        assert all((out / n).read_bytes() == d for n, d in files.items())


def _tar(*members: tarfile.TarInfo, tail: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return buf.getvalue() + tail


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize("body, reason", [
    (_tar(_member("link.ckks", tarfile.SYMTYPE)), "only regular files"),
    (_tar(_member("sub", tarfile.DIRTYPE)), "only regular files"),
    (_tar(_member("sub/a.ckks")), "not a file of"),
    (_tar(_member("a.ckks"), _member("a.ckks")), "appears twice"),
    (_tar(_member("a.ckks")) + b"\x01" * 512, "after the tar's end"),
    (_tar(_member("a.ckks"))[:1024], "truncated"),
    (b"\x00" * 1024, "empty"),
])
def test_tar_receiver_refuses_what_is_not_a_flat_bundle(tmp_path, body, reason):
    with pytest.raises(BadUploadError, match=reason):
        _receive(body, tmp_path / "out", 4096)


def test_store_queue_is_fifo_per_key_set_and_tokens_are_hashed(tmp_path):
    store = Store(tmp_path / "state")
    for keyset in ("k1", "k2"):
        upload = store.root / "uploads" / keyset
        upload.mkdir()
        store.add_keyset(keyset, token_hash(f"token-{keyset}"), "test", {}, upload, max_keysets=2)
    with pytest.raises(ConflictError, match="at most 2"):
        store.check_room(None, 2)
    assert token_matches("token-k1", store.keyset("k1")["token_sha256"])
    assert not token_matches("token-k2", store.keyset("k1")["token_sha256"])
    assert "token-k1" not in (store.root / "state.sqlite3").read_bytes().decode("latin-1")
    for job, keyset in (("j1", "k1"), ("j2", "k2"), ("j3", "k1")):
        store.add_job(job, keyset, 10)
    assert store.claim_job("w1", "k1")["id"] == "j1"
    assert store.claim_job("w1", "k1") is None and store.next_keyset() == "k2"  # j2 is older than j3
    assert store.claim_job("w2")["id"] == "j2" and store.queue_position("j3") == 0
    assert store.progress("j2", "w2", 1, 4, "conv") and not store.progress("j2", "w1", 1, 4, "conv")
    assert sorted(store.fail_running("the server restarted during the job")) == ["j1", "j2"]
    assert not store.finish_job("j1", "w1", 5)  # a failed job stays failed
    assert store.job("j1")["state"] == "failed" and store.job("j3")["state"] == "queued"


# ---------------------------------------------------------------- the service, end to end
@pytest.mark.slow
def test_upload_submit_progress_and_results(world, served, owner):
    stored = _keyset_files(served, owner.keyset_id)
    assert stored == {p.name: p.stat().st_size for p in world.eval["a"].iterdir()}
    assert not any(p.name.startswith("secret") for p in (served.state / "keysets" / owner.keyset_id).iterdir())
    jobs = [owner.submit(ct) for ct in world.cts[:2]]
    history: list[dict] = []
    finals = [owner.wait(job, progress=False, poll=0.05, timeout=300, on_status=history.append) for job in jobs]
    steps = len(world.plan.steps)
    running = [h for h in history if h["state"] == "running"]
    assert running and all(1 <= h["step"] <= steps == h["steps"] for h in running if h["steps"])
    assert any(h["step_name"] for h in running)
    assert all(f["state"] == "done" and f["step"] == steps for f in finals)
    for i, job in enumerate(jobs):
        logits = world.decrypt(owner.result(job))
        assert logits.argmax() == world.logits[i].argmax()
        assert np.max(np.abs(logits - world.logits[i])) < 1e-2
    assert not (served.state / "jobs" / f"{jobs[0]}.in").exists()  # inputs go once a job ends


@pytest.mark.slow
def test_a_second_client_can_touch_neither_keys_nor_jobs(world, served, owner):
    job = owner.submit(world.cts[2])
    other = RemoteClient(served.url)
    other_id, _ = other.upload_keys(world.eval["b"])
    assert other_id != owner.keyset_id
    calls = {"status": lambda: other.status(job), "result": lambda: other.result(job)}
    for what, call in calls.items():
        with pytest.raises(RemoteError) as err:
            call()
        assert err.value.status == 404, what
    with pytest.raises(RemoteError) as err:  # the owner's ciphertext under the other key set
        other.submit(world.cts[0])
    assert err.value.status == 422 and "belongs to key set" in str(err.value)
    intruder = RemoteClient(served.url, token=other.token, keyset_id=owner.keyset_id)
    for call in (intruder.keyset, intruder.delete_keys, lambda: intruder.submit(world.cts[0])):
        with pytest.raises(RemoteError) as err:
            call()
        assert err.value.status == 403
    anonymous = httpx.get(f"{served.url}/jobs/{job}", timeout=10)
    assert anonymous.status_code == 401 and "token" in anonymous.json()["detail"]
    forged = httpx.get(f"{served.url}/keysets/{owner.keyset_id}", headers={"Authorization": "Bearer " + "x" * 43}, timeout=10)
    assert forged.status_code == 403
    assert [j["id"] for j in owner.keyset()["jobs"]][-1] == job  # nothing was added by the others
    assert owner.wait(job, progress=False, poll=0.1, timeout=300)["state"] == "done"
    other.close()


@pytest.mark.slow
def test_bad_uploads_are_rejected_and_stored_keysets_stay(world, served, owner, tmp_path):
    before = _keyset_files(served, owner.keyset_id)
    good = b"".join(tar_stream(world.eval["c"]))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(world.eval["c"], corrupt)
    with (corrupt / "mult_keys.bin").open("r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    missing = tmp_path / "missing"
    shutil.copytree(world.eval["c"], missing)
    (missing / "context.ckks").unlink()
    smuggled = tmp_path / "smuggled"
    shutil.copytree(world.eval["c"], smuggled)
    (smuggled / "secret_key.ckks").write_bytes(b"x")
    traversal = io.BytesIO()
    with tarfile.open(fileobj=traversal, mode="w") as tar:
        info = tarfile.TarInfo("../context.ckks")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    cases = {"truncated": (good[:len(good) // 2], 400), "not a tar": (b"hello" * 2000, 400),
             "corrupt key file": (b"".join(tar_stream(corrupt)), 422),
             "no context": (b"".join(tar_stream(missing)), 422),
             "secret key member": (b"".join(tar_stream(smuggled)), 400),
             "path traversal": (traversal.getvalue(), 400)}
    for what, (body, status) in cases.items():
        answer = _post_tar(served.url, body)
        assert answer.status_code == status, (what, answer.text)
        assert answer.json()["detail"], what
    assert _keyset_files(served, owner.keyset_id) == before
    assert not any((served.state / "uploads").iterdir())
    assert not (served.state / "keysets" / world.clients["c"].keys.context_id).exists()
    assert owner.keyset()["keyset_id"] == owner.keyset_id
    twice = _post_tar(served.url, b"".join(tar_stream(world.eval["a"])))  # the same key set again
    assert twice.status_code == 409 and "already stored" in twice.json()["detail"]


def _query(url: str, *args: str, token: str | None = None, quiet: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "CKKSNET_TOKEN": token} if token else {k: v for k, v in os.environ.items()
                                                                 if k != "CKKSNET_TOKEN"}
    return subprocess.run([sys.executable, "-m", "ckksnet.deploy.cli", "query", "--url", url,
                           *(["--quiet"] if quiet else []), *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _bar_lines(err: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]", err) if line.startswith("job ")]


@pytest.mark.slow
def test_progress_bar_counts_the_plans_steps(world, served, owner, capsys):
    """The bar of ``wait`` (and so of ``query run``) knows the plan's N steps from its first
    line, while the job is still queued, and says "step k/N" of each running step it sees."""
    steps = len(world.plan.steps)
    history: list[dict] = []
    job = owner.submit(world.cts[3])
    owner.wait(job, progress=True, poll=0.05, timeout=300, on_status=history.append)
    bars = _bar_lines(capsys.readouterr().err)
    assert bars and f" 0/{steps} " in bars[0] and f" {steps}/{steps} " in bars[-1], bars
    running = [h for h in history if h["state"] == "running" and h["step"]]
    assert running, history
    for h in running:
        assert any(f"step {h['step']}/{steps}" in line for line in bars), (h, bars)


@pytest.mark.slow
def test_query_run_shows_the_step_count(world, served, owner, tmp_path):
    (tmp_path / "in.ckks").write_bytes(world.cts[0])
    done = _query(served.url, "run", "--in", str(tmp_path / "in.ckks"), "--out", str(tmp_path / "out.ckks"),
                  token=owner.token, quiet=False)
    assert done.returncode == 0, done.stderr
    steps = len(world.plan.steps)
    bars = _bar_lines(done.stderr)
    assert bars and f" 0/{steps} " in bars[0] and f" {steps}/{steps} " in bars[-1], done.stderr[-2000:]


@pytest.mark.slow
def test_query_command_runs_a_ciphertext(world, served, owner, tmp_path):
    (tmp_path / "in.ckks").write_bytes(world.cts[1])
    done = _query(served.url, "run", "--in", str(tmp_path / "in.ckks"), "--out", str(tmp_path / "out.ckks"),
                  token=owner.token)
    assert done.returncode == 0, done.stderr
    assert world.decrypt((tmp_path / "out.ckks").read_bytes()).argmax() == world.logits[1].argmax()
    health = _query(served.url, "health")
    assert health.returncode == 0 and '"preset": "test"' in health.stdout
    refused = _query(served.url, "status", "0" * 32, token="not-a-token")
    assert refused.returncode == 2 and "HTTP 404" in refused.stderr


@pytest.mark.slow
def test_query_prints_json_takes_options_after_the_action_and_deletes_by_token(world, served, owner, tmp_path):
    """submit prints {"job": id} like upload prints JSON; --token may follow the action; status
    shows UTC times; delete needs no key set id: the token names its key set."""
    (tmp_path / "in.ckks").write_bytes(world.cts[2])
    sub = _query(served.url, "submit", "--in", str(tmp_path / "in.ckks"), "--token", owner.token)
    assert sub.returncode == 0, sub.stderr
    job = json.loads(sub.stdout)["job"]
    status = _query(served.url, "status", job, "--token", owner.token)
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert view["id"] == job and view["created_utc"].endswith("+00:00")
    owner.wait(job, progress=False)
    # a key set of its own (c: no other test stores it), then deleted knowing only its token
    other = RemoteClient(served.url)
    keyset_c, token_c = other.upload_keys(world.eval["c"])
    other.close()
    with RemoteClient(served.url, token_c) as by_token:
        assert by_token.keyset()["keyset_id"] == keyset_c
    gone = _query(served.url, "delete", token=token_c)
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout) == {"deleted": keyset_c}
    assert not (served.state / "keysets" / keyset_c).exists()


def _running_job(db: Path) -> str | None:
    """The job computing now, by the database; None if none is, or if a frozen server process
    holds a lock (a checkpoint when its last connection closed)."""
    try:
        with closing(sqlite3.connect(db, timeout=0.2)) as con:
            row = con.execute("SELECT id FROM jobs WHERE state = 'running' AND step >= 1").fetchone()
    except sqlite3.OperationalError:
        return None
    return row[0] if row else None


def _kill_while_running(served: Served) -> str:
    """Freeze the server's process group until the database shows a job computing, then
    SIGKILL the group: the job was certainly running when the server died."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        served.signal_group(signal.SIGSTOP)
        job = _running_job(served.state / "state.sqlite3")
        if job is not None:
            served.kill()
            return job
        served.signal_group(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("no job was seen running")


@pytest.mark.slow
def test_killed_mid_job_restart_keeps_keys_and_reports_failure(world, served, owner):
    jobs = {owner.submit(world.cts[3]): 3, owner.submit(world.cts[0]): 0}
    killed = _kill_while_running(served)
    (kept,) = set(jobs) - {killed}
    served.start("--max-body", "5MiB", "--max-keysets", "1", "--max-ciphertext", "64KiB", port=served.port)
    with pytest.raises(JobFailedError, match="server restarted during the job"):
        owner.wait(killed, progress=False, timeout=30)
    assert owner.keyset()["keyset_id"] == owner.keyset_id  # the key set survived
    assert owner.wait(kept, progress=False, poll=0.1, timeout=300)["state"] == "done"  # queued (or done): kept
    assert world.decrypt(owner.result(kept)).argmax() == world.logits[jobs[kept]].argmax()
    with pytest.raises(RemoteError) as err:
        owner.result(killed)
    assert err.value.status == 409 and "failed" in str(err.value)
    # limits, now small: each a clear 4xx with a JSON detail
    with pytest.raises(RemoteError) as err:
        owner.submit(world.cts[1])
    assert err.value.status == 413
    too_big = _post_tar(served.url, b"".join(tar_stream(world.eval["c"])))
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
    full = _post_tar(served.url, b"".join(tar_stream(world.eval["c"]))[:1 << 20])
    assert full.status_code == 409 and "at most 1 key sets" in full.json()["detail"]
    with pytest.raises(RemoteError) as err:
        RemoteClient(served.url).upload_keys(world.eval["c"])  # refused before sending
    assert err.value.status == 413


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_through_uvicorn_certificate_options(world, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    srv = Served(world.plan_path, tmp_path / "state", tmp_path / "server.log")
    srv.scheme = "https"
    srv.start("--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    try:
        with RemoteClient(srv.url, verify=str(cert)) as remote:
            assert remote.health()["preset"] == "test"
        with pytest.raises(RemoteError, match="CERTIFICATE_VERIFY_FAILED"), RemoteClient(srv.url) as remote:
            remote.health()  # not trusted without the CA
        answer = _query(srv.url, "--cacert", str(cert), "health")
        assert answer.returncode == 0 and '"status": "ok"' in answer.stdout, answer.stderr
    finally:
        srv.stop()
