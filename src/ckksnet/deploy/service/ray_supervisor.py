"""``ckksnet serve --ray``: the service's queue run by Ray actors instead of local worker processes.

Each of ``--workers`` slots holds one :class:`ckksnet.deploy.distributed.InferenceWorker` actor, the same
worker ``ckksnet run --workers`` uses: it loads the server plan and one key set once, then runs
jobs of that key set one after another. A thread of the HTTP process claims the oldest queued job
for an idle slot (first in, first out, as the local workers do), sends the ciphertext's bytes to
the slot's actor, and writes the output when it comes back; when the oldest queued job needs
another key set, an idle slot's actor is replaced by one loading that key set (its memory goes
back). A job whose actor dies is marked failed with the reason; a new actor takes the slot.

The actors read the plan and the key set from this server's state folder by path, so on a cluster
(``--ray ADDRESS``) every node must see the state folder at the same path (a shared file system).
Jobs report no per-step progress in this mode: a running job shows step 1 of n until it is done.
"""
from __future__ import annotations

import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

from ckksnet.deploy.service.store import Store


@dataclass
class _RaySlot:
    name: str
    actor: object = None
    keyset: str | None = None
    job: str | None = None      # the job it runs
    future: object = None       # the job's result


class RaySupervisor:
    """Runs ``workers`` Ray actors on ``store``'s queue with the plan at ``plan_path``;
    ``address``: a Ray cluster to join, None for a local instance started here."""

    def __init__(self, store: Store, plan_path: Path, workers: int = 1, address: str | None = None,
                 worker_cpus: int = 1, poll: float = 0.2):
        self.store, self.plan_path, self.address = store, Path(plan_path), address
        self.cpus, self.poll = worker_cpus, poll
        self.slots = [_RaySlot(f"ray{i}") for i in range(workers)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ckksnet-ray-supervisor", daemon=True)
        self._started_ray = False
        self._said: set[str] = set()

    def start(self) -> None:
        from ckksnet.deploy.distributed.driver import connect_ray, import_ray
        from ckksnet.deploy import engine

        facts = engine.describe_plan(engine.load_plan(self.plan_path))
        self.steps, self.backend = facts["steps"], facts["backend"]
        self.ray = import_ray()
        self._started_ray = connect_ray(self.ray, self.address, len(self.slots) * self.cpus)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            running = [s.future for s in self.slots if s.future is not None]
            if running:
                ready, _ = self.ray.wait(running, num_returns=len(running), timeout=self.poll)
                for slot in self.slots:
                    if slot.future is not None and slot.future in ready:
                        self._collect(slot)
            else:
                self._stop.wait(self.poll)
            for slot in self.slots:
                if slot.future is None and not self._stop.is_set():
                    self._guarded(self._assign, slot)

    def _guarded(self, action, slot: _RaySlot) -> None:
        """Run ``action(slot)``; an unexpected error is printed (and fails the slot's job, if it
        claimed one), never stops the loop."""
        try:
            action(slot)
        except Exception as exc:  # noqa: BLE001 - the service must keep serving
            traceback.print_exc()
            if slot.job is not None:
                self.store.fail_job(slot.job, f"internal error: {type(exc).__name__}: {exc}", slot.name)
            slot.job = slot.future = None
            self._stop.wait(1.0)  # no busy loop on a persistent error

    def _assign(self, slot: _RaySlot) -> None:
        want = self.store.next_keyset()
        if want is None:
            return
        if slot.keyset != want:
            self._replace_actor(slot, want)
        job = self.store.claim_job(slot.name, slot.keyset)
        if job is None:
            return
        try:
            data = self.store.input_path(job["id"]).read_bytes()
        except OSError as exc:
            self.store.fail_job(job["id"], f"the job's input is gone: {exc}", slot.name)
            return
        self.store.progress(job["id"], slot.name, 1, self.steps, "whole plan (Ray worker)")
        slot.job, slot.future = job["id"], slot.actor.run.remote(data)

    def _replace_actor(self, slot: _RaySlot, keyset: str) -> None:
        from ckksnet.deploy import engine
        from ckksnet.deploy.distributed.driver import worker_actor_class, worker_memory_gib

        if slot.actor is not None:
            self.ray.kill(slot.actor)
        folder = self.store.keyset_dir(keyset)
        actor_class = worker_actor_class(self.ray, worker_memory_gib(engine.bundle_identity(folder, self.backend)[2],
                                                                         self.backend), self.cpus)
        slot.actor, slot.keyset = actor_class.remote(str(self.plan_path), str(folder), slot.name), keyset

    def _collect(self, slot: _RaySlot) -> None:
        job_id, future = slot.job, slot.future
        slot.job = slot.future = None
        try:
            self._finish(slot, job_id, future)
        except Exception as exc:  # noqa: BLE001 - the service must keep serving
            traceback.print_exc()
            self.store.fail_job(job_id, f"internal error: {type(exc).__name__}: {exc}", slot.name)

    def _finish(self, slot: _RaySlot, job_id: str, future) -> None:
        try:
            res = self.ray.get(future)
        except self.ray.exceptions.RayActorError as exc:
            from ckksnet.deploy.distributed.driver import failure_cause

            print(f"ckksnet serve: Ray worker {slot.name} died during job {job_id}: {failure_cause(exc)}", file=sys.stderr)
            self.store.fail_job(job_id, f"the worker died during the job ({failure_cause(exc)})", slot.name)
            slot.actor = slot.keyset = None
            return
        except self.ray.exceptions.RayTaskError as exc:
            from ckksnet.deploy.distributed.driver import failure_cause

            self.store.fail_job(job_id, f"internal error: {failure_cause(exc)}", slot.name)
            return
        self._say_warnings(slot, res)
        if not res["ok"]:
            self.store.fail_job(job_id, res["error"], slot.name)
            return
        self.store.save_result(job_id, slot.name, res["ciphertext"])

    def _say_warnings(self, slot: _RaySlot, res: dict) -> None:
        """Print once each warning an actor kept (it keeps them rather than print them raw)."""
        from ckksnet.deploy.distributed.worker import new_warnings

        for text in new_warnings(res, self._said):
            print(f"ckksnet serve: warning: Ray worker {slot.name}: {text}", file=sys.stderr)

    def stop(self) -> None:
        """Stop the loop and the actors; a job that was running is marked failed."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for slot in self.slots:
            if slot.actor is not None:
                self.ray.kill(slot.actor)
            if slot.job is not None:
                self.store.fail_job(slot.job, "the server stopped during the job", slot.name)
        if self._started_ray:
            self.ray.shutdown()
