"""Does the twin's CKKS noise model match the encrypted runs? (secure preset)

    python benchmarks/noise_check.py [--seeds 30] [--state runs/fidelity/encrypted.jsonl] [--fit [--store]]

Encrypted logits come from two places: benchmarks/resnet20_last.json (written by resnet20.py,
which also measured the noise model; official test images from foolbox) and the resumable
record of ``ckksnet fidelity --encrypted K`` (CIFAR-10 JPEG copy test images, every one on
record), when it exists and matches the compiled plan. For every image, the encrypted deviation from the exact
twin, max |logit - exact twin|, is compared with the noisy twin's (one draw per seed).

Stated tolerance: every image's encrypted deviation lies within a factor 3 of the noisy twin's
median; the pooled check compares the RMS logit deviation over all images (encrypted against
noisy twin), also within a factor 3. Writes the figures to benchmarks/RESULTS.md (section
"Noise model check"). ``--fit`` fits the noise model's factor and checks with it; only with
``--store`` is the fitted model saved as the package's shipped one
(ckksnet/fidelity/noise_<preset>.json), never as a side effect.
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
from ckksnet.fidelity import EncryptedLog, NoiseModel, bundled_noise, bundled_noise_path, plan_identity
from ckksnet.models import load_bundled

HEADER = "## Noise model check (benchmarks/noise_check.py)"
TOLERANCE = 3.0


def encrypted_records(run: dict, net, state: Path | None, data: str | None) -> list[dict]:
    """[{source, index, image, logits}] from the benchmark run and the fidelity record."""
    foolbox = load_cifar10("test", "foolbox")
    out = [{"source": "foolbox", "index": r["index"], "image": foolbox.images[r["index"]],
            "logits": np.array(r["logits"])} for r in run["images"]]
    if state is not None and state.exists():
        log = EncryptedLog(state, plan_identity(net))  # raises if it records another plan
        split = load_cifar10("test", data)
        out += [{"source": "jpeg", "index": i, "image": split.images[i], "logits": np.array(r["logits"])}
                for i, r in sorted(log.records.items())]
    return out


def check(net, noise, rec: dict, seeds: int) -> dict:
    """One image: encrypted and noisy-twin deviations from the exact twin."""
    exact = net.twin(rec["image"][None])[0]
    noisy = net.twin(np.repeat(rec["image"][None], seeds, axis=0), noise=noise, seed=rec["index"]) - exact
    enc = rec["logits"] - exact
    per_draw = np.abs(noisy).max(axis=1)
    med = float(np.median(per_draw))
    ratio = float(np.abs(enc).max() / med)
    return {"source": rec["source"], "index": rec["index"], "encrypted": float(np.abs(enc).max()),
            "twin_median": med, "twin_p10": float(np.percentile(per_draw, 10)),
            "twin_p90": float(np.percentile(per_draw, 90)), "ratio": ratio,
            "within": bool(1 / TOLERANCE <= ratio <= TOLERANCE),
            "enc_sq": float(np.sum(enc ** 2)), "twin_sq": float(np.mean(np.sum(noisy ** 2, axis=1))),
            "n": int(enc.size)}


def pool(rows: list[dict]) -> dict:
    """RMS logit deviation over all the rows' logits, encrypted and noisy twin."""
    n = sum(r["n"] for r in rows)
    out = {"images": len(rows), "rms_encrypted": float(np.sqrt(sum(r["enc_sq"] for r in rows) / n)),
           "rms_twin": float(np.sqrt(sum(r["twin_sq"] for r in rows) / n)),
           "median_ratio": float(np.median([r["ratio"] for r in rows]))}
    out["rms_ratio"] = out["rms_encrypted"] / out["rms_twin"]
    out["within"] = bool(1 / TOLERANCE <= out["rms_ratio"] <= TOLERANCE)
    return out


def fit_factor(net, noise: NoiseModel, records: list[dict], seeds: int, store: bool = False) -> None:
    """Scale the noise model so that the twin's RMS logit deviation equals the encrypted one on
    ``records`` (deviations are linear in the noise at these sizes); with ``store``, save it as
    the package's shipped model."""
    noise.factor = 1.0
    ratio = pool([check(net, noise, rec, seeds) for rec in records])["rms_ratio"]
    noise.factor = round(ratio, 3)
    names = ", ".join(f"{r['source']} {r['index']}" for r in records)
    noise.fit = f"fitted {today()} on {len(records)} encrypted images ({names}) by benchmarks/noise_check.py --fit"
    if store:
        noise.save(bundled_noise_path(noise.preset))
    else:
        print(f"fitted factor {noise.factor}; {bundled_noise_path(noise.preset)} left alone (--store saves it)",
              file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--state", default="runs/fidelity/encrypted.jsonl",
                    help="record of `ckksnet fidelity --encrypted K` ('' to skip)")
    ap.add_argument("--data", default=None, help="CIFAR-10 location for the record's images")
    ap.add_argument("--fit", action="store_true",
                    help="fit the noise model's factor on the first half of the images, then check all of them")
    ap.add_argument("--store", action="store_true",
                    help="with --fit: save the fitted model as the package's noise file "
                         "(ckksnet/fidelity/noise_<preset>.json); without it the shipped file is left alone")
    args = ap.parse_args(argv)
    if args.store and not args.fit:
        ap.error("--store saves a fitted noise model: give --fit too")
    run = json.loads((Path(__file__).parent / "resnet20_last.json").read_text())
    model, meta = load_bundled()
    net = compile(model, calibration=meta["calibration"]["relus"], preset=run["preset"],
                  alpha=run["alpha"], eps_bits=run["eps_bits"])
    noise = bundled_noise(run["preset"])
    if noise is None:
        raise SystemExit(f"no noise model shipped for {run['preset']}: run benchmarks/resnet20.py first")
    records = encrypted_records(run, net, Path(args.state) if args.state else None, args.data)
    n_fit = max(1, len(records) // 2) if args.fit else len(records)
    if args.fit:
        fit_factor(net, noise, records[:n_fit], args.seeds, args.store)
    rows = [check(net, noise, rec, args.seeds) for rec in records]
    pooled = pool(rows)
    held = rows[n_fit:]  # images this run's fit did not see (none without --fit)
    if held:
        pooled["held_out"] = pool(held)
    replace_section(HEADER, render(rows, pooled, noise, args, argv))
    print(json.dumps({"pooled": pooled, "images": rows}, indent=1))
    return 0 if pooled["within"] and all(r["within"] for r in rows) else 1


def render(rows: list[dict], pooled: dict, noise, args, argv) -> str:
    lines = [HEADER, "", f"{today()}, {machine()}. Command: `python benchmarks/noise_check.py {' '.join(argv)}`.",
             f"Noise model: {noise.source}. Encrypted logits: benchmarks/resnet20_last.json (foolbox "
             f"images, rounded to 1e-5 there) and {args.state or 'no fidelity record'} (CIFAR-10 JPEG "
             f"copy). Tolerance: a factor {TOLERANCE:g}, per image (encrypted max deviation against the "
             f"noisy twin's median over {args.seeds} draws) and pooled (RMS logit deviation).", "",
             f"**Pooled over {pooled['images']} images: RMS deviation encrypted {pooled['rms_encrypted']:.2e}, "
             f"noisy twin {pooled['rms_twin']:.2e}, ratio {pooled['rms_ratio']:.2f} "
             f"({'within' if pooled['within'] else 'OUTSIDE'} the factor {TOLERANCE:g}); median per-image "
             f"ratio {pooled['median_ratio']:.2f}; {sum(r['within'] for r in rows)} of {len(rows)} images "
             "within.**", "",
             f"Noise model factor {noise.factor:g}" + (f" ({noise.fit})" if noise.fit else " (not fitted)") + "."
             + (f" Held-out images only ({pooled['held_out']['images']}, not used by the fit): RMS ratio "
                f"{pooled['held_out']['rms_ratio']:.2f}." if "held_out" in pooled else ""), "",
             "| images | index | encrypted max abs logit - exact twin | noisy twin: median (p10-p90) | ratio | within |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['source']} | {r['index']} | {r['encrypted']:.2e} | {r['twin_median']:.2e} "
                     f"({r['twin_p10']:.2e}-{r['twin_p90']:.2e}) | {r['ratio']:.2f} | "
                     f"{'yes' if r['within'] else 'NO'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
