"""How many threads (OpenMP for OpenFHE, intra-op for torch) this process should use.

OpenFHE parallelises with OpenMP, whose default is one thread per core. When other work shares
the cores, those threads wait on each other (OpenMP's waiting threads spin): on a 2-core machine
with a load of about 5, one test-preset bootstrap took 1.7-1.9 s with 1 thread and 7-8 s with 2.
Threads beyond the cores that are free make OpenFHE 4-30x slower, so the default is the free
cores, not every core.

The rule (:func:`default_threads`)::

    cores  = usable_cores()   # CPU affinity, capped by a cgroup CPU quota (floor, at least 1)
    others = 1-minute load average - what this process itself added to it (never below 0)
    threads = min(cores, max(1, cores - round(others)))

A choice comes from, in this order: the ``--threads`` flag (or ``ckksnet.set_threads(n)``),
``$CKKSNET_THREADS``, ``$OMP_NUM_THREADS`` when the user set it (Ray sets it per worker), the
default above. It is applied before OpenFHE loads (``OMP_NUM_THREADS``, which libgomp reads when
it loads) and afterwards through the backend (:meth:`ckksnet.core.backend.Backend.set_threads`).
``$OMP_WAIT_POLICY`` (``active``/``passive``) is respected when set; ``$CKKSNET_OMP_WAIT_POLICY``
sets it for ckksnet alone (``benchmarks/threads.py`` measures which is faster under load).

Standard library only: the CLI imports this before torch or OpenFHE.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ckksnet.errors import InputError

ENV = "CKKSNET_THREADS"  #: threads for every ckksnet process (the --threads flag wins)
WAIT_ENV = "CKKSNET_OMP_WAIT_POLICY"  #: OMP_WAIT_POLICY for ckksnet (active / passive)
WAIT_POLICIES = ("active", "passive")
#: OMP_WAIT_POLICY set when neither it nor CKKSNET_OMP_WAIT_POLICY is. Measured by benchmarks/threads.py
#: (2026-12-07, 2 cores, RESULTS "Threads"): with 2 busy processes beside it a 2-thread bootstrap took
#: 5.01 s active, 3.17 s unset, 1.36 s passive (1 thread: 1.2-1.3 s); alone, passive cost 9% (0.60 vs 0.55 s)
DEFAULT_WAIT_POLICY: str | None = "passive"

CGROUP_ROOT = Path("/sys/fs/cgroup")  #: where cgroup file systems are mounted (tests point it elsewhere)
PROC_CGROUP = Path("/proc/self/cgroup")  #: this process's cgroups


class ThreadsError(InputError):
    """A thread count that is not a whole number >= 1 (the message names the flag or variable)."""


# ---------------------------------------------------------------- what the process may use
def affinity_cores() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where absent)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _own_cgroups() -> dict[str, str]:
    """controller (``""`` for cgroup v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    for line in (_read(PROC_CGROUP) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                out[controller] = parts[2]
    return out


def _folders(mount: Path, own: str | None) -> list[Path]:
    """The process's cgroup folder under ``mount`` and its ancestors up to ``mount`` (a parent's
    quota limits its children too); ``mount`` alone where the path is not visible (containers)."""
    if own and own != "/":
        leaf = mount / own.lstrip("/")
        if leaf.is_dir():
            return [leaf, *[p for p in leaf.parents if p == mount or mount in p.parents]]
    return [mount]


def cgroup_cpu_limit() -> float | None:
    """The CPU quota of this process's cgroups in cores (quota / period; the smallest along the
    hierarchy), or None without one. cgroup v2 ``cpu.max`` (``"max 100000"`` = none), cgroup v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1 = none)."""
    own = _own_cgroups()
    limits: list[float] = []
    for folder in _folders(CGROUP_ROOT, own.get("")):  # v2
        text = _read(folder / "cpu.max")
        if text:
            quota, _, period = text.partition(" ")
            if quota != "max":
                try:
                    limits.append(int(quota) / int(period or 100000))
                except (ValueError, ZeroDivisionError):
                    pass
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):  # v1
        mount = CGROUP_ROOT / name
        if not mount.is_dir():
            continue
        for folder in _folders(mount, own.get("cpu")):
            quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            try:
                if quota and period and int(quota) > 0 and int(period) > 0:
                    limits.append(int(quota) / int(period))
            except ValueError:
                pass
    return min(limits) if limits else None


def usable_cores() -> int:
    """Cores this process may really use: its CPU affinity, capped by a cgroup CPU quota rounded
    down (a quota of 1.5 cores throttles a second busy thread), at least 1."""
    cores = affinity_cores()
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota + 1e-9)))
    return cores


def own_load() -> float:
    """What this process has added to the 1-minute load average, estimated: its average number
    of busy threads (CPU time / age) times the weight the average gives a process of that age
    (1 - exp(-age / 60 s)). About 0 for a command just started."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as f:
            start = int(f.read().rpartition(")")[2].split()[19]) / ticks
        with open("/proc/uptime") as f:
            age = float(f.read().split()[0]) - start
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0
    if age <= 0:
        return 0.0
    cpu = sum(os.times()[:2])
    return min(cpu / age, float(affinity_cores())) * (1.0 - math.exp(-age / 60.0))


def other_load() -> float:
    """The 1-minute load average less :func:`own_load` (never below 0); 0 where unknown."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return 0.0
    return max(0.0, load - own_load())


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """The free cores: ``min(cores, max(1, cores - round(load)))`` with ``cores`` =
    :func:`usable_cores` and ``load`` = :func:`other_load` (the load of other work at start)."""
    cores = usable_cores() if cores is None else cores
    load = other_load() if load is None else load
    return min(cores, max(1, cores - round(load)))


# ---------------------------------------------------------------- a choice
@dataclass(frozen=True)
class ThreadChoice:
    """The threads chosen, and why. ``source``: ``--threads``, ``set_threads``, ``CKKSNET_THREADS``,
    ``OMP_NUM_THREADS`` or ``default``; ``load``: other work's load at the time;
    ``oversubscribed``: threads + that load exceed the cores (each thread then waits for others);
    ``warning``: one line with the figures and the fix when oversubscribed or threads > cores,
    else ``""``."""

    threads: int
    cores: int
    load: float
    source: str
    oversubscribed: bool
    warning: str = ""
    wait_policy: str | None = None
    processes: int = 1  #: processes computing with ``threads`` each (``serve --workers``)

    def to_dict(self) -> dict:
        """The fields reports carry: threads, cores, load, source, wait policy."""
        d = asdict(self)
        out = {"threads": d["threads"], "cores": d["cores"], "load": d["load"], "threads_source": d["source"],
               "omp_wait_policy": d["wait_policy"]}
        if self.processes > 1:
            out["processes"] = self.processes
        return out

    def text(self) -> str:
        """'1 thread, 2 cores, load 5.4' for one-line reports."""
        return (f"{self.threads} thread{'s' if self.threads != 1 else ''}, {self.cores} "
                f"core{'s' if self.cores != 1 else ''}, load {self.load:.1f}")


def parse_threads(value, where: str) -> int:
    """``value`` (int or text) as a thread count >= 1, or :class:`ThreadsError` naming ``where``."""
    text = str(value).strip()
    sep = "" if where.endswith("=") else " "
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        n = int(value) if isinstance(value, (int, float)) else int(text)
    except (TypeError, ValueError):
        raise ThreadsError(f"{where}{sep}{text!r}: a thread count is a whole number, 1 or more "
                           f"(e.g. {where}{sep}1)") from None
    if n < 1:
        raise ThreadsError(f"{where}{sep}{text}: a thread count is 1 or more (this process may use "
                           f"{usable_cores()} core(s))")
    return n


def wait_policy() -> str | None:
    """The OpenMP wait policy in force for ckksnet: ``$OMP_WAIT_POLICY`` if set, else
    ``$CKKSNET_OMP_WAIT_POLICY``, else :data:`DEFAULT_WAIT_POLICY` (validated: a
    :class:`ThreadsError` names the variable)."""
    for name in ("OMP_WAIT_POLICY", WAIT_ENV):
        value = os.environ.get(name, "").strip()
        if value:
            if name == WAIT_ENV and value.lower() not in WAIT_POLICIES:
                raise ThreadsError(f"{WAIT_ENV}={value!r}: expected one of {', '.join(WAIT_POLICIES)}")
            return value.lower()
    return DEFAULT_WAIT_POLICY


def choose_threads(requested: int | str | None = None, flag: str = "--threads", processes: int = 1) -> ThreadChoice:
    """The threads to use: ``requested`` (the ``flag`` given, e.g. ``--threads``), else
    ``$CKKSNET_THREADS``, else ``$OMP_NUM_THREADS`` if set, else :func:`default_threads`. A bad
    value raises :class:`ThreadsError` naming where it came from. ``processes``: processes that
    each compute with that many threads at once (``serve --workers``): the default shares the
    free cores among them, and the warning counts them all."""
    cores, load = usable_cores(), round(other_load(), 2)
    processes = max(1, int(processes))
    if requested is not None:
        threads, source = parse_threads(requested, flag), flag
    elif os.environ.get(ENV, "").strip():
        threads, source = parse_threads(os.environ[ENV], f"{ENV}="), ENV
    elif os.environ.get("OMP_NUM_THREADS", "").strip() and _user_omp():
        threads, source = parse_threads(os.environ["OMP_NUM_THREADS"].split(",")[0], "OMP_NUM_THREADS="), \
            "OMP_NUM_THREADS"
    else:
        threads, source = max(1, default_threads(cores, load) // processes), "default"
    total = threads * processes
    oversubscribed = total + round(load) > cores and total > 1
    free = max(1, (cores - round(load)) // processes)
    fix = {"set_threads": f"ckksnet.set_threads({free})", ENV: f"{ENV}={free}",
           "OMP_NUM_THREADS": f"OMP_NUM_THREADS={free}"}.get(source, f"{flag} {free}")
    asked = f"{threads} threads ({source})" + (f" x {processes} processes" if processes > 1 else "")
    warning = ""
    if total > cores:
        warning = (f"{asked} but this process may use {cores} core(s): threads beyond the cores make OpenFHE "
                   f"4-30x slower; use {fix}")
    elif oversubscribed:
        warning = (f"{asked} on {cores} core(s) with a load of {load:.1f} from other work: threads beyond the free "
                   f"cores make OpenFHE 4-30x slower; use {fix}")
    return ThreadChoice(threads, cores, load, source, oversubscribed or total > cores, warning, wait_policy(),
                        processes)


# ---------------------------------------------------------------- applying it
_APPLIED: ThreadChoice | None = None
_WARNED = False
_OMP_BY_US = "_CKKSNET_OMP_SET"  # marks an OMP_NUM_THREADS that ckksnet set (not the user's choice)


def _user_omp() -> bool:
    """Whether $OMP_NUM_THREADS was set by the user (or Ray), not by ckksnet in this process."""
    return os.environ.get(_OMP_BY_US) != os.environ.get("OMP_NUM_THREADS")


def apply(choice: ThreadChoice, warn: bool = True, torch: bool = True) -> ThreadChoice:
    """Use ``choice`` from now on: ``OMP_NUM_THREADS`` (and ``OMP_WAIT_POLICY`` where chosen) for
    OpenMP not loaded yet and for child processes; a loaded OpenFHE backend through
    :meth:`~ckksnet.core.backend.Backend.set_threads`; a loaded torch through
    ``torch.set_num_threads`` (unless ``torch`` is False). Prints ``choice.warning`` once per
    process (stderr)."""
    global _APPLIED, _WARNED
    os.environ["OMP_NUM_THREADS"] = os.environ[_OMP_BY_US] = str(choice.threads)
    if choice.wait_policy and not os.environ.get("OMP_WAIT_POLICY"):
        os.environ["OMP_WAIT_POLICY"] = choice.wait_policy.upper()  # read once, when libgomp loads
    for backend in _backends():
        backend.set_threads(choice.threads)
    if torch and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(choice.threads)
    _APPLIED = choice
    if warn and choice.warning and not _WARNED:
        _WARNED = True
        print(f"ckksnet: warning: {choice.warning}", file=sys.stderr, flush=True)
    return choice


def preset_wait_policy() -> None:
    """At ``import ckksnet``: ``OMP_WAIT_POLICY`` (unless set) while no OpenMP is loaded yet.
    libgomp reads it once, when it loads, and torch, imported later, loads the very libgomp that
    OpenFHE then uses; so a script's ``import ckksnet`` before ``import torch`` gets passive
    waiting (imported after torch, only the thread count can still be set)."""
    if os.environ.get("OMP_WAIT_POLICY") or "torch" in sys.modules or "openfhe" in sys.modules:
        return
    try:
        policy = wait_policy()
    except ThreadsError:
        return  # said when the threads are applied
    if policy:
        os.environ["OMP_WAIT_POLICY"] = policy.upper()


def ensure_applied() -> ThreadChoice:
    """The choice applied in this process; where none was yet (a script or notebook), the default
    rule (:func:`choose_threads`) applied now, for OpenMP only (a loaded torch keeps the user's
    threads). Called right before OpenFHE loads (``ckksnet.backend.ofhe``)."""
    return _APPLIED if _APPLIED is not None else apply(choose_threads(), torch=False)


def set_threads(n: int | None = None) -> ThreadChoice:
    """Threads for OpenFHE (and torch, where loaded) in this process, for notebooks and scripts:
    ``n``, else the default rule (``$CKKSNET_THREADS``, ...). Returns the :class:`ThreadChoice`;
    prints its warning once when the machine is oversubscribed."""
    return apply(choose_threads(n, "set_threads") if n is not None else choose_threads())


def current() -> ThreadChoice:
    """The choice applied in this process, else what :func:`choose_threads` would choose now."""
    return _APPLIED if _APPLIED is not None else choose_threads()


def _backends() -> list:
    """The backends loaded in this process (none imported here: a backend not loaded yet reads
    ``OMP_NUM_THREADS`` when it loads). OpenFHE imported directly counts as loaded."""
    if "ckksnet.core.backend" not in sys.modules and "openfhe" not in sys.modules:
        return []
    from ckksnet.core.backend import get_backend, loaded_backends

    if "openfhe" in sys.modules:
        get_backend("openfhe")  # registers it (its module loads no OpenFHE of its own)
    return loaded_backends()


def report_fields() -> dict:
    """``threads``, ``cores``, ``load``, ``threads_source``, ``omp_wait_policy`` for a report,
    and what each loaded backend's threading library says (e.g. ``openmp_threads``)."""
    fields = current().to_dict()
    for backend in _backends():
        fields.update(backend.thread_report())
    return fields
