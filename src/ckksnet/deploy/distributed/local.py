"""A batch in this process, without Ray, and what both ways of running a batch share.

:func:`run_here` runs the images one after another through one :class:`InferenceWorker` in
this process (the keys loaded once), writing the same output folder, results and report as
the Ray driver: a batch that does not pay for Ray's start-up (:mod:`.runner`) runs here.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from ckksnet.deploy import engine
from ckksnet.deploy.distributed.batch import BatchReport, BatchState
from ckksnet.deploy.distributed.worker import InferenceWorker, say_warnings
from ckksnet.errors import CkksnetError


def keyset_error(data: bytes, context_id: str) -> str | None:
    """Why the ciphertext envelope ``data`` cannot run with the key set ``context_id`` (its
    envelope, checksum or key set: cheap, before a worker gets it), or None."""
    try:
        keyset = engine.ciphertext_keyset(data, service=False)
    except CkksnetError as exc:
        return f"{type(exc).__name__}: {exc}"
    if keyset != context_id:
        return (f"CkksnetError: the ciphertext belongs to key set {keyset[:16]}..., the evaluation keys to "
                f"{context_id[:16]}... (encrypt with the client whose keys these are)")
    return None


def run_here(state: BatchState, plan: Path, keys: Path, context_id: str, todo: list[Path], progress: bool,
             emit: Callable[..., None]) -> BatchReport:
    """Run ``todo`` (paths of ``state``'s batch) one after another in this process."""
    from tqdm import tqdm

    said: set[str] = set()
    worker = InferenceWorker(plan, keys, "local")
    say_warnings(worker.name, worker.info(), said)
    emit("worker_ready", worker=worker.name, pid=os.getpid(), load_seconds=worker.load_seconds)
    started = time.monotonic()
    with tqdm(total=len(todo), desc="encrypted images", unit="image", disable=not progress,
              dynamic_ncols=True) as bar:
        for path in todo:
            _one(state, worker, path, context_id, emit)
            say_warnings(worker.name, worker.info(), said)
            bar.set_postfix({worker.name: f"{60 * worker.images / max(time.monotonic() - started, 1e-9):.2f}/min"},
                            refresh=False)
            bar.update(1)
    report = state.report()
    report.workers = [dict(worker.info(), died=False)]
    return report


def _one(state: BatchState, worker: InferenceWorker, path: Path, context_id: str, emit: Callable[..., None]) -> None:
    """One image: checked, run, recorded (done or failed) and announced."""
    data = path.read_bytes()
    emit("started", image=path.name, worker=worker.name, pid=os.getpid())
    error = keyset_error(data, context_id)
    res = {"ok": False, "error": error} if error else worker.run(data)
    if not res["ok"]:
        state.record_failed(path.name, res["error"], {"worker": worker.name, "attempts": 1})
        emit("failed", image=path.name, worker=worker.name, error=res["error"])
        return
    fields = {"worker": worker.name, "seconds": res["seconds"], "bootstraps": res["bootstraps"], "attempts": 1}
    state.record_done(path.name, res["ciphertext"], fields)
    emit("done", image=path.name, **fields)
