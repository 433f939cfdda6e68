"""The ``ckksnet serve`` and ``ckksnet query`` sub-commands (added to ``ckksnet.deploy.cli``'s parser
by :func:`add_serve` and :func:`add_query`). This module stays outside ``ckksnet.runtime`` and
imports the web application (FastAPI, the engine) and the HTTP client only when a command runs,
so building the CLI parser stays cheap (no torch, no OpenFHE, no numpy).

    ckksnet serve --plan SERVER_PLAN --state DIR [--host 127.0.0.1] [--port 8000] ...
    ckksnet query --url URL upload --keys EVAL_DIR            -> {"keyset_id", "token"}
    ckksnet query --url URL --token T run --in CT --out CT    submit, wait (progress), save
    ckksnet query --url URL --token T submit --in CT          -> {"job": id}
    ckksnet query --url URL --token T status JOB | wait JOB [--out CT] | result JOB --out CT
    ckksnet query --url URL --token T delete                  delete the token's key set

The connection options (--url, --token, ...) may stand before or after the action.

The token may also come from ``$CKKSNET_TOKEN`` (kept out of shell history and ``ps``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

from ckksnet.core.envelope import atomic_path
from ckksnet.deploy.service import serve
from ckksnet.errors import CkksnetError

_UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def size(text: str) -> int:
    """'16GiB', '64MiB', '500MB', '1048576' -> bytes (argparse type)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16GiB, 64MiB, 1048576)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


# ---------------------------------------------------------------- serve
def _cmd_serve(args: argparse.Namespace) -> int:
    from ckksnet.deploy.service.app import Limits

    limits = Limits(max_body=args.max_body, max_ciphertext=args.max_ciphertext, max_keysets=args.max_keysets,
                    max_queued=args.max_queued, min_free_disk=args.min_free_disk)
    serve(args.plan, args.state, args.host, args.port, args.ssl_certfile, args.ssl_keyfile,
          args.ssl_keyfile_password, limits, args.workers, args.log_level, args.ray)
    return 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    """The ``serve`` sub-command."""
    p = sub.add_parser("serve", help="run the HTTP inference service (see ckksnet.deploy.service)")
    p.add_argument("--plan", required=True, help="the server plan artifact")
    p.add_argument("--state", required=True, help="state folder: SQLite database, key sets, jobs")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--ssl-certfile", help="TLS certificate (PEM); serve HTTPS")
    p.add_argument("--ssl-keyfile", help="TLS private key (PEM)")
    p.add_argument("--ssl-keyfile-password", help="password of an encrypted --ssl-keyfile")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes, one job at a time each (~13 GiB each at the secure preset)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the queue on Ray actors (the workers of ckksnet run --workers): a local Ray "
                        "instance, or the cluster at ADDRESS (its nodes must see --state at the same path)")
    p.add_argument("--max-body", type=size, default="16GiB", help="largest key-set upload (default 16GiB)")
    p.add_argument("--max-ciphertext", type=size, default="64MiB", help="largest ciphertext (default 64MiB)")
    p.add_argument("--max-keysets", type=int, default=8, help="key sets stored at once (default 8)")
    p.add_argument("--max-queued", type=int, default=64, help="jobs waiting at once (default 64)")
    p.add_argument("--min-free-disk", type=size, default="1GiB",
                   help="free disk space an upload must leave in the state folder (default 1GiB)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="server log verbosity")
    p.add_argument("--skip-memory-check", action="store_true",
                   help="workers load keys even when they seem not to fit (also CKKSNET_SKIP_MEMORY_CHECK=1)")
    p.set_defaults(func=_cmd_serve)


# ---------------------------------------------------------------- query
def _read(path: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise CkksnetError(f"{p}: no such file")
    return p.read_bytes()


def _write(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _cmd_query(args: argparse.Namespace) -> int:
    from ckksnet.deploy.remote import RemoteClient

    verify = args.cacert or not args.insecure
    with RemoteClient(args.url, args.token or os.environ.get("CKKSNET_TOKEN"), args.keyset_id, verify) as remote:
        out = _QUERY[args.action](remote, args)
    if out is not None:
        print(json.dumps(out, indent=2))
    return 0


def _q_upload(remote, args) -> dict:
    keyset_id, token = remote.upload_keys(args.keys, progress=not args.quiet)
    return {"keyset_id": keyset_id, "token": token}


def _q_run(remote, args) -> dict:
    _write(args.out, remote.run(_read(args.input), progress=not args.quiet))
    return {"out": args.out}


def _q_wait(remote, args) -> dict:
    job = remote.wait(args.job, progress=not args.quiet)
    if args.out:
        _write(args.out, remote.result(args.job))
    return job


def _q_result(remote, args) -> dict:
    _write(args.out, remote.result(args.job))
    return {"out": args.out}


def _q_delete(remote, args) -> dict:
    return {"deleted": remote.delete_keys()}


def _q_status(remote, args) -> dict:
    return readable_job(remote.status(args.job))


def readable_job(job: dict) -> dict:
    """A job's status with ISO 8601 times (UTC) beside the epoch seconds, and for a running job
    the seconds it has run and an estimate of those left (elapsed / steps done x steps left)."""
    out = dict(job)
    for key in ("created", "started", "finished"):
        if isinstance(job.get(key), (int, float)):
            out[f"{key}_utc"] = datetime.fromtimestamp(job[key], timezone.utc).isoformat(timespec="seconds")
    if job.get("state") == "running" and job.get("started") and job.get("steps"):
        elapsed = time.time() - job["started"]
        done = max(int(job.get("step") or 1) - 1, 0)
        out["elapsed_seconds"] = round(elapsed, 1)
        if done:
            out["eta_seconds"] = round(elapsed / done * (job["steps"] - done), 1)
    return out


_QUERY = {"upload": _q_upload, "run": _q_run, "wait": _q_wait, "result": _q_result, "delete": _q_delete,
          "submit": lambda remote, args: {"job": remote.submit(_read(args.input))},
          "status": _q_status, "health": lambda remote, args: remote.health()}


def _connection_options(p: argparse.ArgumentParser, top: bool) -> None:
    """--url, --token, ... on ``query`` and on each action: either place works. On an action they
    default to SUPPRESS, so that they never overwrite a value given before the action."""
    quiet = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("--url", required=top, help="e.g. http://127.0.0.1:8000", **quiet)
    p.add_argument("--token", help="access token (default: $CKKSNET_TOKEN)", **quiet)
    p.add_argument("--keyset-id", help="key set id (default: the one the token or the ciphertext names)", **quiet)
    p.add_argument("--cacert", help="CA bundle to verify the server's TLS certificate", **quiet)
    p.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate", **quiet)
    p.add_argument("--quiet", action="store_true", help="no progress bars", **quiet)


def add_query(sub: argparse._SubParsersAction) -> None:
    """The ``query`` sub-command and its actions."""
    p = sub.add_parser("query", help="talk to a ckksnet serve instance (upload keys, run ciphertexts)")
    _connection_options(p, top=True)
    acts = p.add_subparsers(dest="action", required=True)

    def action(name: str, what: str) -> argparse.ArgumentParser:
        a = acts.add_parser(name, help=what)
        _connection_options(a, top=False)
        return a

    action("health", "server status, plan and limits")
    action("upload", "upload an evaluation-key folder; prints keyset_id and token").add_argument(
        "--keys", required=True, help="the evaluation-key folder keygen wrote (KEYDIR/eval)")
    for name, what in (("run", "submit, wait and save the result"), ("submit", "queue a ciphertext")):
        a = action(name, what)
        a.add_argument("--in", dest="input", required=True, help="ciphertext file")
        if name == "run":
            a.add_argument("--out", required=True, help="output ciphertext file")
    action("status", "a job's state, times (UTC) and, while it runs, an ETA").add_argument("job", help="job id")
    w = action("wait", "wait for a job (progress bar); --out saves the result")
    w.add_argument("job", help="job id")
    w.add_argument("--out", help="save the output ciphertext here")
    r = action("result", "save a done job's output ciphertext")
    r.add_argument("job", help="job id")
    r.add_argument("--out", required=True, help="output ciphertext file")
    action("delete", "delete the token's key set (or --keyset-id) and its jobs")
    p.set_defaults(func=_cmd_query)
