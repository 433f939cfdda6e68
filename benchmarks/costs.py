"""Measure the cost model's constants for a preset and store them in ckksnet/core/costs.json.

    python benchmarks/costs.py --preset test|secure [--levels 1,3,5,7,12,20]
The constants (seconds per operation as c0 + c1 * levels, and the bootstrap) are what
``ckksnet plan`` estimates with. At the secure preset this generates bootstrapping keys
(about 11 GiB, 40 s): run it alone. Writes a row to benchmarks/RESULTS.md too.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from _results import append_log, machine, peak_rss_gb, today
from ckksnet.backend import CkksClient
from ckksnet.core.costs import COSTS_PATH
from ckksnet.backend.measure import measure_costs

HEADER = "## Cost model constants (benchmarks/costs.py)"


def store(preset: str, measured: dict, memory: dict, command: str) -> None:
    """Merge a preset's OpenFHE constants into costs.json (other presets and backends kept)."""
    everything = json.loads(COSTS_PATH.read_text()) if COSTS_PATH.exists() else {}
    table = everything.setdefault("openfhe", {})
    old = table.get(preset, {})
    table[preset] = {"coefficients": measured["coefficients"],
                     "memory": {**old.get("memory", {}), **memory},
                     "source": f"{today()}, {machine()}, `{command}`"}
    COSTS_PATH.write_text(json.dumps(everything, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="test")
    ap.add_argument("--levels", default="1,3,5,7,12,20")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    client = CkksClient(args.preset)
    client.gen_bootstrap_keys()
    keys_gib = peak_rss_gb()
    one_key = client.key_switching_key_bytes() / 2**30
    measured = measure_costs(client, [int(v) for v in args.levels.split(",")])
    store(args.preset, measured, {"keys_gib": round(keys_gib, 2), "one_key_gib": round(one_key, 4)},
          "python benchmarks/costs.py " + " ".join(argv))
    c = measured["coefficients"]
    append_log(HEADER, ("date", "machine", "preset", "bootstrap s", "rotation s (c0 + c1 L)",
                        "relinearization s", "plain product s", "keys GiB"),
               (today(), machine(), args.preset, c.get("bootstrap", ["-"])[0], f"{c['rotation'][0]} + {c['rotation'][1]} L",
                f"{c['relinearization'][0]} + {c['relinearization'][1]} L",
                f"{c['plain_product'][0]} + {c['plain_product'][1]} L", round(keys_gib, 2)))
    print(json.dumps(measured["coefficients"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
