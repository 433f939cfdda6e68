"""The HTTP side of ``ckksnet serve``: a FastAPI application (see the package docstring for
the endpoints). It never loads a key: uploads are streamed to disk and checked by their
envelope headers and checksums, and jobs are handed to the worker processes through SQLite."""
from __future__ import annotations

import secrets
import shutil
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import ClientDisconnect

from ckksnet.core.envelope import atomic_path
from ckksnet.errors import CkksnetError
from ckksnet.deploy import engine
from ckksnet.deploy.service.bundle import TarReceiver
from ckksnet.deploy.errors import (AuthError, BadUploadError, ConflictError, ForbiddenError,
                                            InvalidKeysError, NotFoundError, QueueFullError, ServiceError,
                                            StorageError, TooLargeError)
from ckksnet.deploy.service.ray_supervisor import RaySupervisor
from ckksnet.deploy.service.store import Store, job_view, token_hash, token_matches
from ckksnet.deploy.service.supervisor import Supervisor

GiB, MiB = 1 << 30, 1 << 20


@dataclass(frozen=True)
class Limits:
    """Request limits. Sizes in bytes."""

    max_body: int = 16 * GiB  # a key-set upload (a secure-preset bundle is about 11 GiB)
    max_ciphertext: int = 64 * MiB  # a submitted ciphertext (secure preset, full depth: ~25 MiB)
    max_keysets: int = 8  # key sets stored at once
    max_queued: int = 64  # jobs waiting at once, all key sets together
    min_free_disk: int = 1 * GiB  # free space left in the state folder after an upload


@dataclass
class Service:
    """What the application serves: the state, the plan (path and facts), limits, workers."""

    store: Store
    plan_path: Path
    plan: dict  # engine.describe_plan: preset name, number of steps
    limits: Limits
    workers: int = 1
    #: run the queue on Ray actors: "local" (a local Ray instance) or a cluster address; None:
    #: local worker processes (:mod:`.supervisor`)
    ray: str | None = None


_bearer = HTTPBearer(auto_error=False)


def _token(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
    """The presented bearer token; 401 if there is none."""
    if credentials is None or not credentials.credentials:
        raise AuthError("an access token is required (Authorization: Bearer TOKEN)")
    return credentials.credentials


def _content_length(request: Request, limit: int) -> int | None:
    """The declared body length (None if chunked); 413 above ``limit``."""
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise BadUploadError("malformed Content-Length")
    if int(value) > limit:
        raise TooLargeError(f"the body of {int(value)} bytes exceeds this server's limit of {limit} bytes")
    return int(value)


async def _read_limited(request: Request, limit: int) -> bytes:
    """The whole body (for small bodies: ciphertexts); 413 as soon as it exceeds ``limit``."""
    _content_length(request, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLargeError(f"the body exceeds this server's limit of {limit} bytes")
    return bytes(body)


def create_app(svc: Service) -> FastAPI:
    """The FastAPI application for ``svc``; its lifespan recovers the state folder (jobs that
    were running are marked failed) and runs the workers."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        svc.store.clear_leftovers()
        svc.store.fail_running("the server restarted during the job")
        if svc.ray is None:
            supervisor = Supervisor(svc.store, svc.plan_path, svc.workers)
        else:
            supervisor = RaySupervisor(svc.store, svc.plan_path, svc.workers,
                                       None if svc.ray == "local" else svc.ray)
        supervisor.start()
        try:
            yield
        finally:
            await run_in_threadpool(supervisor.stop)

    app = FastAPI(title="ckksnet inference service", lifespan=lifespan)
    app.add_exception_handler(CkksnetError, _error_response)
    _add_routes(app, svc)
    return app


def _error_response(_request: Request, exc: CkksnetError) -> JSONResponse:
    status = exc.status if isinstance(exc, ServiceError) else 400
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


def _owned_keyset(svc: Service, keyset_id: str, token: str):
    """The key set row if ``token`` is its token; 403 otherwise (also for an unknown id)."""
    row = svc.store.keyset(keyset_id)
    if row is None or not token_matches(token, row["token_sha256"]):
        raise ForbiddenError("this token does not grant access to that key set")
    return row


def _owned_job(svc: Service, job_id: str, token: str):
    """The job row if ``token`` is its key set's token; 404 otherwise (also for an unknown id)."""
    row = svc.store.job(job_id)
    keyset = svc.store.keyset(row["keyset_id"]) if row is not None else None
    if keyset is None or not token_matches(token, keyset["token_sha256"]):
        raise NotFoundError(f"no job {job_id} for this token")
    return row


def _job_answer(svc: Service, row) -> dict:
    view = job_view(row)
    if row["state"] == "queued":
        view["position"] = svc.store.queue_position(row["id"])
    return view


def _check_disk(svc: Service, length: int | None) -> None:
    free = shutil.disk_usage(svc.store.root).free
    if free - (length or 0) < svc.limits.min_free_disk:
        raise StorageError(f"not enough free disk space in the state folder ({free} bytes free)")


async def _receive_bundle(svc: Service, request: Request, folder: Path) -> dict[str, int]:
    """Stream the request's tar into ``folder``; 413 above ``max_body``, 400 if malformed."""
    receiver, received = TarReceiver(folder, lambda name: engine.bundle_file_allowed(name, svc.plan["backend"])), 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > svc.limits.max_body:
                raise TooLargeError(f"the upload exceeds this server's limit of {svc.limits.max_body} bytes")
            receiver.feed(chunk)
    except ClientDisconnect:
        raise BadUploadError("the client disconnected during the upload") from None
    except OSError as exc:
        raise StorageError(f"the upload could not be stored: {exc}") from exc
    finally:
        receiver.close()
    return receiver.finish()


def _admit_upload(svc: Service, request: Request) -> None:
    """Refuse an upload before its body is read: 413 above ``max_body``, 409 when the key-set
    limit is reached, 507 when the disk would fill."""
    length = _content_length(request, svc.limits.max_body)
    svc.store.check_room(None, svc.limits.max_keysets)
    _check_disk(svc, length)


def _store_keyset(svc: Service, folder: Path) -> dict:
    """Validate a received bundle and move it into place under a new token (blocking: hashes
    every key file)."""
    info = engine.validate_bundle(folder, svc.plan["backend"], svc.plan["preset"])
    token = secrets.token_urlsafe(32)
    svc.store.add_keyset(info.keyset_id, token_hash(token), info.preset, info.files, folder, svc.limits.max_keysets)
    return {"keyset_id": info.keyset_id, "token": token, "preset": info.preset, "files": info.files}


async def upload_keyset(svc: Service, request: Request) -> dict:
    """Store an uploaded evaluation-key bundle; a new key set id and access token. The body is
    written to disk chunk by chunk in the event loop (page-cache writes); everything that may
    block longer (SQLite, hashing) runs in the thread pool."""
    await run_in_threadpool(_admit_upload, svc, request)
    folder = svc.store.root / "uploads" / secrets.token_hex(8)
    folder.mkdir()
    try:
        await _receive_bundle(svc, request, folder)
        return await run_in_threadpool(_store_keyset, svc, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # gone already if it was moved into place


def _enqueue(svc: Service, keyset_id: str, data: bytes) -> dict:
    """Check a ciphertext (intact, of ``keyset_id``) and queue it; the job's status."""
    found = engine.ciphertext_keyset(data)
    if found != keyset_id:
        raise InvalidKeysError(f"the ciphertext belongs to key set {found[:12]}..., not to {keyset_id[:12]}...")
    if svc.store.queued_count() >= svc.limits.max_queued:
        raise QueueFullError(f"{svc.limits.max_queued} jobs are queued already; try again later")
    job_id = secrets.token_hex(16)
    path = svc.store.input_path(job_id)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    svc.store.add_job(job_id, keyset_id, len(data))
    return _job_answer(svc, svc.store.job(job_id))


async def submit_job(svc: Service, keyset_id: str, request: Request, token: str) -> dict:
    """Queue one ciphertext of ``keyset_id`` for inference (403 before the body is read if the
    token is not the key set's)."""
    await run_in_threadpool(_owned_keyset, svc, keyset_id, token)
    data = await _read_limited(request, svc.limits.max_ciphertext)
    return await run_in_threadpool(_enqueue, svc, keyset_id, data)


def _add_routes(app: FastAPI, svc: Service) -> None:
    @app.get("/health")
    def health() -> dict:
        """Liveness, the plan's preset and step count, and the limits a client must respect."""
        return {"status": "ok", **svc.plan, "keysets": svc.store.keyset_count(), "limits": asdict(svc.limits)}

    @app.post("/keysets", status_code=201)
    async def post_keyset(request: Request) -> dict:
        """Upload an evaluation-key bundle (an uncompressed tar, application/x-tar)."""
        return await upload_keyset(svc, request)

    @app.get("/keyset")
    def get_own_keyset(token: str = Depends(_token)) -> dict:
        """The id of the key set the token grants (a client that kept only its token)."""
        row = svc.store.keyset_of_token(token)
        if row is None:
            raise ForbiddenError("this token grants no key set")
        return {"keyset_id": row["id"]}

    @app.get("/keysets/{keyset_id}")
    def get_keyset(keyset_id: str, token: str = Depends(_token)) -> dict:
        """The key set's files and jobs."""
        row = _owned_keyset(svc, keyset_id, token)
        return {"keyset_id": keyset_id, "preset": row["preset"], "bytes": row["bytes"], "created": row["created"],
                "jobs": [job_view(j) for j in svc.store.jobs_of(keyset_id)]}

    @app.delete("/keysets/{keyset_id}", status_code=204)
    def delete_keyset(keyset_id: str, token: str = Depends(_token)) -> Response:
        """Delete the key set, its jobs and their results (409 while one of its jobs runs)."""
        _owned_keyset(svc, keyset_id, token)
        svc.store.delete_keyset(keyset_id)
        return Response(status_code=204)

    @app.post("/keysets/{keyset_id}/jobs", status_code=202)
    async def post_job(keyset_id: str, request: Request, token: str = Depends(_token)) -> dict:
        """Queue a ciphertext (a ckksnet ciphertext envelope, application/octet-stream)."""
        return await submit_job(svc, keyset_id, request, token)

    @app.get("/jobs/{job_id}")
    def get_job(job_id: str, token: str = Depends(_token)) -> dict:
        """State: queued (with its position), running (step of steps), done, failed (error)."""
        return _job_answer(svc, _owned_job(svc, job_id, token))

    @app.delete("/jobs/{job_id}", status_code=204)
    def delete_job(job_id: str, token: str = Depends(_token)) -> Response:
        """Forget a queued, done or failed job and its files (409 while it runs)."""
        _owned_job(svc, job_id, token)
        svc.store.delete_job(job_id)
        return Response(status_code=204)

    @app.get("/jobs/{job_id}/result")
    def get_result(job_id: str, token: str = Depends(_token)) -> FileResponse:
        """The output ciphertext envelope of a done job (409 before)."""
        row = _owned_job(svc, job_id, token)
        if row["state"] != "done":
            raise ConflictError(f"job {job_id} is {row['state']}" + (f": {row['error']}" if row["error"] else ""))
        return FileResponse(svc.store.result_path(job_id), media_type="application/octet-stream")
