"""Secure encrypted inference through ``ckksnet serve`` on localhost: one real CIFAR-10 test image.

    python benchmarks/serve.py            # the benchmark: secure preset, bundled ResNet-20, the first
                                          # official test image; alone on the machine (~13 GiB peak)
    python benchmarks/serve.py --preset test --checkpoint DIR --image PNG --image-size 8 --alpha 8 --eps-bits 8
                                          # a check of this script (insecure, small, a few minutes)

Each step is the command a user runs, in a process of its own: ``ckksnet compile``, ``ckksnet
keygen`` (it exits before the server loads the keys: about 11 GiB each), ``ckksnet encrypt``,
``ckksnet serve`` in the background on a free loopback port (its own session, stopped at the
end), then the upload of the evaluation keys, the submission of the ciphertext and the wait
through :class:`ckksnet.deploy.remote.RemoteClient` (what ``ckksnet query`` runs) in this process, then,
with the server stopped, ``ckksnet decrypt`` and ``ckksnet predict`` (the torch model).

Measured: the wall time and peak RSS of each client process; the upload (bytes, seconds); the
server side as the worker records it in ``STATE/workers.jsonl`` (key-load seconds, resident
memory after the load, inference seconds, bootstraps, the worker's peak RSS) and as sampled from
outside (the worker's and the HTTP process's RSS at each poll); the job's timeline (submitted,
claimed, first step, done); the result download. Compared: the encrypted prediction and logits
with the torch model's and with the in-process run of ``benchmarks/resnet20.py``
(``benchmarks/resnet20_last.json``, its ``images[0]``), when the image is test image 0.

Records: a secure-preset run replaces the RESULTS.md section "## Secure inference through ckksnet
serve (benchmarks/serve.py)" and writes the raw JSON to ``benchmarks/serve_last.json``
(``--no-record``: neither). Any other preset is a check of this script: it writes nothing under
``benchmarks/`` unless ``--record`` is given, and then the section "## ckksnet serve check run
(benchmarks/serve.py, insecure preset; not a benchmark)" and ``benchmarks/serve_check_last.json``.
Every run writes its JSON to ``WORK/serve.json``. ``WORK`` (default ``runs/serve``) holds the
keys twice at the secure preset (client copy and the server's, ~22 GiB): they are deleted at the
end unless ``--keep``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from _results import machine, replace_section, today

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HEADER = "## Secure inference through ckksnet serve (benchmarks/serve.py)"
CHECK_HEADER = "## ckksnet serve check run (benchmarks/serve.py, insecure preset; not a benchmark)"
MARKER = ".benchmarks-serve"  # a work folder this script made (and may empty)
GiB = 2**30


# ---------------------------------------------------------------- processes
def ckksnet_command() -> str:
    """The ckksnet executable beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "ckksnet"
    return str(beside) if beside.exists() else (shutil.which("ckksnet") or "ckksnet")


def run_step(name: str, args: list[str], work: Path) -> dict:
    """Run one command to its end: its JSON stdout (``--json``), wall seconds and peak RSS (GiB,
    from wait4). stderr passes through (progress); stdout is kept in WORK/<name>.json."""
    out_path = work / f"{name}.json"
    print(f"[serve.py] {name}: {' '.join(args)}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    with out_path.open("w") as out:
        proc = subprocess.Popen(args, stdout=out)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"[serve.py] {name} failed ({proc.returncode}): {' '.join(args)}")
    return {"seconds": round(seconds, 2), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3),
            "output": json.loads(out_path.read_text())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``ckksnet serve`` in the background, in a session of its own (workers included)."""

    def __init__(self, cmd: str, plan: Path, state: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("w") as fh:
            self.proc = subprocess.Popen([cmd, "serve", "--plan", str(plan), "--state", str(state), "--port",
                                          str(self.port), "--log-level", "warning"],
                                         stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)
        self.max_rss = {"http_gb": 0.0, "worker_gb": 0.0}

    def wait_healthy(self, timeout: float = 300.0) -> float:
        from ckksnet.deploy.remote import RemoteClient, RemoteError

        t0 = time.monotonic()
        with RemoteClient(self.url) as remote:
            while True:
                if self.proc.poll() is not None:
                    raise SystemExit(f"[serve.py] ckksnet serve exited:\n{self.log.read_text()[-3000:]}")
                try:
                    remote.health()
                    return time.monotonic() - t0
                except RemoteError:
                    if time.monotonic() - t0 > timeout:
                        raise SystemExit(f"[serve.py] no answer on {self.url}/health in {timeout:.0f} s") from None
                    time.sleep(0.5)

    def sample(self) -> None:
        """Note the RSS of the HTTP process and of its workers (largest so far)."""
        try:
            self.max_rss["http_gb"] = max(self.max_rss["http_gb"], self.ps.memory_info().rss / GiB)
            for child in self.ps.children(recursive=True):
                self.max_rss["worker_gb"] = max(self.max_rss["worker_gb"], child.memory_info().rss / GiB)
        except psutil.Error:
            pass

    def stop(self) -> None:
        """SIGTERM (the server stops its workers), then SIGKILL to the session after 60 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()


# ---------------------------------------------------------------- the flow
def default_image(work: Path) -> tuple[Path, int, str]:
    """The first official CIFAR-10 test image as a PNG; (path, label, class name)."""
    from PIL import Image

    from ckksnet.data import load_cifar10

    split = load_cifar10("test", "foolbox")
    path = work / "cifar10_test_0.png"
    Image.fromarray(split.images[0]).save(path)
    label = int(split.labels[0])
    return path, label, split.classes[label]


def prepare_work(work: Path) -> None:
    if work.exists():
        if not (work / MARKER).exists() and any(work.iterdir()):
            raise SystemExit(f"[serve.py] {work} exists and was not made by this script; pass another --work")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).touch()


def flow(args: argparse.Namespace, work: Path) -> dict:
    cmd = ckksnet_command()
    t_start = time.monotonic()
    res: dict = {"date": today(), "machine": machine(), "preset": args.preset,
                 "checkpoint": args.checkpoint or "bundled", "alpha": args.alpha, "eps_bits": args.eps_bits}
    if args.image:
        image, res["image"] = Path(args.image), {"file": args.image, "index": None, "label": None}
    else:
        image, label, name = default_image(work)
        res["image"] = {"file": "CIFAR-10 official test image 0 (foolbox 3.3.4)", "index": 0, "label": label,
                        "label_name": name}
    ck = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    plan, keys = work / "plan", work / "keys"
    steps = res["steps"] = {}

    # model owner, then the client (keygen's process ends before the server loads the keys)
    steps["compile"] = run_step("compile", [cmd, "compile", *ck, "--preset", args.preset, "--out", str(plan),
                                            "--image-size", str(args.image_size), "--alpha", str(args.alpha),
                                            "--eps-bits", str(args.eps_bits), "--json"], work)
    steps["keygen"] = run_step("keygen", [cmd, "keygen", "--client", str(plan / "client_plan.ckksnet"),
                                          "--out", str(keys), "--json"], work)
    steps["encrypt"] = run_step("encrypt", [cmd, "encrypt", str(image), "--keys", str(keys), "--client",
                                            str(plan / "client_plan.ckksnet"), "--out", str(work / "ct"), "--json"],
                                work)
    ct_path = Path(steps["encrypt"]["output"]["ciphertexts"][0]["ciphertext"])

    # the server
    state = work / "state"
    server = Served(cmd, plan / "server_plan.ckksnet", state, work / "serve.log")
    try:
        res["server_start_seconds"] = round(server.wait_healthy(), 2)
        res["service"] = served_part(server, keys / "eval", ct_path, work / "out.ckks", state, args.poll)
    finally:
        server.stop()
    res["service"]["max_rss_sampled_gb"] = {k: round(v, 3) for k, v in server.max_rss.items()}

    # the client again, with the server gone
    steps["decrypt"] = run_step("decrypt", [cmd, "decrypt", str(work / "out.ckks"), "--keys", str(keys),
                                            "--client", str(plan / "client_plan.ckksnet"), "--json"], work)
    steps["predict"] = run_step("predict", [cmd, "predict", str(image), *ck, "--image-size", str(args.image_size),
                                            "--json"], work)
    res["total_seconds"] = round(time.monotonic() - t_start, 1)
    res["comparison"] = compare(res, steps["decrypt"]["output"], steps["predict"]["output"]["predictions"][0])
    return res


def served_part(server: Served, eval_keys: Path, ct_path: Path, out_path: Path, state: Path, poll: float) -> dict:
    """Upload, submit, wait, download; the worker's own records."""
    from ckksnet.deploy.remote import RemoteClient
    from ckksnet.deploy.service.bundle import tar_length

    part: dict = {"url": server.url}
    with RemoteClient(server.url) as remote:
        length = tar_length(eval_keys)
        t0 = time.monotonic()
        keyset_id, _token = remote.upload_keys(eval_keys, progress=True)
        up = time.monotonic() - t0
        part["upload"] = {"bytes": length, "seconds": round(up, 2), "mb_per_s": round(length / up / 1e6, 1),
                          "keyset_id": keyset_id}
        server.sample()

        data = ct_path.read_bytes()
        timeline: dict = {}
        t_submit = time.monotonic()
        job_id = remote.submit(data)
        timeline["submit_seconds"] = round(time.monotonic() - t_submit, 3)

        def on_status(job: dict) -> None:
            server.sample()
            now = round(time.monotonic() - t_submit, 2)
            if job["state"] in ("running", "done") and "claimed_after_s" not in timeline:
                timeline["claimed_after_s"] = now
            if (job.get("step") or 0) >= 1 and "first_step_after_s" not in timeline:
                timeline["first_step_after_s"] = now  # keys loaded, ciphertext read

        job = remote.wait(job_id, progress=True, poll=poll, on_status=on_status)
        timeline["done_after_s"] = round(time.monotonic() - t_submit, 2)
        t0 = time.monotonic()
        result = remote.result(job_id)
        timeline["download_seconds"] = round(time.monotonic() - t0, 3)
        out_path.write_bytes(result)
        part["job"] = {"id": job_id, "steps": job["steps"], "input_bytes": job["input_bytes"],
                       "output_bytes": job["output_bytes"],
                       "server_seconds": round(job["finished"] - job["started"], 2), "client_timeline": timeline}
        remote.delete_keys()
    records = [json.loads(line) for line in (state / "workers.jsonl").read_text().splitlines()]
    loaded = [r for r in records if r["event"] == "keys_loaded" and r["keyset_id"] == keyset_id]
    done = [r for r in records if r["event"] == "job_done" and r["job_id"] == job_id]
    if not loaded or not done:
        raise SystemExit(f"[serve.py] the worker did not record its key load and job: {records}")
    part["worker"] = {"keys_loaded": loaded[-1], "job_done": done[-1]}
    return part


def compare(res: dict, enc: dict, plain: dict) -> dict:
    """The encrypted logits against the torch model's and, for test image 0 at the secure preset,
    against benchmarks/resnet20.py's in-process run."""
    out = {"encrypted_pred": enc["predicted_index"], "encrypted_class": enc["predicted"],
           "plaintext_pred": plain["predicted_index"], "encrypted_logits": enc["logits"],
           "plaintext_logits": plain["logits"],
           "max_abs_diff_vs_plaintext": max(abs(a - b) for a, b in zip(enc["logits"], plain["logits"])),
           "same_as_plaintext": enc["predicted_index"] == plain["predicted_index"]}
    last = HERE / "resnet20_last.json"
    if res["image"]["index"] == 0 and res["preset"] == "secure" and res["checkpoint"] == "bundled" and last.exists():
        ref = json.loads(last.read_text())
        img = ref["images"][0]
        if img.get("index") == 0 and "logits" in img:
            out["in_process"] = {
                "file": "benchmarks/resnet20_last.json", "preset": ref.get("preset"), "alpha": ref.get("alpha"),
                "eps_bits": ref.get("eps_bits"), "logits": img["logits"], "pred": img["enc_pred"],
                "seconds": img.get("seconds"), "peak_rss_gb": ref["report"]["peak_rss_gb"],
                "max_abs_diff_vs_served": max(abs(a - b) for a, b in zip(enc["logits"], img["logits"])),
                "max_abs_diff_vs_plaintext": img.get("max_abs_logit_diff"),
                "same_pred_as_served": img["enc_pred"] == enc["predicted_index"]}
    return out


# ---------------------------------------------------------------- RESULTS.md
def section(res: dict, header: str, argv: list[str]) -> str:
    st, svc, cmp_ = res["steps"], res["service"], res["comparison"]
    up, job, sampled = svc["upload"], svc["job"], svc["max_rss_sampled_gb"]
    load, done, tl = svc["worker"]["keys_loaded"], svc["worker"]["job_done"], job["client_timeline"]
    comp, keygen, kg = st["compile"]["output"], st["keygen"], st["keygen"]["output"]
    image = res["image"]
    img_text = image["file"] + (f", label {image['label']} ({image['label_name']})"
                                if image["label"] is not None else "")
    rows = [
        ("compile (`ckksnet compile`)", f"{st['compile']['seconds']:.0f} s"),
        ("key generation (`ckksnet keygen`, own process)",
         f"{keygen['seconds']:.0f} s wall ({kg['keygen_seconds']:.0f} s keys, {kg['save_seconds']:.0f} s "
         f"writing), peak RSS {keygen['peak_rss_gb']:.1f} GiB"),
        ("evaluation keys", f"{kg['eval_keys_bytes'] / GiB:.2f} GiB on disk"),
        ("encrypt (`ckksnet encrypt`)", f"{st['encrypt']['seconds']:.0f} s, peak RSS "
         f"{st['encrypt']['peak_rss_gb']:.2f} GiB, ciphertext {job['input_bytes'] / 2**20:.1f} MiB"),
        ("server start (until /health answers)", f"{res['server_start_seconds']:.0f} s"),
        ("upload of the evaluation keys", f"{up['bytes'] / GiB:.2f} GiB ({up['bytes']} bytes) in "
         f"{up['seconds']:.0f} s ({up['mb_per_s']:.0f} MB/s, validation included)"),
        ("worker: key load", f"{load['seconds']:.0f} s; resident {load['rss_gb']:.2f} GiB after it"),
        ("worker: inference", f"{done['seconds']:.0f} s ({done['seconds'] / 60:.1f} min; plan run "
         f"{done['run_seconds']:.0f} s, {done['bootstraps']} bootstraps, {done['bootstrap_seconds']:.0f} s of them)"),
        ("worker: peak RSS", f"{done['peak_rss_gb']:.2f} GiB = {done['peak_rss_gb'] * 1.073741824:.1f} GB "
         f"(sampled from outside: {sampled['worker_gb']:.2f} GiB; HTTP process {sampled['http_gb']:.2f} GiB)"),
        ("job as the client saw it", f"claimed after {tl.get('claimed_after_s', 0):.1f} s, first step after "
         f"{tl.get('first_step_after_s', 0):.0f} s, done after {tl['done_after_s']:.0f} s; server-side "
         f"started -> finished {job['server_seconds']:.0f} s; result {job['output_bytes'] / 2**20:.2f} MiB "
         f"in {tl['download_seconds']:.2f} s"),
        ("decrypt (`ckksnet decrypt`)", f"{st['decrypt']['seconds']:.0f} s, peak RSS "
         f"{st['decrypt']['peak_rss_gb']:.2f} GiB"),
        ("total, compile to prediction", f"{res['total_seconds']:.0f} s ({res['total_seconds'] / 60:.1f} min)"),
        ("prediction", f"encrypted {cmp_['encrypted_pred']} ({cmp_['encrypted_class']}), plaintext (torch) "
         f"{cmp_['plaintext_pred']}: {'same' if cmp_['same_as_plaintext'] else 'DIFFERENT'}; max abs logit "
         f"difference {cmp_['max_abs_diff_vs_plaintext']:.2e}")]
    ref = cmp_.get("in_process")
    if ref:
        rows.append((f"against the in-process run (resnet20_last.json, image 0; alpha {ref['alpha']}, "
                     f"eps 2^-{ref['eps_bits']})",
                     f"prediction {ref['pred']} ({'same' if ref['same_pred_as_served'] else 'DIFFERENT'}); max abs "
                     f"logit difference served vs in-process {ref['max_abs_diff_vs_served']:.2e} (in-process vs "
                     f"plaintext {ref['max_abs_diff_vs_plaintext']:.2e}); in-process {ref['seconds']:.0f} s, "
                     f"peak {ref['peak_rss_gb']:.1f} GiB"))
    fmt = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"  # noqa: E731
    lines = [header, "",
             f"{res['date']}, {res['machine']}. Command: `{' '.join(['python benchmarks/serve.py', *argv])}`.",
             f"Preset {res['preset']}, checkpoint {res['checkpoint']}, ReLU alpha {res['alpha']}, eps "
             f"2^-{res['eps_bits']}; {comp['steps']} steps, {comp['bootstraps']} bootstraps planned. Image: "
             f"{img_text}. Every step is its own process (the CLI); the server is `ckksnet serve` on 127.0.0.1 "
             "with one worker.", "", "| figure | value |", "|---|---|",
             *(f"| {k} | {v} |" for k, v in rows), "",
             f"Logits, encrypted through the service: {fmt(cmp_['encrypted_logits'])}; torch: "
             f"{fmt(cmp_['plaintext_logits'])}" + (f"; in-process encrypted: {fmt(ref['logits'])}" if ref else "")
             + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="secure")
    ap.add_argument("--checkpoint", help="checkpoint folder (default: the bundled ResNet-20)")
    ap.add_argument("--image", help="PNG/JPEG/.npy of the model's size (default: CIFAR-10 test image 0)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--alpha", type=int, default=13)
    ap.add_argument("--eps-bits", type=int, default=9)
    ap.add_argument("--work", default=str(ROOT / "runs" / "serve"), help="work folder (emptied first)")
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between job status requests")
    ap.add_argument("--keep", action="store_true", help="keep the keys and the server's state in WORK")
    rec = ap.add_mutually_exclusive_group()
    rec.add_argument("--record", action="store_true", help="record a check run (non-secure preset) too")
    rec.add_argument("--no-record", action="store_true", help="record nothing under benchmarks/")
    args = ap.parse_args(argv)

    work = Path(args.work).resolve()
    prepare_work(work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the server is stopped (finally)
    try:
        res = flow(args, work)
    finally:
        if not args.keep:
            for sub in ("keys", "state"):
                shutil.rmtree(work / sub, ignore_errors=True)
    text = json.dumps(res, indent=1) + "\n"
    (work / "serve.json").write_text(text)
    secure = args.preset == "secure"
    if (secure and not args.no_record) or (not secure and args.record):
        (HERE / ("serve_last.json" if secure else "serve_check_last.json")).write_text(text)
        header = HEADER if secure else CHECK_HEADER
        replace_section(header, section(res, header, argv))
        print(f"[serve.py] recorded in {HERE / 'RESULTS.md'} ({header})", file=sys.stderr)
    print(section(res, HEADER if secure else CHECK_HEADER, argv))
    return 0 if res["comparison"]["same_as_plaintext"] else 1


if __name__ == "__main__":
    sys.exit(main())
