"""Keeps the worker processes running, in a thread of the HTTP process.

Each worker slot holds one ``python -m ckksnet.deploy.service.worker`` subprocess, in the
server's process group (a signal to the group reaches them all). When a worker exits, any job
it was running is marked failed with the reason (a crash of OpenFHE, the kernel's out-of-memory
killer), and a new worker takes the slot: at once after a voluntary exit (status 0: the next
job needs another key set), after a back-off of 1 s doubling to 60 s while workers keep dying
soon after they start (an unreadable plan, say).
"""
from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ckksnet.deploy.service.store import Store

QUICK_DEATH_S = 10.0  # a worker that dies sooner than this after its start counts toward back-off


@dataclass
class Slot:
    """One worker slot: the running process, its name and when to (re)start it."""

    proc: subprocess.Popen | None = None
    name: str = ""
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float = field(default=0.0)


def exit_text(code: int) -> str:
    """'exit status 3' or 'signal SIGKILL' for a process's return code."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


class Supervisor:
    """Runs ``workers`` worker processes on ``store`` with the plan at ``plan_path``."""

    def __init__(self, store: Store, plan_path: Path, workers: int = 1, poll: float = 0.2):
        self.store, self.plan_path, self.poll = store, Path(plan_path), poll
        self.slots = [Slot() for _ in range(workers)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ckksnet-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self, slot: Slot, index: int) -> None:
        slot.name = f"w{index}-{secrets.token_hex(4)}"
        slot.proc = subprocess.Popen([sys.executable, "-m", "ckksnet.deploy.service.worker", "--state",
                                      str(self.store.root), "--plan", str(self.plan_path), "--name", slot.name])
        slot.started = time.monotonic()

    def _reap(self, slot: Slot) -> None:
        code = slot.proc.returncode
        slot.proc = None
        if code == 0:
            slot.backoff, slot.restart_at = 0.0, 0.0
            return
        how = exit_text(code)
        for job_id in self.store.fail_running(f"the worker process died during the job ({how})", slot.name):
            print(f"ckksnet serve: job {job_id} failed: worker {slot.name} died ({how})", file=sys.stderr)
        quick = time.monotonic() - slot.started < QUICK_DEATH_S
        slot.backoff = min(60.0, max(1.0, slot.backoff * 2)) if quick else 0.0
        slot.restart_at = time.monotonic() + slot.backoff
        print(f"ckksnet serve: worker {slot.name} exited ({how}); restarting in {slot.backoff:.0f} s",
              file=sys.stderr)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for index, slot in enumerate(self.slots):
                if slot.proc is not None and slot.proc.poll() is not None:
                    self._reap(slot)
                if slot.proc is None and time.monotonic() >= slot.restart_at and not self._stop.is_set():
                    self._spawn(slot, index)
            self._stop.wait(self.poll)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers (SIGTERM, then SIGKILL after ``timeout`` s); a job that was
        running is marked failed."""
        self._stop.set()
        self._thread.join()
        for slot in self.slots:
            if slot.proc is not None:
                slot.proc.terminate()
        for slot in self.slots:
            if slot.proc is not None:
                try:
                    slot.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    slot.proc.kill()
                    slot.proc.wait()
                self.store.fail_running("the server stopped during the job", slot.name)
