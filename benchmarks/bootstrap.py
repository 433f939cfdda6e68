"""Bootstrapping benchmark for any preset, with optional parameter overrides.

Measures key generation (time, peak RSS), one bootstrap (time), precision after bootstrap
(bits = -log2 max |error| on uniform values in [-1, 1]), levels left after a bootstrap, and
the time of one rotation and one ct x ct multiplication at that level. Appends one row, with
date and machine, to ``benchmarks/RESULTS.md``.

    python benchmarks/bootstrap.py --preset secure
    python benchmarks/bootstrap.py --preset secure --dnum 4 --depth 22 --level-budget 2 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from _results import append_log, machine, peak_rss_gb, today
from ckksnet.backend import CkksClient
from ckksnet.core.preset import get_preset

LOG_HEADER = "## Benchmark log: bootstrap.py (appended automatically)"
COLUMNS = ("date", "machine", "preset", "N", "slots", "scale/first", "dnum", "depth", "budget",
           "secret", "iter", "keygen s", "peak RSS GB", "bootstrap s", "bits", "levels left",
           "rotate s", "mult s")


def preset_from_args(args: argparse.Namespace):
    p = get_preset(args.preset)
    changes = {k: v for k, v in {
        "scaling_bits": args.scaling, "first_mod_bits": args.first, "dnum": args.dnum,
        "depth": args.depth, "slots": args.slots, "secret_dist": args.secret,
        "bootstrap_iterations": args.iterations, "bootstrap_precision": args.first_precision,
        "level_budget": tuple(args.level_budget) if args.level_budget else None,
    }.items() if v is not None}
    return p.with_(name=f"{p.name}*" if changes else p.name, **changes) if changes else p


def run(p, repeats: int) -> dict:
    t0 = time.time()
    client = CkksClient(p)
    client.gen_bootstrap_keys()
    client.gen_rotation_keys([1])
    keygen = time.time() - t0
    server = client.server()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, p.slots)
    ct = client.encrypt(x, levels_left=1)  # bootstrap from a nearly spent ciphertext
    times, errs = [], []
    for _ in range(repeats):
        t = time.time()
        out = server.bootstrap(ct)
        times.append(time.time() - t)
        errs.append(float(np.max(np.abs(client.decrypt(out) - x))))
    levels = server.levels_left(out)
    t = time.time(); server.rotate(out, 1); rot = time.time() - t
    t = time.time(); server.mul(out, out); mult = time.time() - t
    return {"keygen_s": keygen, "peak_rss_gb": peak_rss_gb(), "bootstrap_s": float(np.median(times)),
            "bits": float(-np.log2(max(errs))), "levels_left": levels, "rotate_s": rot, "mult_s": mult,
            "expected_levels_left": p.levels_after_bootstrap}


def append_row(p, r: dict) -> None:
    row = (today(), machine(), p.name, f"2^{p.ring_dim.bit_length() - 1}",
           f"2^{p.slots.bit_length() - 1}", f"{p.scaling_bits}/{p.first_mod_bits}", p.dnum, p.depth,
           f"[{p.level_budget[0]},{p.level_budget[1]}]", p.secret_dist, p.bootstrap_iterations,
           f"{r['keygen_s']:.1f}", f"{r['peak_rss_gb']:.1f}", f"{r['bootstrap_s']:.1f}", f"{r['bits']:.1f}",
           r["levels_left"], f"{r['rotate_s']:.3f}", f"{r['mult_s']:.3f}")
    append_log(LOG_HEADER, COLUMNS, row)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="secure")
    ap.add_argument("--scaling", type=int)
    ap.add_argument("--first", type=int)
    ap.add_argument("--dnum", type=int)
    ap.add_argument("--depth", type=int)
    ap.add_argument("--slots", type=int)
    ap.add_argument("--secret", choices=["SPARSE_ENCAPSULATED", "SPARSE_TERNARY", "UNIFORM_TERNARY"])
    ap.add_argument("--level-budget", type=int, nargs=2)
    ap.add_argument("--iterations", type=int, help="2 = iterated (Meta-BTS) bootstrapping")
    ap.add_argument("--first-precision", type=int, help="bits of the first pass, for --iterations 2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-record", action="store_true", help="print only; do not touch RESULTS.md")
    args = ap.parse_args(argv)
    p = preset_from_args(args)
    result = run(p, args.repeats)
    print(json.dumps({"preset": p.describe(), **result}, default=str))
    if not args.no_record:
        append_row(p, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
