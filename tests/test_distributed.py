"""Many images over Ray workers (ckksnet.deploy.distributed), on a real local Ray instance, test preset.

A small CNN (two convolutions and ReLUs, global pooling, a dense layer; it bootstraps) is
compiled, its keys written to files, and 8 images encrypted. Each image is also run in this
process by one :class:`ckksnet.Server` (the single-process results) and through torch (the
plaintext model). Then: 8 images over 2 workers equal the single-process results image by image
and each worker loaded its keys once; a worker killed (SIGKILL to its process) mid-batch costs
that image only; a batch interrupted (SIGINT to ``ckksnet run``) resumes without redoing an image;
a corrupt ciphertext fails alone; and the refusals before any worker starts.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

ray = pytest.importorskip("ray")  # a dependency of the test extra: ./run.sh test installs it

from ckksnet.backend.keys import load_evaluation_keys, save_keys  # noqa: E402
from ckksnet.core.preset import InsecurePresetWarning  # noqa: E402
from ckksnet.backend.serialize import ciphertext_from_bytes, ciphertext_to_bytes, save_ciphertext  # noqa: E402
from ckksnet.compiler import compile  # noqa: E402
from ckksnet.runtime import load_client_spec, load_plan  # noqa: E402
from ckksnet.deploy.distributed import DistributedError, InferenceWorker, run_batch  # noqa: E402
from ckksnet.deploy.distributed import runner as runner_module  # noqa: E402
from ckksnet.deploy.distributed.batch import RESULTS_FILE, BatchState, list_inputs  # noqa: E402
from ckksnet.deploy.distributed.runner import RunnerOptionError  # noqa: E402
from ckksnet.errors import CkksnetError, InputError  # noqa: E402
from ckksnet.runtime import Client, Server  # noqa: E402
from tests.helpers import random_batchnorms  # noqa: E402

CKKSNET = str(Path(sys.executable).parent / "ckksnet")
IMAGES = np.random.default_rng(11).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
CALIBRATION = np.random.default_rng(12).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
pytestmark = pytest.mark.slow  # Ray instances, worker processes, the scale-out example


def small_cnn() -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    return random_batchnorms(model, torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Artifacts, key files, 8 ciphertext files, single-process outputs and plaintext logits."""
    root = tmp_path_factory.mktemp("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        model = small_cnn()
        plan = compile(model, calibration=CALIBRATION, preset="test", image_size=(8, 8), alpha=8, eps_bits=8)
        assert plan.schedule.bootstraps > 0  # the workers load bootstrapping keys, like a real plan's
        plan.save(root / "art")
        client = Client(load_client_spec(root / "art" / "client_plan.ckksnet"))
        save_keys(client.keys, root / "keys")
        cts = root / "ct"
        cts.mkdir()
        for i, image in enumerate(IMAGES):
            save_ciphertext(client.keys, client.encrypt(image), cts / f"img{i}.ckks")
        server = Server(load_plan(root / "art" / "server_plan.ckksnet"),
                        load_evaluation_keys(root / "keys" / "eval", plan.schedule.key_rotations, True))
        single = {}
        for path in sorted(cts.iterdir()):
            out = server.run(ciphertext_from_bytes(server.evaluator, path.read_bytes()))
            single[path.name] = client.decrypt(out)
    with torch.no_grad():
        plain = model(torch.from_numpy(IMAGES).permute(0, 3, 1, 2).float() / 255).double().numpy()
    return {"root": root, "plan": root / "art" / "server_plan.ckksnet", "keys": root / "keys" / "eval",
            "ct": cts, "client": client, "single": single, "plain": plain, "model": model}


@pytest.fixture(scope="module")
def local_ray(setup):
    """One local Ray instance for the module (run_batch joins it rather than starting its own)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", object_store_memory=256 * 2**20,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}, _system_config={"worker_niceness": 0})
    yield ray
    ray.shutdown()


def decrypt_outputs(setup, out: Path) -> dict:
    client = setup["client"]
    return {p.name: client.decrypt(ciphertext_from_bytes(client.keys, p.read_bytes()))
            for p in sorted(out.glob("*.ckks"))}


def result_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]


def assert_equals_single_process(setup, out: Path) -> None:
    got = decrypt_outputs(setup, out)
    assert sorted(got) == sorted(setup["single"])
    for i, name in enumerate(sorted(setup["single"], key=lambda n: int(n[3:-5]))):
        # the same computation on the same ciphertext: equal up to decryption's own noise
        assert np.max(np.abs(got[name] - setup["single"][name])) < 1e-6, name
        # and the encrypted result is the plaintext model's (the approximate ReLU's error)
        assert np.max(np.abs(got[name] - setup["plain"][i])) < 0.05, name
        assert got[name].argmax() == setup["plain"][i].argmax(), name


def test_two_workers_equal_single_process_and_load_keys_once(setup, local_ray, tmp_path):
    inputs = sorted(setup["ct"].iterdir())
    bad = tmp_path / "bad.ckks"
    data = bytearray(inputs[0].read_bytes())
    data[len(data) // 2] ^= 0x40
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    events = []
    report = run_batch(setup["plan"], setup["keys"], inputs[:4] + [bad] + inputs[4:], out, workers=2,
                       progress=False, on_event=lambda kind, **f: events.append((kind, f)))
    assert report.count("done") == 8 and report.count("failed") == 1 and not report.ok
    assert [r.input for r in report.results] == [p.name for p in inputs[:4]] + ["bad.ckks"] + [p.name for p in inputs[4:]]
    failed = next(r for r in report.results if r.status == "failed")
    assert "CorruptDataError" in failed.error and failed.input == "bad.ckks"
    assert not (out / "bad.ckks").exists()
    assert_equals_single_process(setup, out)
    # two worker processes (not this one), each loaded the keys once and ran images
    workers = {w["worker"]: w for w in report.workers}
    assert len(workers) == 2 and all(w["key_loads"] == 1 and not w["died"] for w in workers.values())
    assert {w["pid"] for w in workers.values()} != {os.getpid()} and len({w["pid"] for w in workers.values()}) == 2
    assert all(w["images"] >= 1 for w in workers.values()) and sum(w["images"] for w in workers.values()) == 8
    assert sum(kind == "worker_ready" for kind, _ in events) == 2
    # every image once in results.jsonl
    lines = result_lines(out)
    assert sorted(line["input"] for line in lines) == sorted([p.name for p in inputs] + ["bad.ckks"])


def test_killed_worker_costs_one_image(setup, local_ray, tmp_path):
    out = tmp_path / "out"
    killed = {}

    def on_event(kind, **f):
        if kind == "started" and f["image"] == "img2.ckks" and not killed:
            killed.update(f)
            # mid-image: a second into a run of several seconds
            threading.Timer(1.0, os.kill, (f["pid"], signal.SIGKILL)).start()

    report = run_batch(setup["plan"], setup["keys"], setup["ct"], out, workers=2, progress=False, on_event=on_event)
    assert killed and report.ok and report.count("done") == 8
    assert report.worker_deaths == 1 and report.retried == 1
    again = next(r for r in report.results if r.input == "img2.ckks")
    assert again.attempts == 2 and again.worker != killed["worker"]
    lines = result_lines(out)
    assert sorted(line["input"] for line in lines) == sorted(setup["single"])  # each image once
    dead = [w for w in report.workers if w["died"]]
    assert [w["worker"] for w in dead] == [killed["worker"]] and len(report.workers) == 3  # one replacement
    assert_equals_single_process(setup, out)


def test_interrupted_batch_resumes_without_redoing(setup, tmp_path):
    """Two real ``ckksnet run`` processes, each with its own local Ray instance: the first is
    interrupted (SIGINT) after three images, the second finishes the rest."""
    out = tmp_path / "out"
    cmd = [CKKSNET, "run", "--plan", str(setup["plan"]), "--eval-keys", str(setup["keys"]), "--in",
           str(setup["ct"]), "--out", str(out), "--workers", "1", "--use-ray", "always", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # SIGINT as a terminal would deliver it, whatever this suite inherited: a suite started in the
    # background of a non-interactive shell ignores SIGINT, its children too, and Python then never
    # raises KeyboardInterrupt (the run went on to the end)
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and first.poll() is None:
        if (out / RESULTS_FILE).exists() and len(result_lines(out)) >= 3:
            break
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err
    done_first = [line["input"] for line in result_lines(out)]
    assert 3 <= len(done_first) < 8
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    rep = json.loads(second.stdout)
    assert rep["done"] == 8 and rep["resumed"] == len(done_first)
    redone = [r["input"] for r in rep["results"] if not r["resumed"]]
    assert not set(redone) & set(done_first) and len(redone) == 8 - len(done_first)
    lines = [line["input"] for line in result_lines(out)]
    assert sorted(lines) == sorted(setup["single"])  # each image exactly once over both runs
    assert_equals_single_process(setup, out)


def _two_images(setup, tmp_path: Path) -> Path:
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("img0.ckks", "img1.ckks"):
        (folder / name).write_bytes((setup["ct"] / name).read_bytes())
    return folder


def _run_two(setup, tmp_path: Path, out: str, *flags: str) -> tuple[subprocess.Popen, dict, str]:
    """``ckksnet run`` of two images in a Python process of its own that says, last on stderr,
    whether it imported Ray: (the process, its JSON report, its stderr)."""
    code = ("import json, sys; from ckksnet.deploy.cli import main; rc = main(sys.argv[1:]); "
            "print(json.dumps({'rc': rc, 'ray_imported': 'ray' in sys.modules}), file=sys.stderr)")
    cmd = [sys.executable, "-c", code, "run", "--plan", str(setup["plan"]), "--eval-keys", str(setup["keys"]),
           "--in", str(_two_images(setup, tmp_path)), "--out", str(tmp_path / out), "--json", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    return proc, json.loads(stdout), stderr


def _assert_two_equal_single_process(setup, out: Path) -> None:
    got = decrypt_outputs(setup, out)
    assert sorted(got) == ["img0.ckks", "img1.ckks"]
    for name, logits in got.items():
        assert np.max(np.abs(logits - setup["single"][name])) < 1e-6, name


def test_two_images_run_in_process_without_starting_ray(setup, tmp_path):
    """Two images at the test preset (8x8) would wait seconds for Ray to start and finish in
    about as long: ``ckksnet run`` (even with --workers 2) runs them in its own process, says so
    and why on stderr, in its text and in its JSON report, and never imports Ray."""
    proc, rep, err = _run_two(setup, tmp_path, "out", "--workers", "2")
    assert json.loads(err.strip().splitlines()[-1]) == {"rc": 0, "ray_imported": False}
    assert rep["runner"] == "in-process" and "start-up" in rep["runner_reason"], rep
    assert "ckksnet run: in this process (no Ray): " + rep["runner_reason"] in err
    assert rep["done"] == 2 and [w["pid"] for w in rep["workers"]] == [proc.pid]
    assert all(w["key_loads"] == 1 and w["images"] == 2 for w in rep["workers"])
    _assert_two_equal_single_process(setup, tmp_path / "out")
    again = subprocess.run([CKKSNET, "run", "--plan", str(setup["plan"]), "--eval-keys", str(setup["keys"]),
                            "--in", str(tmp_path / "two"), "--out", str(tmp_path / "out")],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert again.returncode == 0 and "2 of 2 images done (2 from an earlier run)" in again.stdout, again.stderr


def test_local_ray_run_prints_no_raw_ray_output(setup, tmp_path):
    """``--use-ray always`` still runs two images over a local Ray instance started for the
    run, and what reaches the terminal is ckksnet's: no worker's warning forwarded raw by Ray
    ("(InferenceWorker pid=...) .../headers.py:96: InsecurePresetWarning: ..."), no Ray log line
    about token authentication; the insecure preset is said once."""
    proc, rep, err = _run_two(setup, tmp_path, "out", "--use-ray", "always")
    assert json.loads(err.strip().splitlines()[-1]) == {"rc": 0, "ray_imported": True}
    assert rep["runner"] == "ray" and rep["runner_reason"] == "--use-ray always"
    assert rep["done"] == 2 and all(w["pid"] != proc.pid for w in rep["workers"])
    _assert_two_equal_single_process(setup, tmp_path / "out")
    for raw in ("pid=", "InsecurePresetWarning", "Token authentication", "authentication_token_setup", "\tWARNING "):
        assert raw not in err, err[-3000:]
    assert err.count("NOT secure") == 1, err[-3000:]


def test_use_ray_never_refuses_what_only_ray_does(setup, tmp_path):
    def run(**options):
        return run_batch(setup["plan"], setup["keys"], setup["ct"], tmp_path / "o", progress=False, **options)

    with pytest.raises(RunnerOptionError, match="--workers 2 needs Ray"):
        run(use_ray="never", workers=2)
    with pytest.raises(RunnerOptionError, match="drop one"):
        run(use_ray="never", address="auto")
    with pytest.raises(RunnerOptionError, match="one of auto, always, never"):
        run(use_ray="sometimes")
    assert not (tmp_path / "o").exists()  # refused before any work


def test_ray_starts_only_when_its_workers_pay(monkeypatch):
    """The choice itself, by the plan's estimate: many images over 2 workers on 2 cores start Ray;
    a few do not; one worker, one image or one core never does."""
    monkeypatch.setattr(runner_module, "affinity_cores", lambda: 2)
    pays = runner_module.by_estimate
    assert pays(100, 2, 1, 1.7).ray and "~92 s over 2 Ray workers" in pays(100, 2, 1, 1.7).reason
    assert not pays(2, 2, 1, 1.7).ray
    assert not pays(100, 1, 1, 1.7).ray and not pays(1, 2, 1, 1.7).ray
    assert not pays(100, 2, 2, 1.7).ray  # 2 cores hold one 2-CPU worker
    assert not pays(100, 2, 1, None).ray  # no estimate: stays here, and says so
    choose = runner_module.choose_runner
    assert choose("always", 1, 1, 1, None, 1.7).ray and not choose("never", 100, 1, 1, None, 1.7).ray


def test_worker_in_process_counts_one_key_load_and_refuses_bad_input(setup):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        worker = InferenceWorker(setup["plan"], setup["keys"], "local")
    data = (setup["ct"] / "img0.ckks").read_bytes()
    res = worker.run(data)
    assert res["ok"] and res["key_loads"] == 1 and res["images"] == 1 and res["bootstraps"] > 0
    logits = setup["client"].decrypt(ciphertext_from_bytes(setup["client"].keys, res["ciphertext"]))
    assert np.max(np.abs(logits - setup["single"]["img0.ckks"])) < 1e-6
    bad = worker.run(data[:-10])
    assert not bad["ok"] and "CorruptDataError" in bad["error"] and bad["images"] == 1
    assert not worker.run(b"not a ciphertext")["ok"]
    assert worker.info()["key_loads"] == 1


def test_refusals_before_any_worker_starts(setup, tmp_path):
    plan, keys = setup["plan"], setup["keys"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no .ckks"):
        run_batch(plan, keys, empty, tmp_path / "o1", progress=False)
    with pytest.raises(InputError, match="no such"):
        run_batch(plan, keys, tmp_path / "missing", tmp_path / "o1", progress=False)
    with pytest.raises(CkksnetError, match="evaluation keys only"):
        run_batch(plan, setup["root"] / "keys", setup["ct"], tmp_path / "o1", progress=False)
    with pytest.raises(CkksnetError, match="workers"):
        run_batch(plan, keys, setup["ct"], tmp_path / "o1", workers=0, progress=False)
    for memory in (0.0, -1.0, float("nan")):
        with pytest.raises(CkksnetError, match="worker-memory"):
            run_batch(plan, keys, setup["ct"], tmp_path / "o1", worker_memory_gb=memory, progress=False)
    with pytest.raises(InputError, match="holds the input ciphertexts"):
        run_batch(plan, keys, setup["ct"], setup["ct"], progress=False)
    (tmp_path / "afile").write_text("")
    with pytest.raises(InputError, match="is a file"):
        run_batch(plan, keys, setup["ct"], tmp_path / "afile", progress=False)
    # an output folder of another key set is refused, not mixed
    other = tmp_path / "other"
    other.mkdir()
    (other / "batch.json").write_text(json.dumps({"plan_id": "0" * 64, "context_id": "1" * 32}))
    with pytest.raises(CkksnetError, match="another plan_id"):
        run_batch(plan, keys, setup["ct"], other, progress=False)
    # a damaged line in the middle of results.jsonl is an error (a last line cut short is not)
    out = tmp_path / "o2"
    out.mkdir()
    (out / RESULTS_FILE).write_text('{"input": "img0.ckks", "status": "done"}\n{"input": "img1\n{}\n')
    with pytest.raises(CkksnetError, match="line 2 is damaged"):
        run_batch(plan, keys, setup["ct"], out, progress=False)


def test_cli_refusals_are_errors_not_tracebacks(setup, tmp_path):
    """Real ``ckksnet run`` processes: each refusal exits 2 with one ``error:`` line, quickly
    (an unreachable cluster address is not retried for minutes)."""
    base = [CKKSNET, "run", "--plan", str(setup["plan"]), "--eval-keys", str(setup["keys"]), "--in",
            str(setup["ct"]), "--out", str(tmp_path / "out")]
    cases = [(["--workers", "0"], "workers"), (["--worker-memory", "nan"], "worker-memory"),
             (["--ray", "127.0.0.1:1"], "no Ray cluster answers at 127.0.0.1:1")]
    for extra, reason in cases:
        t0 = time.monotonic()
        done = subprocess.run(base + extra, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 2 and "ckksnet run: error:" in done.stderr and reason in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and time.monotonic() - t0 < 60


def test_batch_state_resumes_from_what_is_on_disk(tmp_path):
    ct = tmp_path / "ct"
    ct.mkdir()
    for i in range(3):
        (ct / f"img{i}.ckks").write_bytes(b"x")
    files = list_inputs(ct)
    out = tmp_path / "out"
    state = BatchState(out, files, {"plan_id": "p", "context_id": "c"})
    assert state.pending() == files
    state.record_done("img0.ckks", b"result", {"worker": "w0", "seconds": 1.0, "bootstraps": 2, "attempts": 1})
    state.record_failed("img1.ckks", "CorruptDataError: bad", {"worker": "w1", "attempts": 1})
    with open(out / RESULTS_FILE, "a") as f:
        f.write('{"input": "img2.ckks", "stat')  # killed while writing: no newline after it
    again = BatchState(out, files, {"plan_id": "p", "context_id": "c"})
    # done and with its output: skipped; failed: tried again; cut short: not done
    assert [p.name for p in again.pending()] == ["img1.ckks", "img2.ckks"]
    assert again.report().results[0].resumed and (out / "img0.ckks").read_bytes() == b"result"
    # the cut-short line was dropped from the file: the next record starts a line of its own
    again.record_done("img2.ckks", b"result 2", {"worker": "w0", "seconds": 1.0, "bootstraps": 2, "attempts": 1})
    third = BatchState(out, files, {"plan_id": "p", "context_id": "c"})
    assert [p.name for p in third.pending()] == ["img1.ckks"]
    assert (out / RESULTS_FILE).read_text().endswith("\n") and not list(out.glob("*.tmp"))
    (ct / "img2.ckks").write_bytes(b"another image")  # a replaced input is run again
    assert [p.name for p in BatchState(out, files, {"plan_id": "p", "context_id": "c"}).pending()] == [
        "img1.ckks", "img2.ckks"]
    (out / "img0.ckks").unlink()  # a done line without its output file is not done
    assert len(BatchState(out, files, {"plan_id": "p", "context_id": "c"}).pending()) == 3
    assert list_inputs(ct / "img0.ckks") == [ct / "img0.ckks"]  # one file is a batch of one
    with pytest.raises(CkksnetError, match="another context_id"):
        BatchState(out, files, {"plan_id": "p", "context_id": "d"})
    with pytest.raises(InputError, match="share a name"):
        list_inputs([ct / "img0.ckks", tmp_path / "ct" / ".." / "ct" / "img0.ckks"])


def test_more_memory_than_the_cluster_has(setup, local_ray, tmp_path):
    with pytest.raises(DistributedError, match="no Ray node has"):
        run_batch(setup["plan"], setup["keys"], setup["ct"], tmp_path / "out", workers=1, worker_memory_gb=10_000,
                  progress=False)


def test_ciphertext_of_another_key_set_fails_alone(setup, local_ray, tmp_path):
    from ckksnet.backend import CkksClient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        stranger = CkksClient("test")
    foreign = tmp_path / "foreign.ckks"
    foreign.write_bytes(ciphertext_to_bytes(stranger, stranger.encrypt(np.zeros(8), levels_left=3)))
    out = tmp_path / "out"
    report = run_batch(setup["plan"], setup["keys"], [setup["ct"] / "img1.ckks", foreign], out, progress=False)
    assert [r.status for r in report.results] == ["done", "failed"]
    assert "key set" in report.results[1].error


def test_scale_out_example(tmp_path):
    """examples/scale_out.sh end to end on a tiny ResNet checkpoint: 3 images over 2 local Ray
    workers, every encrypted prediction equal to the plaintext one; a rerun resumes (no image
    redone); a usage error exits 2."""
    from PIL import Image

    from tests.test_cli_flow import SIZE, _env, _tiny_checkpoint

    script = Path(__file__).resolve().parents[1] / "examples" / "scale_out.sh"
    ck = _tiny_checkpoint(tmp_path / "ck")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(20 + i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
            images / f"photo{i}.png")
    work = tmp_path / "work"
    args = ["bash", str(script), "test", str(ck), str(images), "2", str(work)]
    env = _env(USE_RAY="always")  # 3 images would run in one process: this is Ray's example
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "3 of 3 encrypted predictions equal plaintext"
    run = json.loads((work / "run.json").read_text())
    assert run["done"] == 3 and len(run["workers"]) == 2 and all(w["key_loads"] == 1 for w in run["workers"])
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and json.loads((work / "run.json").read_text())["resumed"] == 3
    # the same WORKDIR with another image set is refused, not mixed
    Image.fromarray(np.zeros((SIZE, SIZE, 3), dtype=np.uint8)).save(images / "photo1.png")
    other = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert other.returncode == 2 and "made for other inputs" in other.stderr
    usage = subprocess.run(["bash", str(script), "test", str(ck)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: examples/scale_out.sh" in usage.stderr
    bad = subprocess.run(["bash", str(script), "test", str(ck), str(images), "two"], capture_output=True, text=True)
    assert bad.returncode == 2 and "WORKERS must be a positive whole number" in bad.stderr


def test_serve_hands_its_queue_to_ray_workers(setup, tmp_path):
    """``ckksnet serve --ray --workers 2`` (a real server process on loopback with its own local
    Ray instance): uploaded keys, three jobs over two actors, outputs equal to the single-process
    results, and the server stops cleanly."""
    from ckksnet.deploy.remote import RemoteClient
    from tests.test_service import Served

    served = Served(setup["plan"], tmp_path / "state", tmp_path / "server.log").start("--ray", "--workers", "2")
    try:
        remote = RemoteClient(served.url)
        remote.upload_keys(setup["keys"])
        names = ["img0.ckks", "img1.ckks", "img2.ckks"]
        jobs = [remote.submit((setup["ct"] / n).read_bytes()) for n in names]
        finals = [remote.wait(job, progress=False, poll=0.2, timeout=600) for job in jobs]
        assert all(f["state"] == "done" for f in finals), finals
        client = setup["client"]
        for name, job in zip(names, jobs):
            logits = client.decrypt(ciphertext_from_bytes(client.keys, remote.result(job)))
            assert np.max(np.abs(logits - setup["single"][name])) < 1e-6
        remote.close()
    finally:
        served.stop()
    log = (tmp_path / "server.log").read_text()
    assert served.proc.returncode is not None
    assert "Traceback" not in log, log[-3000:]
