"""The secure-preset parameter study: runs benchmarks/bootstrap.py for each candidate in its own
process (so peak RSS is per candidate) and records failures (rejected parameters, out of memory).

    python benchmarks/param_study.py            # all candidates
    python benchmarks/param_study.py 0 3        # candidates 0 and 3 only
"""
from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Each entry: bootstrap.py overrides on top of the secure preset (N = 2^16, 128-bit classic).
CANDIDATES: list[list[str]] = [
    [],                                                                   # 59/60 dnum 3 depth 20 [3,3]
    ["--dnum", "4", "--depth", "22"],
    ["--dnum", "6", "--depth", "23"],
    ["--scaling", "57", "--first", "60", "--dnum", "4", "--depth", "23"],
    ["--dnum", "4", "--depth", "22", "--level-budget", "2", "2"],
    ["--scaling", "50", "--first", "56", "--dnum", "5", "--depth", "26", "--iterations", "2",
     "--first-precision", "9"],
    ["--scaling", "52", "--first", "58", "--dnum", "4", "--depth", "24", "--iterations", "2",
     "--first-precision", "11"],
    ["--dnum", "4", "--depth", "22", "--level-budget", "3", "2"],
    ["--slots", "32768"],
]


def main(argv: list[str]) -> int:
    picks = [int(a) for a in argv] or range(len(CANDIDATES))
    for i in picks:
        args = [sys.executable, str(HERE / "bootstrap.py"), "--preset", "secure", *CANDIDATES[i]]
        print(f"[{i}] {' '.join(CANDIDATES[i]) or '(secure preset as is)'}", flush=True)
        proc = subprocess.run(args, capture_output=True, text=True)
        print(proc.stdout[-2000:], proc.stderr[-1500:] if proc.returncode else "", flush=True)
        if proc.returncode:
            reason = "killed (out of memory?)" if proc.returncode < 0 else proc.stderr.strip().splitlines()[-1][:200]
            with open(HERE / "RESULTS.md", "a") as fh:
                fh.write(f"<!-- {datetime.date.today()} candidate {' '.join(CANDIDATES[i])}: "
                         f"failed, exit {proc.returncode}: {reason} -->\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
