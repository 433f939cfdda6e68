"""A batch of ciphertext files and its output folder: what is done, what is left, the report.

The output folder is the batch's whole state, so an interrupted batch resumes by running the
same command again::

    OUT/
      batch.json        which plan (plan_id) and key set (context_id) the results belong to
      results.jsonl     one JSON line per finished image, appended (and fsynced) as it finishes:
                        {"input", "sha256" (of the input file), "status": "done" | "failed",
                         "output", "error", "worker", "seconds", "bootstraps", "attempts", "time"}
      <name>.ckks       each done image's output ciphertext, named as its input; written to a
                        temporary name and renamed, so a file present is complete

An image counts as done when its line says so, its output file is there and its input file is
the same (SHA-256) as when it was run: a replaced input is run again. Failed images (a corrupt
ciphertext, say) are tried again by a resumed batch. A folder holding results of another plan or
key set is refused rather than mixed, and so is an output folder that holds the inputs.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ckksnet.core.envelope import file_digest, save
from ckksnet.errors import CkksnetError, InputError

BATCH_FILE = "batch.json"
RESULTS_FILE = "results.jsonl"
SUFFIX = ".ckks"


@dataclass
class ImageResult:
    """One image of a batch. ``status``: done, failed, or pending (not reached: interrupted).
    ``seconds``: the worker's wall time for the image; ``attempts``: workers it was sent to
    (more than one when a worker died under it); ``resumed``: finished by an earlier run."""

    input: str
    status: str = "pending"
    output: str | None = None
    error: str | None = None
    worker: str | None = None
    seconds: float | None = None
    bootstraps: int | None = None
    attempts: int = 0
    resumed: bool = False


@dataclass
class BatchReport:
    """What a batch did: per image (in input order), per worker (``InferenceWorker.info`` plus
    ``died``), wall seconds of this run, worker deaths and images sent again; ``runner``: where
    it ran (``ray``, or ``in-process`` without Ray) and ``runner_reason`` why."""

    results: list[ImageResult]
    workers: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    worker_deaths: int = 0
    retried: int = 0
    runner: str = ""
    runner_reason: str = ""

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        return all(r.status == "done" for r in self.results)

    def to_dict(self) -> dict:
        done_now = [r for r in self.results if r.status == "done" and not r.resumed]
        return {"images": len(self.results), "done": self.count("done"), "failed": self.count("failed"),
                "pending": self.count("pending"), "resumed": sum(r.resumed for r in self.results),
                "seconds": round(self.seconds, 3), "worker_deaths": self.worker_deaths, "retried": self.retried,
                "images_per_minute": round(60 * len(done_now) / self.seconds, 3) if self.seconds and done_now else None,
                "runner": self.runner, "runner_reason": self.runner_reason,
                "workers": self.workers, "results": [asdict(r) for r in self.results]}


def list_inputs(inputs: str | os.PathLike | list) -> list[Path]:
    """The ciphertext files of a batch: a folder (its ``*.ckks`` files, sorted by name), one
    file, or a list of files. Raises :class:`InputError` for a missing path, an empty batch, or
    two files of one name (their outputs would collide)."""
    if isinstance(inputs, (str, os.PathLike)) and Path(inputs).is_file():
        inputs = [inputs]
    if isinstance(inputs, (str, os.PathLike)):
        folder = Path(inputs)
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder or file of ciphertexts")
        files = sorted(p for p in folder.iterdir() if p.suffix == SUFFIX and p.is_file())
        if not files:
            raise InputError(f"{folder} holds no {SUFFIX} ciphertext file (ckksnet encrypt --out writes them)")
        return files
    files = [Path(p) for p in inputs]
    if not files:
        raise InputError("the batch is empty")
    for p in files:
        if not p.is_file():
            raise InputError(f"{p}: no such ciphertext file")
    names = [p.name for p in files]
    if len(set(names)) != len(names):
        raise InputError("two input files share a name; each gives OUT/<name>")
    return files


class BatchState:
    """The output folder of one batch (module docstring): opened for a plan and a key set,
    it knows which inputs are done and records each new result as it arrives."""

    def __init__(self, out_dir: str | os.PathLike, inputs: list[Path], identity: dict):
        self.out = Path(out_dir).absolute()
        self.inputs = inputs
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"{self.out} is a file; the output of a batch is a folder")
        if any(p.absolute().parent == self.out for p in inputs):
            raise InputError(f"the output folder {self.out} holds the input ciphertexts; the outputs (named as "
                             "the inputs) would replace them: give another --out folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_identity(identity)
        for tmp in self.out.glob("*.tmp"):  # an interrupted write's leftovers
            tmp.unlink(missing_ok=True)
        self.digests = {p.name: file_digest(p)[0] for p in inputs}
        self.results = {p.name: ImageResult(p.name) for p in inputs}
        for line in self._read_lines():
            res = self.results.get(line.get("input"))
            if (res is not None and line.get("status") == "done" and (self.out / res.input).is_file()
                    and line.get("sha256") == self.digests[res.input]):
                self._fill(res, line)
                res.resumed = True

    def _check_identity(self, identity: dict) -> None:
        path = self.out / BATCH_FILE
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise CkksnetError(f"{path} is unreadable ({exc}); remove it only if the folder's results "
                                   "belong to this plan and key set") from exc
            for key, value in identity.items():
                if old.get(key) != value:
                    raise CkksnetError(f"{self.out} holds results of another {key} ({str(old.get(key))[:16]}..., "
                                       f"this batch {str(value)[:16]}...): use another --out folder")
            return
        save((json.dumps(identity, indent=1) + "\n").encode(), path)

    def _read_lines(self) -> list[dict]:
        """The records of earlier runs. A last line cut short (the process was killed while
        writing it) is dropped from the file, so that the next record starts a line of its own;
        a damaged line elsewhere is an error, not silently dropped."""
        path = self.out / RESULTS_FILE
        if not path.exists():
            return []
        text = path.read_text(errors="replace")
        if text and not text.endswith("\n"):
            text = text[:text.rfind("\n") + 1]
            path.write_text(text)
        records = []
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                raise CkksnetError(f"{path} line {i + 1} is damaged ({exc}); fix or remove that line") from exc
            records.append(rec)
        return records

    @staticmethod
    def _fill(res: ImageResult, rec: dict) -> None:
        for key in ("status", "output", "error", "worker", "seconds", "bootstraps", "attempts"):
            if key in rec:
                setattr(res, key, rec[key])

    def pending(self) -> list[Path]:
        """Inputs not done yet, in input order."""
        return [p for p in self.inputs if self.results[p.name].status != "done"]

    def record_done(self, name: str, data: bytes, fields: dict) -> None:
        """Write ``name``'s output ciphertext (atomically), then its line."""
        path = save(data, self.out / name)
        self._record(name, {"status": "done", "output": str(path), "error": None, **fields})

    def record_failed(self, name: str, error: str, fields: dict) -> None:
        self._record(name, {"status": "failed", "output": None, "error": error, **fields})

    def _record(self, name: str, rec: dict) -> None:
        res = self.results[name]
        self._fill(res, rec)
        res.resumed = False
        line = json.dumps({"input": name, "sha256": self.digests[name],
                           **{k: rec.get(k) for k in ("status", "output", "error", "worker",
                                                                      "seconds", "bootstraps", "attempts")},
                           "time": round(time.time(), 3)})
        with open(self.out / RESULTS_FILE, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def report(self) -> BatchReport:
        return BatchReport([self.results[p.name] for p in self.inputs])
