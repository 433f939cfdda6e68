"""``ckksnet serve``: encrypted inference as an HTTP service, and how to deploy it.

A client uploads its evaluation-key bundle once and gets a key set id and an access token;
it then submits ciphertexts under that token, follows each job's progress, and downloads the
output ciphertext, which only it can decrypt. The server never sees a secret key::

    ckksnet serve --plan SERVER_PLAN --state /var/lib/ckksnet [--host 127.0.0.1] [--port 8000] \\
                  [--ssl-certfile cert.pem --ssl-keyfile key.pem] [--workers 1] \\
                  [--max-body 16GiB] [--max-ciphertext 64MiB] [--max-keysets 8] [--max-queued 64]

Endpoints (JSON unless said; errors are ``{"detail": "..."}`` with the status below). The token
goes in ``Authorization: Bearer TOKEN``; a missing token is 401, a token that is not the key
set's 403, a job of another key set 404 (as if it did not exist).

=========================================  ======================================================
``GET /health``                            status, plan preset and step count, limits
``POST /keysets``                          body: uncompressed tar of the evaluation-key folder
                                           (application/x-tar, streamed) -> 201 ``keyset_id``,
                                           ``token``; 400 malformed or truncated, 413 too large,
                                           422 failed validation, 409 exists or too many key sets,
                                           507 disk full
``GET /keysets/{id}``                      the key set and its jobs
``DELETE /keysets/{id}``                   the key set, its jobs and results (409 while one runs)
``POST /keysets/{id}/jobs``                body: a ciphertext envelope -> 202 job (queued); 413
                                           too large, 422 not intact or of another key set, 429
                                           queue full
``GET /jobs/{job}``                        ``state``: queued (``position``), running (``step`` of
                                           ``steps``, ``step_name``), done, failed (``error``)
``GET /jobs/{job}/result``                 the output ciphertext envelope (octet-stream); 409
                                           unless done
``DELETE /jobs/{job}``                     forget a job and its files (409 while it runs)
=========================================  ======================================================

Design. Uploads are streamed to disk member by member as they arrive (never held in memory,
never stored twice) by a strict tar reader (:mod:`.bundle`), then validated by their envelope
headers and SHA-256 checksums (:mod:`.engine`) and moved into place; a bad upload is deleted
and stored key sets are not touched. Tokens are ``secrets.token_urlsafe(32)``; only their
SHA-256 is stored, compared with ``hmac.compare_digest``. The HTTP process never loads keys:
jobs wait in SQLite (:mod:`.store`) and worker processes (:mod:`.worker`, ``--workers``, one
job at a time each; a secure-preset job needs about 13 GiB) run them and write their progress
there. A job that was running when the server died is reported failed ("the server restarted
during the job") at the next start; a worker that crashes fails its job and is replaced
(:mod:`.supervisor`). One server per state folder (a lock file).

Deploying. The server binds 127.0.0.1 by default. Anything else should be served over TLS,
since tokens and ciphertexts cross the network: give uvicorn a certificate and its key with
``--ssl-certfile cert.pem --ssl-keyfile key.pem`` (``--ssl-keyfile-password`` if it is
encrypted), or keep the default loopback binding behind a reverse proxy that terminates TLS
and allows request bodies of ``--max-body`` (about 11 GiB for a secure-preset bundle) without
buffering them. Clients pass ``--cacert`` (``RemoteClient(verify=...)``) for a private CA.
Size the machine for the workers: about 13 GiB of memory per worker at the secure preset, and
about 11 GiB of disk per stored key set (``--max-keysets``).
"""
from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from ckksnet.deploy.service.store import Store

__all__ = ["Limits", "Service", "create_app", "serve"]


def __getattr__(name: str):
    # lazy: a worker process imports this package without the web framework
    if name in ("Limits", "Service", "create_app"):
        from ckksnet.deploy.service import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(plan: str | Path, state: str | Path, host: str = "127.0.0.1", port: int = 8000,
          ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
          ssl_keyfile_password: str | None = None, limits=None, workers: int = 1,
          log_level: str = "info", ray: str | None = None) -> None:
    """Run the service until interrupted (SIGINT/SIGTERM stop it cleanly). ``limits``: an
    :class:`~ckksnet.deploy.service.app.Limits` (default: its defaults). ``ray``: run the
    queue on Ray actors (:mod:`.ray_supervisor`): "local" or a cluster address.

    Raises :class:`~ckksnet.deploy.errors.StateLockedError` if another server uses
    ``state``, :class:`ckksnet.SerializationError` if the plan cannot be read.
    """
    import uvicorn

    from ckksnet.deploy import engine
    from ckksnet.deploy.service.app import Limits, Service, create_app

    store = Store(state)
    store.lock()  # held until the process exits
    facts = engine.describe_plan(engine.load_plan(plan))
    if not _is_loopback(host) and not ssl_certfile:
        print(f"ckksnet serve: warning: listening on {host} without TLS: tokens and ciphertexts "
              "travel in clear (use --ssl-certfile/--ssl-keyfile)", file=sys.stderr)
    app = create_app(Service(store, Path(plan).resolve(), facts, limits or Limits(), workers, ray))
    uvicorn.run(app, host=host, port=port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                ssl_keyfile_password=ssl_keyfile_password, log_level=log_level)
