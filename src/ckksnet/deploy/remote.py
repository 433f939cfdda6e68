"""The Python client of ``ckksnet serve`` (see :mod:`ckksnet.deploy.service` for the endpoints).

    remote = RemoteClient("https://host:8443", verify="ca.pem")
    keyset_id, token = remote.upload_keys("keys/eval")   # once; keep the token secret
    job = remote.submit(ciphertext_bytes)                # a ckksnet ciphertext envelope
    remote.wait(job, progress=True)                      # a tqdm bar over the plan's steps
    out = remote.result(job)                             # the output ciphertext envelope

Later sessions pass the token: ``RemoteClient(url, token=token)``. Every failure raises a
:class:`RemoteError` (a :class:`ckksnet.CkksnetError`) carrying the HTTP status and the
server's detail; a failed job raises :class:`JobFailedError` from :meth:`RemoteClient.wait`.
"""
from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable

import httpx
from tqdm import tqdm

from ckksnet.deploy.service.bundle import tar_length, tar_stream
from ckksnet.errors import CkksnetError

TERMINAL = ("done", "failed")


class RemoteError(CkksnetError):
    """The service refused a request (``status``: its HTTP status, 0 if it was not reached)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class JobFailedError(RemoteError):
    """A job ended in the failed state; ``job`` is its last status."""

    def __init__(self, message: str, job: dict):
        super().__init__(message, 200)
        self.job = job


class RemoteClient:
    """A session with one inference server. ``token``: the key set's access token (set by
    :meth:`upload_keys`); ``keyset_id``: its key set (default: the one each ciphertext names);
    ``verify``: TLS verification (True, False, or a CA bundle path); ``timeout`` in seconds."""

    def __init__(self, url: str, token: str | None = None, keyset_id: str | None = None,
                 verify: bool | str = True, timeout: float = 60.0):
        self.url, self.token, self.keyset_id = url.rstrip("/"), token, keyset_id
        if isinstance(verify, (str, os.PathLike)):
            verify = ssl.create_default_context(cafile=os.fspath(verify))
        self.http = httpx.Client(base_url=self.url, verify=verify, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "RemoteClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, auth: bool = True, **kwargs) -> httpx.Response:
        """Send a request; raise :class:`RemoteError` for a 4xx/5xx answer or no answer."""
        headers = kwargs.pop("headers", {})
        if auth:
            if not self.token:
                raise RemoteError("no access token: upload keys first, or give the token (ckksnet query --token or "
                                  "$CKKSNET_TOKEN; RemoteClient(token=...) in Python)")
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = self.http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(f"{method} {self.url}{path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise RemoteError(f"{method} {path}: HTTP {response.status_code}: {_detail(response)}",
                              response.status_code)
        return response

    # ------------------------------------------------------------ API
    def health(self) -> dict:
        """The server's status, plan (preset, steps) and limits."""
        return self._request("GET", "/health", auth=False).json()

    def upload_keys(self, eval_folder: str | os.PathLike, progress: bool = False) -> tuple[str, str]:
        """Upload an evaluation-key folder (streamed as a tar, never held in memory); remember
        and return (keyset_id, token). Checks the server's size and key-set limits first, so
        that a refused bundle is not sent (the server checks them again)."""
        length, health = tar_length(eval_folder), self.health()
        limits = health["limits"]
        if length > limits["max_body"]:
            raise RemoteError(f"the bundle is {length} bytes, the server accepts at most {limits['max_body']}", 413)
        if health["keysets"] >= limits["max_keysets"]:
            raise RemoteError(f"the server stores its maximum of {limits['max_keysets']} key sets", 409)
        with tqdm(total=length, unit="B", unit_scale=True, desc="upload keys", disable=not progress) as bar:
            answer = self._request("POST", "/keysets", auth=False, content=tar_stream(eval_folder, bar.update),
                                   headers={"Content-Length": str(length), "Content-Type": "application/x-tar"},
                                   timeout=httpx.Timeout(self.http.timeout.connect, read=None, write=None)).json()
        self.keyset_id, self.token = answer["keyset_id"], answer["token"]
        return self.keyset_id, self.token

    def keyset(self) -> dict:
        """The key set's facts and its jobs."""
        return self._request("GET", f"/keysets/{self._keyset()}").json()

    def delete_keys(self) -> str:
        """Delete the key set, its jobs and results from the server; returns its id."""
        keyset = self._keyset()
        self._request("DELETE", f"/keysets/{keyset}")
        return keyset

    def submit(self, ciphertext: bytes) -> str:
        """Queue a ciphertext envelope for inference; its job id."""
        keyset = self.keyset_id or _ciphertext_keyset(ciphertext)
        return self._request("POST", f"/keysets/{keyset}/jobs", content=ciphertext,
                             headers={"Content-Type": "application/octet-stream"}).json()["id"]

    def status(self, job_id: str) -> dict:
        """The job's state: queued (position), running (step of steps), done, failed (error)."""
        return self._request("GET", f"/jobs/{job_id}").json()

    def wait(self, job_id: str, progress: bool = True, poll: float = 0.5, timeout: float | None = None,
             on_status: Callable[[dict], None] | None = None) -> dict:
        """Poll until the job is done (its last status) or failed (:class:`JobFailedError`);
        if ``progress``, a tqdm bar over the plan's steps ("step k/N"). ``on_status`` sees every
        status polled. ``timeout`` in seconds (None: no limit) raises :class:`RemoteError`."""
        start = time.monotonic()
        # the plan's step count from the start: a job's own status carries it only once it runs
        steps = self.health().get("steps") if progress else None
        with tqdm(total=steps, desc=f"job {job_id[:8]}", unit="step", disable=not progress) as bar:
            while True:
                job = self.status(job_id)
                if on_status is not None:
                    on_status(job)
                _show(bar, job)
                if job["state"] in TERMINAL:
                    break
                if timeout is not None and time.monotonic() - start > timeout:
                    raise RemoteError(f"job {job_id} still {job['state']} after {timeout} s")
                time.sleep(poll)
        if job["state"] == "failed":
            raise JobFailedError(f"job {job_id} failed: {job['error']}", job)
        return job

    def result(self, job_id: str) -> bytes:
        """The output ciphertext envelope of a done job (HTTP 409 before)."""
        return self._request("GET", f"/jobs/{job_id}/result").content

    def run(self, ciphertext: bytes, progress: bool = True) -> bytes:
        """Submit, wait and fetch the result of one ciphertext."""
        job = self.submit(ciphertext)
        self.wait(job, progress=progress)
        return self.result(job)

    def _keyset(self) -> str:
        """The key set id: given, from the upload, or asked of the server for the token."""
        if not self.keyset_id:
            self.keyset_id = self._request("GET", "/keyset").json()["keyset_id"]
        return self.keyset_id


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:500]


def _show(bar: tqdm, job: dict) -> None:
    """Move the progress bar to the steps the job has done and say its state: queued (its
    position), running step k of N (and the step's name), done or failed."""
    if job.get("steps") and bar.total != job["steps"]:
        bar.total = job["steps"]
    state, step = job["state"], int(job.get("step") or 0)
    bar.n = (bar.total or step) if state == "done" else max(step - 1, 0)  # step k runs: k - 1 are done
    of = f"/{bar.total}" if bar.total else ""
    text = {"queued": f"queued, position {job.get('position', 0)}",
            "running": f"step {max(step, 1)}{of}" + (f" ({job['step_name']})" if job.get("step_name") else "")}
    bar.set_postfix_str(text.get(state, state), refresh=False)
    bar.refresh()


def _ciphertext_keyset(ciphertext: bytes) -> str:
    """The key set id in a ciphertext envelope's header."""
    from ckksnet.deploy.engine import ciphertext_keyset

    return ciphertext_keyset(ciphertext, service=False)

