"""Threads that fit the machine (issue 38, item 1): the cores a process may use (affinity, cgroup
quota), the default from the load of other work, --threads / CKKSNET_THREADS precedence, refusals
naming the flag or variable, the oversubscription warning once, the threads in every report, and
OMP_NUM_THREADS set before OpenFHE loads (a fresh process)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from ckksnet.core import threads
from ckksnet.deploy.cli import COMPUTING, build_parser, main
from ckksnet.errors import CkksnetError

CLI = [sys.executable, "-m", "ckksnet.deploy.cli"]
pytestmark = [pytest.mark.filterwarnings("ignore:CKKS preset .test. is NOT secure"),
              pytest.mark.filterwarnings("ignore:the cleartext backend encrypts nothing")]
ENV_NAMES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", threads.ENV, threads.WAIT_ENV, threads._OMP_BY_US)


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    """No thread setting of the user's or of an earlier test; nothing applied to this process's
    OpenMP or torch (the rest of the suite runs in it); the environment restored afterwards."""
    saved = dict(os.environ)
    for name in ENV_NAMES:
        os.environ.pop(name, None)
    monkeypatch.setattr(threads, "_APPLIED", None)
    monkeypatch.setattr(threads, "_WARNED", False)
    monkeypatch.setattr(threads, "_backends", lambda: [])
    yield
    os.environ.clear()
    os.environ.update(saved)


def _machine(monkeypatch, cores: int, load: float) -> None:
    """A machine of ``cores`` usable cores whose other work makes a load of ``load``."""
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(threads, "own_load", lambda: 0.0)


def _fake_cgroups(monkeypatch, tmp_path, proc: str, files: dict[str, str], cpus: int = 8):
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(exist_ok=True)
    (tmp_path / "proc_cgroup").write_text(proc)
    monkeypatch.setattr(threads, "CGROUP_ROOT", root)
    monkeypatch.setattr(threads, "PROC_CGROUP", tmp_path / "proc_cgroup")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))


# ---------------------------------------------------------------- cores
def test_usable_cores_is_the_affinity_capped_by_a_cgroup_v2_quota(monkeypatch, tmp_path):
    _fake_cgroups(monkeypatch, tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert threads.usable_cores() == 8  # no quota: the affinity
    (tmp_path / "cgroup" / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit() == 1.5
    assert threads.usable_cores() == 1  # 1.5 cores: a second busy thread would be throttled
    (tmp_path / "cgroup" / "cpu.max").write_text("400000 100000\n")
    assert threads.usable_cores() == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert threads.usable_cores() == 2  # the affinity below the quota


def test_a_parent_cgroup_quota_limits_too(monkeypatch, tmp_path):
    _fake_cgroups(monkeypatch, tmp_path, "0::/jobs/mine\n",
                  {"jobs/cpu.max": "200000 100000", "jobs/mine/cpu.max": "max 100000"})
    assert threads.usable_cores() == 2


def test_usable_cores_reads_a_cgroup_v1_quota(monkeypatch, tmp_path):
    _fake_cgroups(monkeypatch, tmp_path, "4:cpu,cpuacct:/\n0::/\n",
                  {"cpu,cpuacct/cpu.cfs_quota_us": "300000", "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert threads.usable_cores() == 3
    (tmp_path / "cgroup" / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1")
    assert threads.usable_cores() == 8


# ---------------------------------------------------------------- the default
@pytest.mark.parametrize("cores, load, expected", [(2, 0.0, 2), (2, 0.4, 2), (2, 0.9, 1), (2, 5.0, 1),
                                                   (8, 3.2, 5), (8, 20.0, 1), (1, 0.0, 1)])
def test_the_default_is_the_free_cores(monkeypatch, cores, load, expected):
    _machine(monkeypatch, cores, load)
    choice = threads.choose_threads()
    assert (choice.threads, choice.source, choice.cores) == (expected, "default", cores)
    assert not choice.oversubscribed and not choice.warning


def test_this_process_does_not_count_as_other_work(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    monkeypatch.setattr(threads, "own_load", lambda: 1.0)  # the load is this process's own
    assert threads.default_threads() == 2


def test_own_load_of_a_fresh_process_is_small():
    out = subprocess.run([sys.executable, "-c", "from ckksnet.core.threads import own_load; print(own_load())"],
                         capture_output=True, text=True, check=True)
    assert 0.0 <= float(out.stdout) < 0.5


# ---------------------------------------------------------------- precedence and refusals
def test_the_flag_wins_over_the_variables_which_win_over_the_default(monkeypatch):
    _machine(monkeypatch, 4, 3.0)  # default 1
    assert threads.choose_threads().threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's (or Ray's)
    assert (threads.choose_threads().threads, threads.choose_threads().source) == (3, "OMP_NUM_THREADS")
    monkeypatch.setenv(threads.ENV, "2")
    assert (threads.choose_threads().threads, threads.choose_threads().source) == (2, threads.ENV)
    choice = threads.choose_threads("4", "--threads")
    assert (choice.threads, choice.source) == (4, "--threads")


def test_an_omp_num_threads_ckksnet_set_itself_is_not_a_user_choice(monkeypatch):
    _machine(monkeypatch, 2, 0.0)
    threads.apply(threads.choose_threads(1), warn=False)
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert threads.choose_threads().source == "default" and threads.choose_threads().threads == 2


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", ""])
def test_a_bad_flag_value_is_refused_naming_the_flag(value):
    if value == "":
        value = " "
    with pytest.raises(CkksnetError, match="--threads"):
        threads.choose_threads(value, "--threads")


def test_a_bad_variable_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv(threads.ENV, "lots")
    with pytest.raises(threads.ThreadsError, match="CKKSNET_THREADS"):
        threads.choose_threads()
    monkeypatch.delenv(threads.ENV)
    monkeypatch.setenv(threads.WAIT_ENV, "sometimes")
    with pytest.raises(CkksnetError, match="CKKSNET_OMP_WAIT_POLICY"):
        threads.choose_threads()


def test_the_cli_refuses_a_bad_count_in_one_line(capsys):
    assert main(["bootstrap", "--preset", "test", "--backend", "cleartext", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "ckksnet bootstrap: error: --threads 0" in err and "Traceback" not in err


def test_the_wait_policy_is_respected_and_settable(monkeypatch):
    _machine(monkeypatch, 2, 0.0)
    assert threads.choose_threads().wait_policy == threads.DEFAULT_WAIT_POLICY
    monkeypatch.setenv(threads.WAIT_ENV, "passive")
    choice = threads.apply(threads.choose_threads(), warn=False)
    assert choice.wait_policy == "passive" and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")  # the user's own setting wins
    assert threads.choose_threads().wait_policy == "active"


# ---------------------------------------------------------------- the warning, the reports
def test_oversubscription_is_said_once_with_the_figure_and_the_fix(monkeypatch, capsys):
    _machine(monkeypatch, 2, 5.0)
    assert main(["bootstrap", "--preset", "test", "--backend", "cleartext", "--threads", "2", "--json"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "threads beyond" in line]
    assert len(lines) == 1
    assert "load of 5.0" in lines[0] and "2 core(s)" in lines[0] and "use --threads 1" in lines[0]
    report = json.loads(captured.out)
    assert (report["threads"], report["cores"], report["load"]) == (2, 2, 5.0)
    threads.apply(threads.choose_threads(2))  # a second time in the same process: not again
    assert "threads beyond" not in capsys.readouterr().err


def test_more_threads_than_cores_is_said_even_on_an_idle_machine(monkeypatch):
    _machine(monkeypatch, 2, 0.0)
    choice = threads.choose_threads(4, "--threads")
    assert choice.threads == 4 and choice.oversubscribed
    assert "4 threads" in choice.warning and "2 core(s)" in choice.warning and "--threads 2" in choice.warning
    assert not threads.choose_threads(2, "--threads").warning


def test_the_text_report_says_the_threads(monkeypatch, capsys):
    _machine(monkeypatch, 2, 0.0)
    assert main(["bootstrap", "--preset", "test", "--backend", "cleartext", "--threads", "1"]) == 0
    assert "(max error 0.00e+00) (on 1 thread, 2 cores, load 0.0)" in capsys.readouterr().out


def test_every_command_that_computes_takes_threads():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("infer", "demo", "plan", "compile", "keygen", "encrypt", "run", "decrypt", "fidelity",
                 "bootstrap", "serve", "train", "eval", "predict"):
        assert name in COMPUTING
        options = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert "--threads" in options, name
    train = sub.choices["train"].parse_args([])
    assert train.threads is None  # the shared default rule, no longer "every core"


def test_torch_commands_set_torch_threads(monkeypatch):
    torch = pytest.importorskip("torch")
    from ckksnet.deploy import cli

    _machine(monkeypatch, 2, 0.0)
    before = torch.get_num_threads()
    try:
        args = argparse.Namespace(command="predict", threads="1")
        cli._apply_threads(args)
        assert args.threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_set_threads_from_python(monkeypatch):
    import ckksnet

    _machine(monkeypatch, 4, 1.0)
    choice = ckksnet.set_threads()
    assert (choice.threads, choice.source) == (3, "default") and os.environ["OMP_NUM_THREADS"] == "3"
    choice = ckksnet.set_threads(1)
    assert (choice.threads, choice.source) == (1, "set_threads") and os.environ["OMP_NUM_THREADS"] == "1"
    assert threads.report_fields()["threads"] == 1
    with pytest.raises(CkksnetError, match="set_threads"):
        ckksnet.set_threads(0)


def test_the_openfhe_backend_sets_the_loaded_openmp_runtime():
    """In a fresh process (this one's OpenMP is the suite's): OpenFHE loaded with 2 threads, then
    set to 1 through ctypes on the libgomp it uses."""
    code = ("import openfhe; from ckksnet.core.backend import get_backend; b = get_backend('openfhe'); "
            "r0 = b.thread_report(); b.set_threads(1); r1 = b.thread_report(); "
            "import json; print(json.dumps([r0, r1]))")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    r0, r1 = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                       check=True).stdout)
    assert "libgomp" in r0["openmp_library"] or "omp" in r0["openmp_library"]
    assert (r0["openmp_threads"], r1["openmp_threads"], r1["openmp_threads_at_load"]) == (2, 1, 2)


def test_bootstrap_json_reports_the_threads_openfhe_loaded_with():
    """`ckksnet bootstrap --preset test --threads 1 --json` in a fresh process whose environment
    says OMP_NUM_THREADS=2: the JSON reports 1 thread, and libgomp read 1 when it loaded (the
    flag was applied before OpenFHE loaded, not only afterwards)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop(threads.ENV, None)
    out = subprocess.run(CLI + ["bootstrap", "--preset", "test", "--threads", "1", "--json"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["threads"], report["threads_source"]) == (1, "--threads")
    assert report["cores"] >= 1 and report["load"] >= 0
    assert report["openmp_threads"] == 1 and report["openmp_threads_at_load"] == 1


def test_serve_workers_share_the_free_cores(monkeypatch):
    _machine(monkeypatch, 8, 0.0)
    choice = threads.choose_threads(processes=4)
    assert (choice.threads, choice.processes) == (2, 4) and not choice.warning
    choice = threads.choose_threads(4, "--threads", processes=4)  # 16 threads on 8 cores
    assert choice.oversubscribed and "x 4 processes" in choice.warning and "--threads 2" in choice.warning


def test_a_script_gets_the_thread_rule_when_openfhe_loads():
    """A script that never calls set_threads (the examples, a notebook): when ckksnet first loads
    OpenFHE it applies the thread rule, so $CKKSNET_THREADS and passive waiting hold there too
    (before, such a script ran with OpenMP's one busy-waiting thread per core: 12x slower beside
    other work). Fresh process; the key set is made, so OpenFHE really computed."""
    code = ("import json, os, warnings; warnings.simplefilter('ignore'); import numpy as np, torch, ckksnet; "
            "from ckksnet.core import threads; from ckksnet.core.backend import get_backend; "
            "m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(32, 2)); "
            "net = ckksnet.compile(m.eval(), calibration=np.random.default_rng(0).uniform(0, 1, (4, 1, 4, 4)).astype(np.float32), "
            "input_shape=(1, 4, 4), preset='test'); c = ckksnet.Client(net); "
            "print(json.dumps([threads.current().to_dict(), get_backend('openfhe').thread_report(), "
            "os.environ.get('OMP_WAIT_POLICY')]))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env[threads.ENV] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    choice, report, policy = json.loads(out.stdout.strip().splitlines()[-1])
    assert (choice["threads"], choice["threads_source"]) == (1, threads.ENV)
    # the computing thread's OpenMP threads; OMP_WAIT_POLICY was set at `import ckksnet`, before
    # torch loaded libgomp (the one OpenFHE uses)
    assert report["openmp_threads"] == 1 and policy == "PASSIVE"
