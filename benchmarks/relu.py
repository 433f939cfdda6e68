"""One composite ReLU on a full ciphertext: time, levels in and out, error against exact ReLU.

    python benchmarks/relu.py --preset secure --alpha 13
Appends a row, with date and machine, to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from _results import append_log, machine, peak_rss_gb, today
from ckksnet.approx import ReluApprox
from ckksnet.backend import CkksClient

LOG_HEADER = "## Benchmark log: relu.py (appended automatically)"
COLUMNS = ("date", "machine", "preset", "slots", "alpha", "eps", "degrees", "B", "levels in",
           "levels out", "ReLU s", "products", "max err vs ReLU", "max err vs twin", "bound (twin, grid)",
           "peak RSS GB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="secure")
    ap.add_argument("--alpha", type=int, default=13)
    ap.add_argument("--eps-bits", type=int, default=9)
    ap.add_argument("--bound", type=float, default=1.0, help="B; inputs are uniform in [-B, B]")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    relu = ReluApprox.from_table(args.alpha, args.bound, args.eps_bits)
    client = CkksClient(args.preset)
    server = client.server()
    rng = np.random.default_rng(0)
    t = rng.uniform(-1, 1, client.slots)
    t[:256] = np.linspace(-4 * relu.sign.eps, 4 * relu.sign.eps, 256)  # the region near zero
    x = t * args.bound
    ct = client.encrypt(t, levels_left=relu.depth(prescaled=True))  # the compiler folds 1/B before
    start = time.time()
    out = relu.encrypted(server, ct, prescaled=True)
    seconds = time.time() - start
    got = client.decrypt(out) * args.bound
    twin = relu.twin(t, prescaled=True) * args.bound
    res = {"levels_in": server.levels_left(ct), "levels_out": server.levels_left(out), "seconds": seconds,
           "products": relu.sign.products + 1, "err_relu": float(np.max(np.abs(got - np.maximum(x, 0)))),
           "err_twin": float(np.max(np.abs(got - twin))), "bound_grid": relu.max_error()}
    print(json.dumps(res))
    if not args.no_record:
        append_log(LOG_HEADER, COLUMNS, (
            today(), machine(), client.preset.name, client.slots, args.alpha, f"2^-{args.eps_bits}",
            "/".join(map(str, relu.sign.degrees)), args.bound, res["levels_in"], res["levels_out"],
            f"{seconds:.1f}", res["products"], f"{res['err_relu']:.2e}", f"{res['err_twin']:.2e}",
            f"{res['bound_grid']:.2e}", f"{peak_rss_gb():.1f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
