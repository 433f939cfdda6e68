"""The service's state on disk: one SQLite database and the files it points to.

Layout of the state folder::

    state.sqlite3          key sets and jobs (schema below; WAL journal)
    lock                   held (flock) by the running server: one server per state folder
    keysets/<keyset_id>/   the validated evaluation-key files of each key set
    uploads/<random>/      uploads in progress (removed on error and at start-up)
    jobs/<job_id>.in       a queued or running job's input ciphertext (removed when it ends)
    results/<job_id>.out   a finished job's output ciphertext
    workers.jsonl          the workers' key loads and finished jobs: seconds, memory (worker.py)

Every connection is short-lived and autocommits, so the HTTP process and the worker processes
can share the database; state changes that race (claiming a job, finishing it) are single
conditional UPDATEs. Times are Unix seconds.
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from ckksnet.core.envelope import save
from ckksnet.deploy.errors import ConflictError, StateLockedError

SCHEMA = """
CREATE TABLE IF NOT EXISTS keysets (
    id           TEXT PRIMARY KEY,          -- the key set's context id (ciphertext headers carry it)
    token_sha256 TEXT NOT NULL UNIQUE,      -- SHA-256 (hex) of the access token; never the token
    preset       TEXT NOT NULL,
    bytes        INTEGER NOT NULL,          -- total size of its files
    files        TEXT NOT NULL,             -- JSON: file name -> size in bytes
    created      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id           TEXT PRIMARY KEY,          -- random, 32 hex digits
    keyset_id    TEXT NOT NULL REFERENCES keysets(id) ON DELETE CASCADE,
    state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    step         INTEGER NOT NULL DEFAULT 0, -- the step running, 1-based (= steps once done)
    steps        INTEGER,                   -- steps of the plan (known once running)
    step_name    TEXT,                      -- the name of the step running
    error        TEXT,                      -- why it failed
    worker       TEXT,                      -- the worker instance that claimed it
    input_bytes  INTEGER NOT NULL,
    output_bytes INTEGER,
    created      REAL NOT NULL,
    started      REAL,
    finished     REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, created);
CREATE INDEX IF NOT EXISTS jobs_by_keyset ON jobs(keyset_id);
"""

JOB_FIELDS = ("id", "keyset_id", "state", "step", "steps", "step_name", "error", "input_bytes",
              "output_bytes", "created", "started", "finished")


def token_hash(token: str) -> str:
    """SHA-256 (hex) of an access token, the only form in which tokens are stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented token with a stored hash."""
    return hmac.compare_digest(token_hash(token).encode(), stored_hash.encode())


class Store:
    """Key sets and jobs in ``state_dir`` (see the module docstring)."""

    def __init__(self, state_dir: str | os.PathLike):
        self.root = Path(state_dir)
        for sub in ("keysets", "uploads", "jobs", "results"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "state.sqlite3"
        with closing(self.connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    # ------------------------------------------------------------ plumbing
    def connect(self) -> sqlite3.Connection:
        """A new autocommit connection (rows as ``sqlite3.Row``; foreign keys on)."""
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    def _one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        with closing(self.connect()) as db:
            rows = db.execute(sql, args).fetchall()  # to the end: an UPDATE ... RETURNING completes
        return rows[0] if rows else None

    def _run(self, sql: str, args: tuple = ()) -> int:
        """Execute one statement; the number of rows it changed."""
        with closing(self.connect()) as db:
            return db.execute(sql, args).rowcount

    def lock(self) -> None:
        """Take the state folder's lock for this process (held by this Store until the process
        exits). Raises :class:`StateLockedError` if another server holds it."""
        fh = (self.root / "lock").open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise StateLockedError(f"{self.root}: state folder in use by another ckksnet server") from None
        self._lock_file = fh

    # ------------------------------------------------------------ paths
    def keyset_dir(self, keyset_id: str) -> Path:
        return self.root / "keysets" / keyset_id

    def input_path(self, job_id: str) -> Path:
        return self.root / "jobs" / f"{job_id}.in"

    def result_path(self, job_id: str) -> Path:
        return self.root / "results" / f"{job_id}.out"

    def clear_leftovers(self) -> None:
        """Remove what a previous server left behind: unfinished uploads, and key-set folders
        without a row (a crash between the move and the commit)."""
        for p in (self.root / "uploads").iterdir():
            shutil.rmtree(p, ignore_errors=True)
        for p in (self.root / "keysets").iterdir():
            if self.keyset(p.name) is None:
                shutil.rmtree(p, ignore_errors=True)

    # ------------------------------------------------------------ key sets
    def add_keyset(self, keyset_id: str, token_sha256: str, preset: str, files: dict[str, int],
                   upload_dir: Path, max_keysets: int) -> None:
        """Move a validated upload into place and record it, atomically with the limit check.
        Raises :class:`ConflictError` if the key set exists or ``max_keysets`` are stored."""
        with closing(self.connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._check_room(db, keyset_id, max_keysets)
                db.execute("INSERT INTO keysets VALUES (?, ?, ?, ?, ?, ?)",
                           (keyset_id, token_sha256, preset, sum(files.values()), json.dumps(files), time.time()))
                upload_dir.rename(self.keyset_dir(keyset_id))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    @staticmethod
    def _check_room(db: sqlite3.Connection, keyset_id: str, max_keysets: int) -> None:
        if db.execute("SELECT 1 FROM keysets WHERE id = ?", (keyset_id,)).fetchone():
            raise ConflictError(f"key set {keyset_id[:12]}... is already stored; its owner can delete it first")
        if db.execute("SELECT COUNT(*) FROM keysets").fetchone()[0] >= max_keysets:
            raise ConflictError(f"this server stores at most {max_keysets} key sets; delete one first")

    def check_room(self, keyset_id: str | None, max_keysets: int) -> None:
        """Raise :class:`ConflictError` now if an upload could not be stored."""
        with closing(self.connect()) as db:
            self._check_room(db, keyset_id or "", max_keysets)

    def keyset(self, keyset_id: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM keysets WHERE id = ?", (keyset_id,))

    def keyset_of_token(self, token: str) -> sqlite3.Row | None:
        """The key set whose token this is (tokens are unique), or None; looked up by hash."""
        return self._one("SELECT * FROM keysets WHERE token_sha256 = ?", (token_hash(token),))

    def keyset_count(self) -> int:
        return self._one("SELECT COUNT(*) FROM keysets")[0]

    def delete_keyset(self, keyset_id: str) -> None:
        """Delete a key set, its jobs and their files. Raises :class:`ConflictError` if one
        of its jobs is running."""
        with closing(self.connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM jobs WHERE keyset_id = ? AND state = 'running'",
                              (keyset_id,)).fetchone():
                    raise ConflictError("a job of this key set is running; delete it once the job ends")
                jobs = [r[0] for r in db.execute("SELECT id FROM jobs WHERE keyset_id = ?", (keyset_id,))]
                db.execute("DELETE FROM keysets WHERE id = ?", (keyset_id,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        for job_id in jobs:
            self._remove_job_files(job_id)
        shutil.rmtree(self.keyset_dir(keyset_id), ignore_errors=True)

    # ------------------------------------------------------------ jobs
    def add_job(self, job_id: str, keyset_id: str, input_bytes: int) -> None:
        """Record a queued job (its input file must already be in place)."""
        self._run("INSERT INTO jobs (id, keyset_id, state, input_bytes, created) VALUES (?, ?, 'queued', ?, ?)",
                  (job_id, keyset_id, input_bytes, time.time()))

    def job(self, job_id: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def jobs_of(self, keyset_id: str) -> list[sqlite3.Row]:
        """A key set's jobs, oldest first."""
        with closing(self.connect()) as db:
            return db.execute("SELECT * FROM jobs WHERE keyset_id = ? ORDER BY rowid", (keyset_id,)).fetchall()

    def queued_count(self) -> int:
        return self._one("SELECT COUNT(*) FROM jobs WHERE state = 'queued'")[0]

    def queue_position(self, job_id: str) -> int:
        """Queued jobs created before this one (0: next to run)."""
        return self._one("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND rowid < "
                         "(SELECT rowid FROM jobs WHERE id = ?)", (job_id,))[0]

    def claim_job(self, worker: str, keyset_id: str | None = None) -> sqlite3.Row | None:
        """Atomically mark the oldest queued job running for ``worker`` and return it; None if
        the queue is empty or (``keyset_id`` given) its oldest job is of another key set."""
        return self._one(
            "UPDATE jobs SET state = 'running', worker = ?, started = ?, step = 0 WHERE id = ("
            "SELECT id FROM jobs WHERE state = 'queued' ORDER BY rowid LIMIT 1) "
            "AND state = 'queued' AND (? IS NULL OR keyset_id = ?) RETURNING *",
            (worker, time.time(), keyset_id, keyset_id))

    def next_keyset(self) -> str | None:
        """The key set of the oldest queued job; None if none is queued."""
        row = self._one("SELECT keyset_id FROM jobs WHERE state = 'queued' ORDER BY rowid LIMIT 1")
        return row[0] if row else None

    def progress(self, job_id: str, worker: str, step: int, steps: int, name: str) -> bool:
        """Record that step ``step`` (1-based) of ``steps`` runs; False if the job is no longer
        this worker's."""
        return self._run("UPDATE jobs SET step = ?, steps = ?, step_name = ? WHERE id = ? AND worker = ? "
                         "AND state = 'running'", (step, steps, name, job_id, worker)) == 1

    def finish_job(self, job_id: str, worker: str, output_bytes: int) -> bool:
        """Mark a running job done; False (and nothing changed) if it is no longer this worker's."""
        done = self._run("UPDATE jobs SET state = 'done', step = steps, output_bytes = ?, finished = ? WHERE id = ? AND "
                         "worker = ? AND state = 'running'", (output_bytes, time.time(), job_id, worker)) == 1
        self.input_path(job_id).unlink(missing_ok=True)
        return done

    def save_result(self, job_id: str, worker: str, data: bytes) -> bool:
        """Write a job's output (whole, then renamed: :func:`ckksnet.core.envelope.save`) and
        mark the job done; if it is no longer ``worker``'s (failed or deleted meanwhile), remove the
        output again. True if done. Raises :class:`SerializationError` if it cannot be written."""
        path = save(data, self.result_path(job_id))
        if not self.finish_job(job_id, worker, len(data)):
            path.unlink(missing_ok=True)
            return False
        return True

    def fail_job(self, job_id: str, reason: str, worker: str | None = None) -> bool:
        """Mark a queued or running job failed with ``reason`` (only if ``worker``'s, if given)."""
        failed = self._run("UPDATE jobs SET state = 'failed', error = ?, finished = ? WHERE id = ? AND "
                           "state IN ('queued', 'running') AND (? IS NULL OR worker = ?)",
                           (reason, time.time(), job_id, worker, worker)) == 1
        self.input_path(job_id).unlink(missing_ok=True)
        return failed

    def fail_running(self, reason: str, worker: str | None = None) -> list[str]:
        """Mark every running job (of ``worker``, if given) failed; their ids."""
        with closing(self.connect()) as db:
            rows = db.execute("UPDATE jobs SET state = 'failed', error = ?, finished = ? WHERE state = 'running' "
                              "AND (? IS NULL OR worker = ?) RETURNING id",
                              (reason, time.time(), worker, worker)).fetchall()
        ids = [r[0] for r in rows]
        for job_id in ids:
            self.input_path(job_id).unlink(missing_ok=True)
        return ids

    def delete_job(self, job_id: str) -> None:
        """Delete a job that is not running, and its files. Raises :class:`ConflictError` while
        it runs (a worker may claim a queued job first)."""
        if self._run("DELETE FROM jobs WHERE id = ? AND state != 'running'", (job_id,)) != 1:
            raise ConflictError(f"job {job_id} is running; delete it once it ends")
        self._remove_job_files(job_id)

    def _remove_job_files(self, job_id: str) -> None:
        self.input_path(job_id).unlink(missing_ok=True)
        self.result_path(job_id).unlink(missing_ok=True)


def job_view(row: sqlite3.Row) -> dict:
    """A job row as the JSON the service answers with."""
    return {k: row[k] for k in JOB_FIELDS}
