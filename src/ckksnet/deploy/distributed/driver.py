"""The batch driver: fans ciphertext files out to Ray actors, each an :class:`InferenceWorker`.

What is shipped where (and why):

* the **server plan** and the **evaluation keys** go by *path*: every worker loads them from a
  folder its node can read (the same path on a shared file system, or copied to each machine).
  At the secure preset the key files are 7.8 GiB on disk (about 11 GiB once loaded); passed
  through Ray's object store they would occupy that store (by default 30% of a node's memory)
  once per node on top of the 13 GiB a worker holds, and a worker would still copy them into
  OpenFHE. A path costs nothing to ship and is read once per worker;
* each **ciphertext** goes by value (its bytes through the object store: 1.7 MiB at the test
  preset, 22 MiB at the secure preset's input level), and each output ciphertext
  comes back the same way: the driver alone writes ``OUT``, so workers need no shared output
  folder.

Memory: each actor declares ``memory=`` to Ray (by default 1.7 x the key folder's size on disk
+ 0.5 GiB: a secure worker measured 12.3 GiB after loading 7.8 GiB of key files, 13.1 GiB at
its peak), so Ray never places two secure workers on a machine that fits one. Each actor also
declares ``num_cpus`` and gets ``OMP_NUM_THREADS`` of the same value, so OpenMP threads of
several workers do not spin against each other on one machine's cores.

Faults: an actor that dies (killed, out of memory, its node gone) costs only the image it was
running, which is sent again to another worker (``retries`` times at most), and a new actor
takes its place. An image the worker refuses (a corrupt ciphertext, one of another key set)
fails alone, with the worker's error, and the batch goes on.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ckksnet.core.artifact import plan_id as compute_plan_id
from ckksnet.core.threads import affinity_cores
from ckksnet.deploy import engine
from ckksnet.deploy.distributed.batch import BatchReport, BatchState, list_inputs
from ckksnet.deploy.distributed.local import keyset_error, run_here
from ckksnet.deploy.distributed.runner import Runner, check_use_ray, choose_runner
from ckksnet.deploy.distributed.worker import InferenceWorker, say_warnings
from ckksnet.errors import CkksnetError

#: the logger of Ray's notice that a new local instance uses token authentication
_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"

#: seconds to wait for a first worker before giving up (a secure worker loads its keys in ~1 min;
#: a worker Ray cannot place, for want of memory or CPUs, never starts)
START_TIMEOUT_S = 1800.0


class DistributedError(CkksnetError):
    """Ray is missing, a cluster cannot hold one worker, or no worker could start."""


@dataclass
class _Slot:
    """One actor and what the driver knows of it."""

    name: str
    actor: object
    ready: object  # the future of its first info() call: resolves once the keys are loaded
    info: dict = field(default_factory=dict)
    started: float = 0.0
    images: int = 0
    died: bool = False


@dataclass
class _Task:
    path: Path
    attempts: int = 0


def worker_memory_gib(key_bytes: int, backend: str) -> float:
    """Memory to declare per worker (GiB) for an evaluation-key folder of ``key_bytes`` of
    ``backend``: what loading it needs (checked again in the worker)."""
    return engine.load_memory_gib(key_bytes, backend)


def worker_actor_class(ray, memory_gib: float, cpus: int):
    """:class:`InferenceWorker` as a Ray actor class declaring ``memory_gib`` GiB and ``cpus``
    CPUs, with as many OpenMP threads; never restarted by Ray (the caller replaces a dead one)."""
    return ray.remote(InferenceWorker).options(
        num_cpus=cpus, memory=int(memory_gib * 2**30), max_restarts=0, max_task_retries=0,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": str(cpus)}})


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise DistributedError("ckksnet.deploy.distributed needs Ray: pip install 'ckksnet[ray]' (or ray)") from exc
    return ray


def run_batch(plan: str | os.PathLike, eval_keys: str | os.PathLike, inputs, out_dir: str | os.PathLike,
              workers: int = 1, address: str | None = None, worker_memory_gb: float | None = None,
              worker_cpus: int = 1, retries: int = 2, progress: bool = True,
              on_event: Callable[..., None] | None = None, use_ray: str = "auto") -> BatchReport:
    """Run the server plan ``plan`` (``server_plan.ckksnet``) with the evaluation keys in
    ``eval_keys`` (``KEYDIR/eval``) on every ciphertext of ``inputs`` (a folder of ``.ckks``
    files or a list of them) over ``workers`` Ray actors, or in this process when Ray would not
    pay (``use_ray``); outputs go to ``out_dir`` (layout and resumption:
    :mod:`ckksnet.deploy.distributed.batch`).

    ``address``: a Ray cluster to join (``"auto"``, ``"HOST:6379"``); None starts a local Ray
    instance (and stops it at the end) unless this process is already connected to one.
    ``worker_memory_gb``: memory each worker declares to Ray (default
    :func:`worker_memory_gib` of the key folder); fewer workers start, with a warning, if the
    cluster's nodes hold fewer. ``retries``: times an image is sent again after its worker died.
    ``use_ray``: ``auto`` starts Ray only when its workers finish sooner than this process alone
    despite its start-up, else the images run here one after another (:mod:`.runner`);
    ``always`` / ``never`` force it. ``on_event(kind, **fields)``: ``runner`` (ray, reason),
    ``worker_ready`` (worker, pid, load_seconds), ``started`` (image, worker, pid), ``done`` /
    ``failed`` (image, worker, ...), ``worker_died`` (worker, image).

    Returns a :class:`BatchReport` (per image in input order, per worker: key loads, images,
    seconds, memory; which runner and why). Raises :class:`ckksnet.InputError` for bad inputs,
    :class:`.runner.RunnerOptionError` for a ``use_ray`` the other options contradict,
    :class:`ckksnet.SerializationError` for a bad plan or key folder, :class:`DistributedError`
    when no worker can start, ``KeyboardInterrupt`` untouched (results so far are kept).
    """
    if workers < 1 or worker_cpus < 1 or retries < 0:
        raise CkksnetError("workers and worker_cpus must be >= 1, retries >= 0")
    if worker_memory_gb is not None and not (math.isfinite(worker_memory_gb) and worker_memory_gb > 0):
        raise CkksnetError(f"worker_memory_gb (--worker-memory) must be a positive number of GiB, got {worker_memory_gb}")
    check_use_ray(use_ray, workers, address)
    t0 = time.monotonic()
    emit = on_event or (lambda kind, **fields: None)
    loaded = engine.load_plan(plan)
    backend, seconds = loaded.backend, loaded.schedule.seconds
    context_id, preset, key_bytes = engine.bundle_identity(eval_keys, backend)
    if preset.name != loaded.preset.name:
        raise CkksnetError(f"the keys are for preset {preset.name!r}, the plan for {loaded.preset.name!r}")
    files = list_inputs(inputs)
    state = BatchState(out_dir, files, {"plan_id": compute_plan_id(loaded), "context_id": context_id})
    del loaded
    todo = state.pending()
    if not todo:
        return _ran(state.report(), Runner(False, "every image was done by an earlier run"), t0)
    runner = choose_runner(use_ray, len(todo), workers, worker_cpus, address, seconds)
    emit("runner", ray=runner.ray, reason=runner.reason)
    if not runner.ray:
        return _ran(run_here(state, Path(plan).resolve(), Path(eval_keys).resolve(), context_id, todo, progress,
                             emit), runner, t0)
    memory = worker_memory_gb if worker_memory_gb is not None else worker_memory_gib(key_bytes, backend)
    worker_cpus = local_worker_cpus(worker_cpus, address)
    run = _Run(state, Path(plan).resolve(), Path(eval_keys).resolve(), memory, worker_cpus, retries, context_id, emit)
    ray = import_ray()
    started_ray = connect_ray(ray, address, workers * worker_cpus)
    try:
        count = _workers_that_fit(ray, workers, memory, worker_cpus)
        report = run.execute(ray, todo, count, progress)
    finally:
        run.stop(ray)
        if started_ray:
            ray.shutdown()
    return _ran(report, runner, t0)


def _ran(report: BatchReport, runner: Runner, t0: float) -> BatchReport:
    report.runner, report.runner_reason = runner.name, runner.reason
    report.seconds = time.monotonic() - t0
    return report


def connect_ray(ray, address: str | None, cpus: int) -> bool:
    """Join ``address`` (or ``$RAY_ADDRESS``, which Ray itself would follow), or start a local
    instance; True when this call connected or started Ray (and should shut it down).
    Raises :class:`DistributedError` when the cluster cannot be reached."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = {"OMP_NUM_THREADS": "1"}  # the default for tasks; actors set their own
    try:
        if address:
            _check_reachable(address)
            ray.init(address=address, logging_level="warning", runtime_env={"env_vars": env})
            return True
        # Ray >= 2.5x tells every new local instance, raw on the user's terminal, that it enabled
        # its default (token authentication): nothing to act on here. (Setting RAY_AUTH_MODE
        # instead breaks ray.init once Ray's config was read at import.)
        logging.getLogger(_RAY_AUTH_LOGGER).setLevel(logging.ERROR)
        # Ray runs its workers at nice 15 by default (its own daemons first); here the workers are
        # the work, and at nice 15 any other process on the machine starved them 20-fold (measured)
        ray.init(num_cpus=max(os.cpu_count() or 1, cpus), include_dashboard=False, logging_level="warning",
                 object_store_memory=512 * 2**20, runtime_env={"env_vars": env},
                 _system_config={"worker_niceness": 0})
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise DistributedError(f"cannot use {where}: {exc}") from exc
    return True


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", "local", ray:// URLs: Ray resolves them
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise DistributedError(f"no Ray cluster answers at {address} ({exc}); start one with "
                               f"`ray start --head --port {port}`") from exc


def local_worker_cpus(cpus: int, address: str | None) -> int:
    """``cpus`` per worker, clamped with a warning to this machine's cores when the run starts a
    local Ray instance: OpenMP threads beyond the free cores make OpenFHE 5-30x slower. (A
    cluster's nodes declare their own CPUs, which the placement already respects.)"""
    if address is not None or os.environ.get("RAY_ADDRESS"):
        return cpus
    cores = affinity_cores()
    if cpus > cores:
        warnings.warn(f"--worker-cpus {cpus} exceeds this machine's {cores} core(s): OpenMP threads beyond the "
                      f"free cores make OpenFHE 5-30x slower; each worker gets {cores}", RuntimeWarning, stacklevel=3)
        return cores
    return cpus


def _workers_that_fit(ray, wanted: int, memory_gib: float, cpus: int = 1) -> int:
    """How many workers of ``memory_gib`` and ``cpus`` the alive nodes hold (at most ``wanted``)."""
    need = memory_gib * 2**30
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    fit = sum(min(int(res.get("memory", 0) // need), int(res.get("CPU", 0) // cpus)) for res in nodes)
    if fit == 0:
        memory = max((res.get("memory", 0) for res in nodes), default=0) / 2**30
        most = max((res.get("CPU", 0) for res in nodes), default=0)
        raise DistributedError(f"no Ray node has {memory_gib:.2f} GiB of memory and {cpus} CPU(s) for one worker "
                               f"(the largest offers {memory:.2f} GiB, the most CPUs {most:g}); add a bigger node or "
                               "lower --worker-memory / --worker-cpus")
    if fit < wanted:
        warnings.warn(f"the Ray cluster holds {fit} worker(s) of {memory_gib:.2f} GiB and {cpus} CPU(s), not "
                      f"{wanted}: starting {fit}", RuntimeWarning, stacklevel=3)
    return min(fit, wanted)


class _Run:
    """The dispatch loop of one :func:`run_batch` call."""

    def __init__(self, state: BatchState, plan: Path, keys: Path, memory_gib: float, cpus: int, retries: int,
                 context_id: str, emit: Callable[..., None]):
        self.state, self.plan, self.keys = state, plan, keys
        self.memory_gib, self.cpus, self.retries = memory_gib, cpus, retries
        self.context_id, self.emit = context_id, emit
        self.slots: list[_Slot] = []
        self.idle: deque[_Slot] = deque()
        self.starting: dict = {}   # ready future -> slot
        self.running: dict = {}    # run future -> (slot, task)
        self.deaths = self.retried = 0
        self.said: set[str] = set()  # the workers' warnings said so far
        self.bar = None
        self._actor_class = None
        self.started_at = time.monotonic()

    # ---------------------------------------------------------------- workers
    def _start_worker(self, ray) -> None:
        name = f"w{len(self.slots)}"
        actor_class = self._actor_class = self._actor_class or worker_actor_class(ray, self.memory_gib, self.cpus)
        actor = actor_class.remote(str(self.plan), str(self.keys), name)
        slot = _Slot(name, actor, actor.info.remote())
        self.slots.append(slot)
        self.starting[slot.ready] = slot

    def _worker_ready(self, ray, slot: _Slot) -> None:
        del self.starting[slot.ready]
        try:
            slot.info = ray.get(slot.ready)
        except ray.exceptions.RayActorError as exc:
            slot.died = True
            if not self.idle and not self.running and not self.starting:
                raise DistributedError(f"worker {slot.name} could not start: {failure_cause(exc)}") from None
            warnings.warn(f"worker {slot.name} could not start: {failure_cause(exc)}", RuntimeWarning, stacklevel=2)
            return
        slot.started = self.started_at = time.monotonic()
        say_warnings(slot.name, slot.info, self.said)
        self.idle.append(slot)
        self.emit("worker_ready", worker=slot.name, pid=slot.info["pid"], load_seconds=slot.info["load_seconds"])

    def stop(self, ray) -> None:
        for slot in self.slots:
            if not slot.died:
                try:
                    ray.kill(slot.actor)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        if self.bar is not None:
            self.bar.close()

    # ---------------------------------------------------------------- the loop
    def execute(self, ray, todo: list[Path], workers: int, progress: bool) -> BatchReport:
        from tqdm import tqdm

        queue = deque(_Task(p) for p in todo)
        self.bar = tqdm(total=len(todo), desc="encrypted images", unit="image", disable=not progress,
                        dynamic_ncols=True)
        self.started_at = time.monotonic()
        for _ in range(workers):
            self._start_worker(ray)
        while queue or self.running:
            while self.idle and queue:
                self._submit(self.idle.popleft(), queue.popleft())
            if not self.running and not self.starting:
                if not queue:
                    break  # the last images failed at submission
                raise DistributedError("every worker died; the batch cannot go on (rerun to resume)")
            ready, _ = ray.wait(list(self.running) + list(self.starting), num_returns=1, timeout=10)
            if not ready:
                self._check_start_timeout()
                continue
            future = ready[0]
            if future in self.starting:
                self._worker_ready(ray, self.starting[future])
            else:
                self._finished(ray, future, queue)
        report = self.state.report()
        report.workers = [self._worker_info(ray, slot) for slot in self.slots]
        report.worker_deaths, report.retried = self.deaths, self.retried
        return report

    def _check_start_timeout(self) -> None:
        """Give up when no worker has become ready for :data:`START_TIMEOUT_S` and none runs."""
        if self.running or self.idle or not self.starting:
            return
        waited = time.monotonic() - self.started_at
        if waited > START_TIMEOUT_S:
            raise DistributedError(f"no worker started in {waited:.0f} s: Ray could not place an actor of "
                                   f"{self.memory_gib:.2f} GiB and {self.cpus} CPU(s) (`ray status` shows what "
                                   "the cluster has and what waits)")

    def _submit(self, slot: _Slot, task: _Task) -> None:
        task.attempts += 1
        data = task.path.read_bytes()
        error = keyset_error(data, self.context_id)
        if error:
            self._failed(task, error, None)
            self.idle.appendleft(slot)
            return
        future = slot.actor.run.remote(data)
        self.running[future] = (slot, task)
        self.emit("started", image=task.path.name, worker=slot.name, pid=slot.info.get("pid"))

    def _finished(self, ray, future, queue: deque) -> None:
        slot, task = self.running.pop(future)
        try:
            res = ray.get(future)
        except ray.exceptions.RayActorError as exc:
            self._died(ray, slot, task, queue, exc)
            return
        except ray.exceptions.RayTaskError as exc:  # a bug in the worker: this image fails, the worker stays
            self.idle.append(slot)
            self._failed(task, f"internal error: {failure_cause(exc)}", slot)
            return
        self.idle.append(slot)
        say_warnings(slot.name, res, self.said)
        if not res.pop("ok"):
            self._failed(task, res["error"], slot)
            return
        slot.images += 1
        data = res.pop("ciphertext")
        fields = {"worker": slot.name, "seconds": res["seconds"], "bootstraps": res["bootstraps"],
                  "attempts": task.attempts}
        self.state.record_done(task.path.name, data, fields)
        self.emit("done", image=task.path.name, **fields)
        self._advance()

    def _failed(self, task: _Task, error: str, slot: _Slot | None) -> None:
        worker = slot.name if slot else None
        self.state.record_failed(task.path.name, error, {"worker": worker, "attempts": task.attempts})
        self.emit("failed", image=task.path.name, worker=worker, error=error)
        self._advance()

    def _died(self, ray, slot: _Slot, task: _Task, queue: deque, exc: Exception) -> None:
        slot.died = True
        try:
            ray.kill(slot.actor)  # unreachable rather than dead: make sure it frees its memory
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.deaths += 1
        self.emit("worker_died", worker=slot.name, image=task.path.name)
        if self.bar is not None:
            self.bar.write(f"worker {slot.name} died while running {task.path.name}; sending it to another worker")
        if task.attempts > self.retries:
            self._failed(task, f"{task.attempts} workers died running it (last: {failure_cause(exc)})", slot)
        else:
            self.retried += 1
            queue.appendleft(task)
        self._start_worker(ray)  # a replacement: loads the keys once, then takes images

    def _advance(self) -> None:
        if self.bar is None:
            return
        now = time.monotonic()
        rates = {s.name: f"{60 * s.images / max(now - s.started, 1e-9):.2f}/min"
                 for s in self.slots if s.started and not s.died}
        self.bar.set_postfix(rates, refresh=False)
        self.bar.update(1)

    def _worker_info(self, ray, slot: _Slot) -> dict:
        info = dict(slot.info, worker=slot.name, died=slot.died, images=slot.images)
        if not slot.died:
            try:
                info.update(ray.get(slot.actor.info.remote(), timeout=30), died=False)
            except Exception:  # noqa: BLE001 - died at the very end: keep what we knew
                info["died"] = True
        return info


def failure_cause(exc: Exception) -> str:
    """The first line of what a Ray error wraps (a worker's own exception, when there is one)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
