"""One inference worker: a server plan and one client's evaluation keys, loaded once.

:class:`InferenceWorker` is plain Python (no Ray in it), so it is tested and used the same in
one process and, wrapped by :func:`ray.remote` in :mod:`ckksnet.deploy.distributed.driver`, as a Ray
actor in a process of its own on any node. It never holds or opens a secret key: it reads the
server plan artifact and an evaluation-key folder (``ckksnet keygen``'s ``KEYDIR/eval``).
"""
from __future__ import annotations

import os
import socket
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

from ckksnet.core.memory import peak_rss_gb, rss_gb, tune_allocator
from ckksnet.core.preset import InsecurePresetWarning
from ckksnet.deploy import engine
from ckksnet.errors import CkksnetError


class WorkerWarning(RuntimeWarning):
    """A warning a worker raised while loading its keys or running an image."""


class InferenceWorker:
    """Loads ``plan_path`` (server artifact) and the evaluation keys in ``eval_keys`` once, in
    the constructor (at the secure preset about 11 GiB of keys, 45-60 s on 2 cores), then runs
    ciphertext envelopes one at a time with :meth:`run`.

    Raises at construction what loading raises: :class:`ckksnet.SerializationError` for a bad
    plan or key file, :class:`ckksnet.MissingKeyError` when the keys lack one the plan needs.
    """

    def __init__(self, plan_path: str | os.PathLike, eval_keys: str | os.PathLike, name: str = "worker"):
        tune_allocator()
        self.name = name
        #: "Category: message" of each warning raised here, once each, in order
        self.warnings: list[str] = []
        t0 = time.monotonic()
        with self._kept_warnings():
            self.plan = engine.load_plan(Path(plan_path))
            self.server = engine.load_server(self.plan, Path(eval_keys))
        #: key loads in this process (1: keys are never reloaded per image) and their seconds
        self.key_loads = 1
        self.load_seconds = time.monotonic() - t0
        self.images = 0
        self.busy_seconds = 0.0

    def run(self, data: bytes) -> dict:
        """Encrypted inference of one ciphertext envelope (bytes of a ``.ckks`` file).

        Returns ``{"ok": True, "ciphertext": bytes, "seconds", "run_seconds", "bootstraps",
        **info}`` or, for an input this worker refuses (corrupt, another key set, too few
        levels: any :class:`ckksnet.CkksnetError`), ``{"ok": False, "error": "Type: message"}``.
        Other exceptions propagate (a bug: the driver reports it with the image)."""
        t0 = time.monotonic()
        try:
            with self._kept_warnings():
                out = engine.run_job(self.server, data, lambda i, n, name: None)
        except CkksnetError as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}", **self.info()}
        except Exception as exc:  # noqa: BLE001 - an OpenFHE failure on a crafted input
            traceback.print_exc()
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}", **self.info()}
        seconds = time.monotonic() - t0
        self.images += 1
        self.busy_seconds += seconds
        rep = self.server.report
        return {"ok": True, "ciphertext": out, "seconds": round(seconds, 3), "run_seconds": round(rep.seconds, 3),
                "bootstraps": rep.bootstraps, **self.info()}

    @contextmanager
    def _kept_warnings(self):
        """Keep the warnings raised in the block (module docstring). The insecure preset's is
        dropped: whoever started this worker loaded the same plan and has said it already."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", InsecurePresetWarning)
            try:
                yield
            finally:  # a failed load or run may have warned why
                for w in caught:
                    text = f"{w.category.__name__}: {w.message}"
                    if text not in self.warnings:
                        self.warnings.append(text)

    def info(self) -> dict:
        """Who and how this worker is: name, host, pid, key loads and their seconds, images
        done, busy seconds, resident and peak memory (GiB), the warnings it kept."""
        return {"worker": self.name, "host": socket.gethostname(), "pid": os.getpid(), "key_loads": self.key_loads,
                "load_seconds": round(self.load_seconds, 3), "images": self.images,
                "busy_seconds": round(self.busy_seconds, 3), "rss_gb": round(rss_gb(), 3),
                "peak_rss_gb": round(peak_rss_gb(), 3), "warnings": list(self.warnings)}


def new_warnings(info: dict, said: set[str]) -> list[str]:
    """The warnings in a worker's ``info`` (or result) that ``said`` lacks, now added to it: a
    worker keeps its warnings rather than print them raw, and each is said once."""
    new = [text for text in dict.fromkeys(info.get("warnings", ())) if text not in said]
    said.update(new)
    return new


def say_warnings(worker: str, info: dict, said: set[str]) -> None:
    """Warn (:class:`WorkerWarning`) once each of the warnings a worker kept (:func:`new_warnings`)."""
    for text in new_warnings(info, said):
        warnings.warn(f"worker {worker}: {text}", WorkerWarning, stacklevel=3)
