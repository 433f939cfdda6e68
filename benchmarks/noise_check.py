"""Does the twin's CKKS noise model match the encrypted run? (secure preset)

    python benchmarks/noise_check.py [--seeds 50]

Takes the encrypted logits of benchmarks/resnet20_last.json (written by resnet20.py, which also
measured the noise model), and compares their deviation from the exact twin with the deviation
of the noisy twin (one draw per seed) on the same images. The stated tolerance: the encrypted
max |logit - exact twin| lies within a factor 3 of the noisy twin's median. Writes the figures
to benchmarks/RESULTS.md (section "Noise model check").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from _results import machine, replace_section, today
from ckksnet.compiler import compile
from ckksnet.data import load_cifar10
from ckksnet.fidelity import bundled_noise
from ckksnet.models import load_bundled

HEADER = "## Noise model check (benchmarks/noise_check.py)"
TOLERANCE = 3.0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=50)
    args = ap.parse_args(argv)
    run = json.loads((Path(__file__).parent / "resnet20_last.json").read_text())
    model, meta = load_bundled()
    net = compile(model, calibration=meta["calibration"]["relus"], preset=run["preset"],
                  alpha=run["alpha"], eps_bits=run["eps_bits"])
    noise = bundled_noise(run["preset"])
    if noise is None:
        raise SystemExit(f"no noise model shipped for {run['preset']}: run benchmarks/resnet20.py first")
    split = load_cifar10("test", "foolbox")
    rows = []
    for rec in run["images"]:
        image = split.images[rec["index"]]
        exact = net.twin(image[None])[0]
        enc = np.max(np.abs(np.array(rec["logits"]) - exact))
        noisy = [np.max(np.abs(net.twin(image[None], noise=noise, seed=s)[0] - exact)) for s in range(args.seeds)]
        med = float(np.median(noisy))
        rows.append({"index": rec["index"], "encrypted": float(enc), "twin_median": med,
                     "twin_p10": float(np.percentile(noisy, 10)), "twin_p90": float(np.percentile(noisy, 90)),
                     "ratio": float(enc / med), "within": bool(1 / TOLERANCE <= enc / med <= TOLERANCE)})
    lines = [HEADER, "", f"{today()}, {machine()}. Command: `python benchmarks/noise_check.py {' '.join(argv)}`.",
             f"Noise model: {noise.source}. Encrypted logits from benchmarks/resnet20_last.json (rounded "
             "to 1e-5 there). Tolerance: encrypted within a factor "
             f"{TOLERANCE:g} of the noisy twin's median ({args.seeds} draws).", "",
             "| image | encrypted max abs logit - exact twin | noisy twin: median (p10-p90) | ratio | within |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['index']} | {r['encrypted']:.2e} | {r['twin_median']:.2e} ({r['twin_p10']:.2e}-"
                     f"{r['twin_p90']:.2e}) | {r['ratio']:.2f} | {'yes' if r['within'] else 'NO'} |")
    section = "\n".join(lines) + "\n"
    replace_section(HEADER, section)
    print(json.dumps(rows, indent=1))
    return 0 if all(r["within"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
