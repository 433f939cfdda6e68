"""What a user hits first on the command line (issue #30): outputs checked before any work, one-line
warnings, a closed pipe, query options on either side of the action, readable job status, worker
cores clamped, stratified subsets."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from ckksnet.data import Split
from ckksnet.deploy.cli import build_parser, main

CLI = [sys.executable, "-m", "ckksnet.deploy.cli"]


def test_run_refuses_an_output_it_could_not_write_before_any_work(tmp_path, capsys):
    """No plan, no keys are read: the missing folder is named at once (a secure run would have
    computed for 15-25 minutes first)."""
    t0 = time.perf_counter()
    rc = main(["run", "--plan", str(tmp_path / "none.ckksnet"), "--eval-keys", str(tmp_path / "none"),
               "--in", str(tmp_path / "in.ckks"), "--out", str(tmp_path / "missing" / "x.ckks")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist (create it first)" in err and "missing" in err
    assert time.perf_counter() - t0 < 60  # milliseconds; a secure run would compute for minutes first
    (tmp_path / "d").mkdir()
    assert main(["run", "--plan", "p", "--eval-keys", "k", "--in", "i.ckks", "--out", str(tmp_path / "d")]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_warnings_are_one_line_and_a_closed_pipe_is_no_error():
    """`ckksnet approx relu --json | head -1`: exit 0 and no BrokenPipeError traceback; the test
    preset's insecurity warning is one line without Python source."""
    proc = subprocess.Popen(CLI + ["approx", "relu", "--alpha", "8", "--points", "2000", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # the reader leaves after one line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err
    out = subprocess.run(CLI + ["bootstrap", "--preset", "test", "--json"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "NOT secure" in ln]
    assert lines and all(ln.startswith("ckksnet: warning: CKKS preset 'test' is NOT secure") for ln in lines)
    assert "warnings.warn" not in out.stderr and ".py:" not in out.stderr


def test_query_connection_options_go_before_or_after_the_action():
    parser = build_parser()
    before = parser.parse_args(["query", "--url", "http://h:1", "--token", "T", "status", "J"])
    after = parser.parse_args(["query", "--url", "http://h:1", "status", "J", "--token", "T", "--keyset-id", "K"])
    assert before.token == after.token == "T" and after.keyset_id == "K" and after.job == "J"
    neither = parser.parse_args(["query", "--url", "http://h:1", "--token", "T", "status", "J"])
    assert neither.token == "T"  # an action's unset options never overwrite the ones before it


def test_job_status_gives_utc_times_and_an_eta():
    from ckksnet.deploy.service_cli import readable_job

    now = time.time()
    view = readable_job({"id": "j", "state": "running", "step": 11, "steps": 51, "created": now - 120,
                         "started": now - 100, "finished": None})
    assert view["created_utc"].endswith("+00:00") and "finished_utc" not in view
    assert 99 <= view["elapsed_seconds"] <= 160  # 100 s, plus however long this process waited for a core
    assert view["eta_seconds"] == pytest.approx(view["elapsed_seconds"] / 10 * 41, rel=0.01)
    assert "eta_seconds" not in readable_job({"id": "j", "state": "queued", "created": now})


def test_worker_cores_beyond_the_machine_are_clamped_with_a_warning():
    import os

    from ckksnet.deploy.distributed.driver import local_worker_cpus

    cores = len(os.sched_getaffinity(0))
    with pytest.warns(RuntimeWarning, match="OpenMP threads beyond the free cores"):
        assert local_worker_cpus(64 * cores, None) == cores
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert local_worker_cpus(1, None) == 1
        assert local_worker_cpus(64, "head:6379") == 64  # a cluster's nodes declare their own CPUs


def test_a_limited_evaluation_takes_every_class():
    labels = np.repeat(np.arange(10), 100)  # class-sorted, as the CIFAR-10 copies are
    split = Split(np.zeros((1000, 2, 2, 3), np.uint8), labels.astype(np.int64), tuple("abcdefghij"), "sorted")
    sub = split.stratified(50)
    assert len(sub) == 50 and np.bincount(sub.labels, minlength=10).tolist() == [5] * 10
    assert split.subset(50).labels.tolist() == [0] * 50  # the prefix: why eval --limit does not use it


def _cifar_example(*args: str) -> subprocess.CompletedProcess:
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "encrypted_cifar.py"
    # ~100 s on one loaded core: the timeout catches a hang, not a loaded machine
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=1200)


def test_the_cifar_example_with_an_unknown_preset_ends_in_one_clear_line():
    out = _cifar_example("--preset", "tset")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unknown preset 'tset'" in out.stderr


@pytest.mark.slow
def test_the_cifar_example_runs_at_the_test_preset_on_image_centres():
    """ResNet-20 on the 8x8 centre of official image 0: about 100 s on one loaded core."""
    out = _cifar_example("--preset", "test", "--images", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "each image's 8x8 centre" in out.stdout
    assert out.stderr.count("warning: CKKS preset 'test' is NOT secure") == 1 and "preset = " not in out.stderr
    match = re.search(r"image 0: label 3 \(cat\), plaintext (\d) \(\w+\), encrypted (\d) \(\w+\), "
                      r"max \|logit diff\| (\S+),", out.stdout)  # class names where known (issue 38)
    assert match and match[1] == match[2] and float(match[3]) < 1e-2, out.stdout


def test_resize_centre_crops_by_default_and_stretches_on_request(tmp_path):
    from PIL import Image

    from ckksnet.imagefile import read_image

    bands = np.zeros((32, 96, 3), np.uint8)  # red | green | blue, 32 pixels wide each
    bands[:, :32, 0] = bands[:, 32:64, 1] = bands[:, 64:, 2] = 255
    Image.fromarray(bands).save(tmp_path / "wide.png")
    crop, note = read_image(tmp_path / "wide.png", 3, 8, 8, resize=True)
    assert "centre-cropped" in note and np.all(crop[:, :, 1] > 200) and np.all(crop[:, :, [0, 2]] < 60)
    stretch, note = read_image(tmp_path / "wide.png", 3, 8, 8, resize="stretch")
    assert "stretched" in note and stretch[:, 0, 0].min() > 200 and stretch[:, -1, 2].min() > 200
    Image.fromarray(bands[:, :32]).save(tmp_path / "square.png")  # same aspect: nothing is cropped
    _, note = read_image(tmp_path / "square.png", 3, 8, 8, resize=True)
    assert "resized from 32x32 to 8x8" in note and "centre-cropped" not in note


def test_training_threads_beyond_the_machine_are_clamped_with_a_warning():
    import os

    from ckksnet.training.train import usable_threads

    cores = len(os.sched_getaffinity(0))
    with pytest.warns(RuntimeWarning, match=f"--threads {8 * cores} exceeds the {cores} core"):
        assert usable_threads(8 * cores) == cores
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a setting the machine holds passes silently
        assert usable_threads(1) == 1


def test_eval_with_a_limit_says_its_subset_is_stratified(capsys):
    """`ckksnet eval --limit` on the 20 official images: the report names the stratified subset."""
    assert main(["eval", "--data", "foolbox", "--limit", "10"]) == 0
    text = capsys.readouterr().out
    assert "on 10 images of" in text and "(a stratified subset: each class in turn)" in text
    assert main(["eval", "--data", "foolbox", "--limit", "10", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 10 and report["subset"].startswith("stratified")
