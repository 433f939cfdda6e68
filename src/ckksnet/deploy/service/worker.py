"""A worker process: loads the server plan and one key set, runs queued jobs one at a time.

Started by the server's :class:`~ckksnet.deploy.service.supervisor.Supervisor` as
``python -m ckksnet.deploy.service.worker --state DIR --plan PATH --name NAME``. It takes the
oldest queued job (first in, first out). A worker holds the keys of one key set at most
(about 13 GiB for a secure-preset job): when the oldest queued job needs another key set, it
exits with status 0 and the supervisor starts a fresh one, so the memory of the previous keys
(also in OpenFHE's global key store) goes back to the system. Progress (step i of n) is written
to SQLite after each step. It exits if its parent (the server) goes away.

What the database does not keep, the worker appends to ``STATE/workers.jsonl``, one JSON object
a line: ``{"event": "keys_loaded", "keyset_id", "seconds", "rss_gb", "peak_rss_gb"}`` once its
key set is loaded, and ``{"event": "job_done", "job_id", "seconds", "run_seconds", "bootstraps",
"bootstrap_seconds", "rss_gb", "peak_rss_gb"}`` after each job it finishes (``seconds``: wall
time of the load or the job; ``run_seconds``: the plan's run report; memory in GiB, peak over the
worker's life), each with ``time`` and ``worker``. The key-load line also goes to stderr.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from ckksnet.core.memory import peak_rss_gb, rss_gb
from ckksnet.errors import CkksnetError
from ckksnet.deploy import engine
from ckksnet.deploy.service.store import Store

PR_SET_PDEATHSIG = 1  # prctl(2)
SWITCH_KEYSET = 0  # exit status: the next job needs another key set (start a fresh worker)
LOG_FILE = "workers.jsonl"  # in the state folder: key loads and finished jobs (module docstring)


class JobCancelled(Exception):
    """The job is no longer this worker's (the server restarted, the key set was deleted)."""


class Worker:
    """Runs jobs from ``store`` with ``plan`` (see the module docstring). ``poll``: seconds
    between looks at an empty queue."""

    def __init__(self, store: Store, plan, name: str, poll: float = 0.2):
        self.store, self.plan, self.name, self.poll = store, plan, name, poll
        self.parent = os.getppid()
        self.keyset: str | None = None
        self.server = None

    def orphaned(self) -> bool:
        return os.getppid() != self.parent

    def serve_forever(self) -> int:
        """Run jobs until the next one needs another key set (returns :data:`SWITCH_KEYSET`)
        or the parent process is gone (returns 1)."""
        while not self.orphaned():
            job = self.store.claim_job(self.name, self.keyset)
            if job is not None:
                self.run(job)
            elif self.keyset is not None and self.store.next_keyset() not in (None, self.keyset):
                return SWITCH_KEYSET
            else:
                time.sleep(self.poll)
        return 1

    def run(self, job) -> None:
        """Run one claimed job; record done or failed (never raises for the job's own errors)."""
        job_id = job["id"]
        try:
            data = self.store.input_path(job_id).read_bytes()
            server = self._server_for(job["keyset_id"])
            t0 = time.monotonic()
            out = engine.run_job(server, data, self._on_step(job_id))
            seconds = time.monotonic() - t0
            self.store.save_result(job_id, self.name, out)
            rep = server.report
            self._log("job_done", job_id=job_id, seconds=round(seconds, 3), run_seconds=round(rep.seconds, 3),
                      bootstraps=rep.bootstraps, bootstrap_seconds=round(rep.bootstrap_seconds, 3))
        except JobCancelled:
            return
        except CkksnetError as exc:
            self.store.fail_job(job_id, f"{type(exc).__name__}: {exc}", self.name)
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            traceback.print_exc()
            self.store.fail_job(job_id, f"internal error: {type(exc).__name__}: {exc}", self.name)

    def _server_for(self, keyset_id: str):
        if self.server is None or keyset_id != self.keyset:
            self.keyset = keyset_id  # one key set per worker process: claim_job keeps to it
            t0 = time.monotonic()
            self.server = engine.load_server(self.plan, self.store.keyset_dir(keyset_id))
            seconds = time.monotonic() - t0
            self._log("keys_loaded", keyset_id=keyset_id, seconds=round(seconds, 3))
            print(f"ckksnet worker {self.name}: loaded key set {keyset_id[:12]}... in {seconds:.1f} s "
                  f"(resident {rss_gb():.2f} GiB, peak {peak_rss_gb():.2f} GiB)", file=sys.stderr, flush=True)
        return self.server

    def _log(self, event: str, **fields) -> None:
        """Append one record to ``STATE/workers.jsonl`` (never fails a job)."""
        record = {"time": round(time.time(), 3), "worker": self.name, "event": event, **fields,
                  "rss_gb": round(rss_gb(), 3), "peak_rss_gb": round(peak_rss_gb(), 3)}
        try:
            with open(self.store.root / LOG_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            print(f"ckksnet worker {self.name}: cannot write {LOG_FILE}: {exc}", file=sys.stderr)

    def _on_step(self, job_id: str):
        def on_step(i: int, n: int, name: str) -> None:
            if self.orphaned() or not self.store.progress(job_id, self.name, i, n, name):
                raise JobCancelled(job_id)
        return on_step


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the server) dies, so that a killed
    server leaves no worker holding gigabytes of keys (elsewhere: the per-step check only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ckksnet-worker", description=__doc__.splitlines()[0])
    p.add_argument("--state", required=True, type=Path)
    p.add_argument("--plan", required=True, type=Path)
    p.add_argument("--name", required=True)
    args = p.parse_args(argv)
    die_with_parent()
    if os.getppid() == 1:
        return 1  # the server died before we could ask
    try:
        plan = engine.load_plan(args.plan)
    except CkksnetError as exc:
        print(f"ckksnet worker {args.name}: {exc}", file=sys.stderr)
        return 2
    return Worker(Store(args.state), plan, args.name).serve_forever()


if __name__ == "__main__":
    sys.exit(main())
