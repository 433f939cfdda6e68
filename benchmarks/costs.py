"""Measure the cost model's constants for a preset; with --store, install them in ckksnet/core/costs.json.

    python benchmarks/costs.py --preset test|secure [--levels 1,3,5,7,12,20] [--json PATH] [--store]
The constants (seconds per operation as c0 + c1 * levels, and the bootstrap) are what
``ckksnet plan`` estimates with. At the secure preset this generates bootstrapping keys
(about 11 GiB, 40 s): run it alone. Prints the constants, writes them to --json (default
benchmarks/costs_last.json) and a row to benchmarks/RESULTS.md; the package's shipped
ckksnet/core/costs.json is rewritten only with --store, never as a side effect of a run.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from _results import append_log, machine, peak_rss_gb, today
from ckksnet.backend import CkksClient
from ckksnet.core.costs import COSTS_PATH
from ckksnet.backend.measure import measure_costs

HEADER = "## Cost model constants (benchmarks/costs.py)"


def entry(preset: str, measured: dict, memory: dict, command: str) -> dict:
    """A preset's costs.json entry: the measured OpenFHE constants, memory figures (merged over
    the stored ones) and where they come from."""
    everything = json.loads(COSTS_PATH.read_text()) if COSTS_PATH.exists() else {}
    old = everything.get("openfhe", {}).get(preset, {})
    return {"coefficients": measured["coefficients"], "memory": {**old.get("memory", {}), **memory},
            "source": f"{today()}, {machine()}, `{command}`"}


def store(preset: str, measured: dict, memory: dict, command: str) -> None:
    """Merge a preset's OpenFHE constants into the package's costs.json (other presets and
    backends kept). Only on request (--store): the shipped constants change when asked."""
    everything = json.loads(COSTS_PATH.read_text()) if COSTS_PATH.exists() else {}
    everything.setdefault("openfhe", {})[preset] = entry(preset, measured, memory, command)
    COSTS_PATH.write_text(json.dumps(everything, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="test")
    ap.add_argument("--levels", default="1,3,5,7,12,20")
    ap.add_argument("--json", default=str(Path(__file__).parent / "costs_last.json"),
                    help="write the measured entry here (default: benchmarks/costs_last.json)")
    ap.add_argument("--store", action="store_true",
                    help="also install the constants in the package's ckksnet/core/costs.json (what `ckksnet plan` "
                         "estimates with); without it the shipped file is left alone")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    client = CkksClient(args.preset)
    client.gen_bootstrap_keys()
    keys_gib = peak_rss_gb()
    one_key = client.key_switching_key_bytes() / 2**30
    measured = measure_costs(client, [int(v) for v in args.levels.split(",")])
    memory = {"keys_gib": round(keys_gib, 2), "one_key_gib": round(one_key, 4)}
    command = "python benchmarks/costs.py " + " ".join(argv)
    Path(args.json).write_text(json.dumps({"backend": "openfhe", "preset": args.preset,
                                           **entry(args.preset, measured, memory, command)}, indent=1) + "\n")
    if args.store:
        store(args.preset, measured, memory, command)
    else:
        print(f"measured constants written to {args.json}; {COSTS_PATH} left alone (--store installs them)",
              file=sys.stderr)
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
