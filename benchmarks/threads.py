"""OpenMP threads x wait policy x load: what makes OpenFHE slow on a shared machine (issue 38).

Each configuration runs in a fresh process (libgomp reads OMP_NUM_THREADS and OMP_WAIT_POLICY
once, when it loads): a test-preset client with bootstrapping keys, then the reference bootstrap
(:func:`ckksnet.backend.measure.reference_bootstrap`: one untimed call, then the median of
``--repeats``). The added load is busy-loop processes this script starts before the
configuration and stops after it; the load of other work is recorded beside each row.

    python benchmarks/threads.py                          # the whole matrix (run on a quiet machine)
    python benchmarks/threads.py --threads 1 --policies unset --loads 0   # one configuration

Prints a Markdown table and writes ``benchmarks/threads_last.json`` (machine, date, command, rows).
The whole matrix is 18 configurations of about 10-30 s each on an idle 2-core machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "threads_last.json"

CHILD = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
from ckksnet.backend import CkksClient
from ckksnet.backend.measure import reference_bootstrap
from ckksnet.backend.ops_openfhe import openmp_report
t = time.perf_counter()
client = CkksClient(sys.argv[1])
client.gen_bootstrap_keys()
keygen = time.perf_counter() - t
seconds = reference_bootstrap(client, int(sys.argv[2]))
print(json.dumps({"bootstrap_seconds": seconds, "keygen_seconds": keygen, **openmp_report()}))
"""


def _loadavg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def start_load(n: int) -> list[subprocess.Popen]:
    """``n`` busy-loop processes (one core each while they run)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def measure(threads: int, policy: str, added: int, preset: str, repeats: int, settle: float) -> dict:
    """One configuration in a fresh process; the busy loops run around it."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("CKKSNET_OMP_WAIT_POLICY", None)
    if policy != "unset":
        env["OMP_WAIT_POLICY"] = policy.upper()
    load_before = _loadavg()
    busy = start_load(added)
    try:
        time.sleep(settle if added else 0)  # the loops get going before the timed part
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, preset, str(repeats)], env=env, capture_output=True,
                             text=True)
        wall = time.perf_counter() - t
    finally:
        stop_load(busy)
    if out.returncode != 0:
        raise SystemExit(f"configuration threads={threads} policy={policy} load+{added} failed:\n{out.stderr}")
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {"threads": threads, "wait_policy": policy, "added_load": added, "load_before": load_before,
            "bootstrap_seconds": round(child["bootstrap_seconds"], 3),
            "keygen_seconds": round(child["keygen_seconds"], 2), "process_seconds": round(wall, 1),
            "openmp_threads_at_load": child.get("openmp_threads_at_load"), "repeats": repeats}


def table(rows: list[dict], threads: list[int]) -> str:
    """Rows: added load x wait policy; columns: bootstrap seconds per thread count, and the ratio of
    the most threads to one thread where both were run."""
    head = ["added load", "OMP_WAIT_POLICY"] + [f"{t} thread{'s' if t > 1 else ''} (s)" for t in threads]
    ratio = 1 in threads and len(threads) > 1
    if ratio:
        head.append(f"{max(threads)} / 1")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = []
    for r in rows:
        if (r["added_load"], r["wait_policy"]) not in keys:
            keys.append((r["added_load"], r["wait_policy"]))
    for load, policy in keys:
        by = {r["threads"]: r["bootstrap_seconds"] for r in rows
              if (r["added_load"], r["wait_policy"]) == (load, policy)}
        cells = [f"+{load}", policy] + [f"{by[t]:.2f}" if t in by else "" for t in threads]
        if ratio:
            cells.append(f"{by[max(threads)] / by[1]:.2f}" if max(threads) in by and 1 in by else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fastest(rows: list[dict]) -> dict:
    """Per added load, the fastest configuration (threads, wait policy)."""
    best: dict = {}
    for r in rows:
        b = best.get(r["added_load"])
        if b is None or r["bootstrap_seconds"] < b["bootstrap_seconds"]:
            best[r["added_load"]] = r
    return {str(k): {"threads": v["threads"], "wait_policy": v["wait_policy"],
                     "bootstrap_seconds": v["bootstrap_seconds"]} for k, v in sorted(best.items())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="OMP_NUM_THREADS values (default 1 2)")
    p.add_argument("--policies", nargs="+", default=["active", "passive", "unset"],
                   choices=["active", "passive", "unset"], help="OMP_WAIT_POLICY values (default all three)")
    p.add_argument("--loads", type=int, nargs="+", default=[0, 2, 4],
                   help="busy-loop processes added around each configuration (default 0 2 4)")
    p.add_argument("--repeats", type=int, default=3, help="timed bootstraps per process; their median (default 3)")
    p.add_argument("--preset", default="test", help="CKKS preset (default test)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds the busy loops run before a configuration")
    p.add_argument("--out", type=Path, default=OUT, help=f"JSON written (default {OUT.relative_to(HERE.parent)})")
    args = p.parse_args(argv)

    from ckksnet.core.threads import usable_cores

    started = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    for added in args.loads:
        for policy in args.policies:
            for threads in args.threads:
                row = measure(threads, policy, added, args.preset, args.repeats, args.settle)
                print(f"  threads {threads}, {policy}, load +{added}: {row['bootstrap_seconds']:.2f} s "
                      f"(other load {row['load_before']})", file=sys.stderr, flush=True)
                rows.append(row)
    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    result = {"machine": f"{platform.machine()} {os.cpu_count()} cores ({usable_cores()} usable), {cpu}",
              "date": started.isoformat(timespec="seconds"),
              "command": "python benchmarks/threads.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
              "preset": args.preset, "load_at_start": rows[0]["load_before"] if rows else None,
              "median_of": args.repeats, "rows": rows, "fastest_per_added_load": fastest(rows),
              "bootstrap_seconds_median_all": round(statistics.median(r["bootstrap_seconds"] for r in rows), 3)}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Test-preset reference bootstrap (median of {args.repeats}), {result['machine']}, {result['date']}, "
          f"load of other work at start {result['load_at_start']}:\n")
    print(table(rows, sorted(set(args.threads))))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
