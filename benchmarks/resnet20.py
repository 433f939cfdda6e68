"""Full ResNet-20, encrypted, at the secure preset, on real CIFAR-10 test images.

    python benchmarks/resnet20.py [--checkpoint FOLDER] [--images 3] [--alpha A --eps-bits E]
                                  [--json [PATH]] [--store]
Writes the totals and a per-layer table, with date and machine, to benchmarks/RESULTS.md
(section "ResNet-20 encrypted inference", or "... encrypted inference, <checkpoint>" for another
checkpoint than the bundled ReLU one), replacing that section's previous run, and the raw
JSON next to it (benchmarks/resnet20_last.json, or resnet20_<checkpoint name>_last.json, with the
cost constants and the noise model this run measured). Only with --store does it also install those in the package, as the shipped
constants: the secure preset's entry of ckksnet/core/costs.json and the twin's noise model
ckksnet/fidelity/noise_secure.json; never as a side effect. Before each image a reference bootstrap (a
fresh 2^14-slot ciphertext, median of 3) is timed in the same process; ``--json`` also writes,
per image, total seconds, reference bootstrap seconds, their ratio, bootstraps by slot count,
encrypted and plaintext predictions, max logit error and peak RSS (default path
benchmarks/resnet20_images.json).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _results import machine, replace_section, today
from costs import store
from ckksnet import inference
from ckksnet.approx.composite import DEFAULT_ALPHA, DEFAULT_EPS_BITS
from ckksnet.compiler.checkpoints import SignTables
from ckksnet.deploy.flags import relu_sign_arg
from ckksnet.fidelity import NoiseModel, bundled_noise_path
from ckksnet.runtime import rotation_key_text

HEADER = "## ResNet-20 encrypted inference (benchmarks/resnet20.py)"
DEFAULT_CHECKPOINTS = (None, "resnet20", "bundled")  # the bundled ReLU ResNet-20


def header(checkpoint: str | None) -> str:
    """RESULTS.md section of a run of ``checkpoint`` (the ReLU model's keeps its old title)."""
    if checkpoint in DEFAULT_CHECKPOINTS:
        return HEADER
    return f"## ResNet-20 encrypted inference, {Path(checkpoint).name} (benchmarks/resnet20.py --checkpoint)"


def last_json(checkpoint: str | None) -> Path:
    name = "" if checkpoint in DEFAULT_CHECKPOINTS else "_" + Path(checkpoint).name.replace("-", "_")
    return Path(__file__).parent / f"resnet20{name}_last.json"


def section(res: dict, argv: list[str], checkpoint: str | None = None) -> str:
    rep = res["report"]
    total = rep["seconds"]
    lines = [header(checkpoint), "",
             f"{today()}, {machine()}. Command: `python benchmarks/resnet20.py {' '.join(argv)}`.",
             f"Checkpoint: {res['checkpoint']} ({res['checkpoint_note'] or 'final'}; plaintext accuracy "
             f"{res['plain_test_accuracy']}% on CIFAR-10 (JPEG copy)). Images: {res['source']}.", "",
             "| figure | value |", "|---|---|",
             f"| total time, one image | {total:.0f} s ({total / 60:.1f} min) |",
             f"| bootstraps | {rep['bootstraps']} ({rep['bootstrap_seconds']:.0f} s, "
             f"{100 * rep['bootstrap_seconds'] / total:.0f}% of the time) |",
             f"| key generation | {res['keygen_seconds']:.0f} s |",
             f"| rotation keys | {res['rotation_keys']} generated, "
             f"{res['key_memory_gb'].get('bootstrap_rotation_keys_reused', 0)} reused from bootstrapping "
             f"(policy {res['rotation_key_policy']}); {rotation_key_text(res['key_memory_gb']) or 'size not recorded'} |",
             f"| peak RSS | {rep['peak_rss_gb']:.1f} GiB = {rep['peak_rss_gb'] * 1.073741824:.1f} GB (after key "
             f"generation: {res['peak_rss_gb_after_keygen']:.1f} GiB) |",
             f"| activations | {activation_text(res)} |"]
    costs = res.get("costs")
    if costs:
        ref = costs["reference_bootstrap_seconds"]
        lines += [f"| reference bootstrap (same process, median of 3) | {ref:.1f} s: total = {total / ref:.1f} x it |",
                  f"| `ckksnet plan` (compile time, no keys) | {res['plan_bootstraps']} bootstraps (run: {rep['bootstraps']}); "
                  f"estimate {costs['estimate_seconds']:.0f} s with constants measured in this process "
                  f"({100 * (costs['estimate_seconds'] - total) / total:+.0f}% vs measured), "
                  f"{res['plan_estimate_seconds_stored_costs']:.0f} s with the stored ones |"]
    for r in res["images"]:
        ratio = f" = {r['ratio']:.1f} x a reference bootstrap of {r['reference_bootstrap_seconds']:.1f} s" if "ratio" in r else ""
        lines.append(f"| image {r['index']} (label {r['label']}) | plaintext {r['plain_pred']}, encrypted "
                     f"{r['enc_pred']}, max abs logit diff {r['max_abs_logit_diff']:.2e}, {r['seconds']:.0f} s{ratio}, "
                     f"peak {r['peak_rss_gb']:.1f} GiB |")
    lines += ["", "| step | kind | s | levels in -> out | bootstraps | bootstrap s | rotations (kernel) "
              "| key switches (kernel) | RSS after, GiB | peak so far, GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in rep["steps"]:
        lines.append(f"| {s['name']} | {s['kind']} | {s['seconds']:.1f} | {s['level_in']} -> {s['level_out']} | "
                     f"{s['bootstraps']} | {s['bootstrap_seconds']:.1f} | {s['rotations']} | {s.get('key_switches', '-')} | "
                     f"{s.get('rss_gb', 0.0):.2f} | {s['peak_rss_gb']:.2f} |")
    by_kind: dict[str, float] = {}
    for s in rep["steps"]:
        by_kind[s["kind"]] = by_kind.get(s["kind"], 0.0) + s["seconds"] - s["bootstrap_seconds"]
    lines += ["", "Where the time goes: bootstrapping " + f"{rep['bootstrap_seconds']:.0f} s; "
              + "; ".join(f"{k} (without bootstraps) {v:.0f} s" for k, v in sorted(by_kind.items())) + "."]
    return "\n".join(lines) + "\n"


def activation_text(res: dict) -> str:
    """What the plan's activations are: composite ReLU (its sign table) and/or polynomials."""
    kinds = res.get("activations") or {}
    parts = [f"{n} {k}" for k, n in sorted(kinds.items()) if k != "relu"]
    if kinds.get("relu", 0) or not kinds:
        parts.insert(0, f"{kinds.get('relu', '')} composite ReLU, alpha {res['alpha']}, eps 2^-{res['eps_bits']}".strip())
    return "; ".join(parts)


def per_image(res: dict, argv: list[str]) -> dict:
    """The figures issue #20 asks for, per image, with the run's configuration."""
    keys = ("index", "label", "seconds", "reference_bootstrap_seconds", "ratio", "bootstraps",
            "bootstraps_by_slots", "enc_pred", "plain_pred", "max_abs_logit_diff", "peak_rss_gb", "probe_seconds")
    return {"date": today(), "machine": machine(), "command": "python benchmarks/resnet20.py " + " ".join(argv),
            "preset": res["preset"], "alpha": res["alpha"], "eps_bits": res["eps_bits"],
            "relu_signs": res["relu_signs"], "source": res["source"],
            "plan_estimate_seconds_same_process_costs": (res.get("costs") or {}).get("estimate_seconds"),
            "plan_bootstraps": res["plan_bootstraps"], "plan_estimate_seconds": res["plan_estimate_seconds_stored_costs"],
            "images": [{k: r.get(k) for k in keys} for r in res["images"]]}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="checkpoint folder, or a bundled one by name (resnet20, the default)")
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--alpha", type=int, default=DEFAULT_ALPHA)
    ap.add_argument("--eps-bits", type=int, default=DEFAULT_EPS_BITS)
    ap.add_argument("--json", nargs="?", const=str(Path(__file__).parent / "resnet20_images.json"),
                    help="write the per-image figures here (default: benchmarks/resnet20_images.json)")
    ap.add_argument("--relu-sign", action="append", type=relu_sign_arg, default=[], metavar="PATTERN=ALPHA/EPS",
                    help="per-ReLU sign table, as for ckksnet plan")
    ap.add_argument("--no-record", action="store_true",
                    help="a side measurement: leave RESULTS.md, resnet20_last.json, costs.json and the noise model alone")
    ap.add_argument("--store", action="store_true",
                    help="install this run's cost constants and noise model in the package (ckksnet/core/costs.json, "
                         "ckksnet/fidelity/noise_secure.json); without it they are only written to resnet20_last.json")
    args = ap.parse_args(argv)
    if args.store and args.no_record:
        ap.error("--store and --no-record exclude each other")
    res = inference.run(args.images, "secure", checkpoint=args.checkpoint, signs=SignTables(args.alpha, args.eps_bits, args.relu_sign),
                        progress=True, on_image=lambda r: print(json.dumps(r), flush=True), calibrate_noise=not args.no_record,
                        measure_costs=True, reference_each=True)
    if args.json:
        Path(args.json).write_text(json.dumps(per_image(res, argv), indent=1) + "\n")
    if args.no_record:
        print(json.dumps({k: v for k, v in res.items() if k != "report"}, indent=1))
        return 0
    rep = res["report"]
    if args.store:
        store("secure", res["costs"], {"keys_gib": res["peak_rss_gb_after_keygen"],
                                       "one_key_gib": res["key_memory_gb"]["one_key"],
                                       "run_overhead_gib": round(rep["peak_rss_gb"] - res["peak_rss_gb_after_keygen"], 2)},
              "python benchmarks/resnet20.py " + " ".join(argv))
        # the per-step CKKS error of this run is the twin's noise model for the secure preset
        NoiseModel(**res["noise_model"]).save(bundled_noise_path("secure"))
    else:
        print("the package's costs.json and noise_secure.json left alone (this run's are in resnet20_last.json; "
              "--store installs them)", file=sys.stderr)
    last_json(args.checkpoint).write_text(json.dumps(res, indent=1) + "\n")
    replace_section(header(args.checkpoint), section(res, argv, args.checkpoint))
    print(json.dumps({k: v for k, v in res.items() if k != "report"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
