"""Bootstrapping at several slot counts in one secure context (issue #20, lever 1).

For each ``SLOTS:B1,B2`` set-up (slot count and its CoeffsToSlots/SlotsToCoeffs level budget)
this runs ``EvalBootstrapSetup`` and ``EvalBootstrapKeyGen`` in one OpenFHE context built from
the secure preset, then measures per slot count: the key memory it added (RSS after key
generation, GiB, and the automorphism keys it added), the bootstrap time (median of 3, seconds,
from a ciphertext with 1 level left), the precision (bits = -log2 max |error| on uniform values in
[-1, 1] in the n slots) and the levels left after it. The first set-up is the reference.

OpenFHE has a reported bug where sparse-slot bootstrapping returns wrong values for some level
budgets: the precision column is that check.

    python benchmarks/sparse_bootstrap.py 16384:3,3 8192:3,3 4096:3,3 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from _results import machine, peak_rss_gb, today
from ckksnet.core.memory import rss_gb, trim
from ckksnet.backend.presets import build_crypto_context
from ckksnet.core.preset import get_preset


def parse_setup(text: str) -> tuple[int, list[int]]:
    slots, budget = text.split(":")
    return int(slots), [int(b) for b in budget.split(",")]


def automorphism_count(cc, tag: str) -> int:
    return len(cc.GetExistingEvalAutomorphismKeyIndices(tag))


def measure(setups: list[tuple[int, list[int]]], overrides: dict, repeats: int, preset: str = "secure") -> dict:
    p = get_preset(preset).with_(**overrides) if overrides else get_preset(preset)
    cc = build_crypto_context(p)
    keys = cc.KeyGen()
    cc.EvalMultKeyGen(keys.secretKey)
    tag = keys.secretKey.GetKeyTag()
    out = {"preset": {k: v for k, v in p.describe().items() if k != "notes"}, "setups": []}
    t = time.time()
    for slots, budget in setups:
        cc.EvalBootstrapSetup(budget, [0, 0], slots)
    out["setup_s"] = time.time() - t
    for slots, budget in setups:
        before_keys, before_rss = automorphism_count(cc, tag), rss_gb()
        t = time.time()
        cc.EvalBootstrapKeyGen(keys.secretKey, slots)
        trim()
        out["setups"].append({"slots": slots, "level_budget": budget, "keygen_s": time.time() - t,
                              "keys_added": automorphism_count(cc, tag) - before_keys,
                              "rss_added_gib": rss_gb() - before_rss, "rss_gib": rss_gb()})
        print(json.dumps(out["setups"][-1]), flush=True)
    rng = np.random.default_rng(0)
    for row in out["setups"]:
        n = row["slots"]
        x = rng.uniform(-1, 1, n)
        pt = cc.MakeCKKSPackedPlaintext(x.tolist(), 1, p.depth - 2, None, n)
        ct = cc.Encrypt(keys.publicKey, pt)
        times, errs = [], []
        for _ in range(repeats):
            t = time.time()
            fresh = cc.EvalBootstrap(ct)
            times.append(time.time() - t)
            dec = cc.Decrypt(keys.secretKey, fresh)
            dec.SetLength(n)
            errs.append(float(np.max(np.abs(np.array(dec.GetRealPackedValue()) - x))))
        row.update(bootstrap_s=float(np.median(times)), bootstrap_times=times,
                   bits=float(-np.log2(max(errs))),
                   levels_left=p.depth - fresh.GetLevel() - (fresh.GetNoiseScaleDeg() - 1))
        print(json.dumps(row), flush=True)
    ref = out["setups"][0]["bootstrap_s"]
    for row in out["setups"]:
        row["ratio_to_first"] = row["bootstrap_s"] / ref
    out.update(peak_rss_gib=peak_rss_gb(), date=today(), machine=machine(),
               command="python benchmarks/sparse_bootstrap.py " + " ".join(sys.argv[1:]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("setups", nargs="+", type=parse_setup, help="SLOTS:B1,B2, the first is the reference")
    ap.add_argument("--preset", default="secure")
    ap.add_argument("--dnum", type=int)
    ap.add_argument("--depth", type=int)
    ap.add_argument("--scaling", type=int)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in {"dnum": args.dnum, "depth": args.depth,
                                   "scaling_bits": args.scaling}.items() if v is not None}
    out = measure(args.setups, overrides, args.repeats, args.preset)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
