"""The CIFAR ResNet family (He et al. 2016: ResNet-20, 32, 44, 56, 110) at the secure preset.

    python benchmarks/resnet_family.py --plans [--depths 20,32,44,56,110] [--shortcut A]
        the secure plan of each depth, compiled without keys (one subprocess per depth, so each
        figure has its own peak memory): steps, ReLUs, bootstraps, key switches, estimated time,
        rotation-key memory and estimated peak (ckksnet.compiler.report.plan_report), compile
        time and peak RSS. Writes the section "ResNet family plans" of benchmarks/RESULTS.md.

    python benchmarks/resnet_family.py --encrypted 56 [--shortcut A] [--calibration 500]
        one encrypted image through ResNet-56 at the secure preset: a random-weight model with
        random BatchNorm statistics, calibrated on CIFAR-10 training images
        (ckksnet.data.load_cifar10("train")), default margin; time, bootstraps, peak RSS, max
        logit error against torch, the plan's estimate. Writes the section "ResNet-56 encrypted
        inference" (named by depth) of benchmarks/RESULTS.md and resnet_family_last.json.
        Needs about 13-14 GiB (the secure keys) and one to two hours on 2 cores. ``--dry-run``
        stops before key generation (compile, calibration, twin against torch: ~3 GB).

Plans need no keys; their weights are random (a schedule depends on the architecture, not on
the weight values).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from _results import machine, peak_rss_gb, replace_section, today

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' random BatchNorm helper
from tests.helpers import random_batchnorms  # noqa: E402

HERE = Path(__file__).resolve().parent
PLANS_HEADER = "## ResNet family plans (benchmarks/resnet_family.py --plans)"


def encrypted_header(depth: int) -> str:
    return f"## ResNet-{depth} encrypted inference (benchmarks/resnet_family.py --encrypted {depth})"


def random_model(depth: int, shortcut: str, seed: int = 0) -> nn.Module:
    """ResNet-``depth`` with random weights and random BatchNorm statistics, eval mode.

    Weights: torch's default initialisation (as the tests use). He et al.'s fan-out init is for
    training with batch statistics; with random running statistics that do not match the
    activations it makes a random ResNet-56 explode (ReLU inputs up to 2e6 on CIFAR-10 images,
    logits 5e5), where the default init keeps them near 2-7 (logits about 2), like a trained one."""
    from ckksnet.models.resnet import resnet_cifar

    torch.manual_seed(seed)
    model = resnet_cifar(depth, shortcut)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    return random_batchnorms(model, torch.Generator().manual_seed(seed + 1))


# ------------------------------------------------------------------ --plans
def plan_one(depth: int, shortcut: str) -> dict:
    """Compile the secure plan of one depth (no keys); JSON-ready figures."""
    import ckksnet
    from ckksnet.compiler.graph import activation_nodes, trace
    from ckksnet.compiler.report import plan_report

    model = random_model(depth, shortcut)
    relus = activation_nodes(trace(model), dict(model.named_modules()))
    t = time.time()
    plan = ckksnet.compile(model, calibration={name: {"max_abs": 4.0} for name in relus.values()}, preset="secure")
    seconds = time.time() - t
    rep = plan_report(plan)
    kinds = [s.kind for s, _, _ in plan.steps]
    return {"depth": depth, "shortcut": shortcut, "steps": len(kinds), "relus": kinds.count("relu"),
            "linear": kinds.count("linear"), "compile_seconds": round(seconds, 1),
            "compile_peak_rss_gib": round(peak_rss_gb(), 2), "totals": rep["totals"],
            "input_level": rep["input_level"], "cost_model": rep["cost_model"]}


def plans(depths: list[int], shortcut: str) -> list[dict]:
    out = []
    for depth in depths:
        print(f"compiling ResNet-{depth} (shortcut {shortcut}) at the secure preset ...", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--plan-one", str(depth), "--shortcut", shortcut],
                              capture_output=True, text=True, cwd=HERE)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"ResNet-{depth}: compile failed")
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(rec), flush=True)
        out.append(rec)
    return out


def _fmt(v, unit: str = "", digits: int = 0) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{unit}"


def plans_section(records: list[dict], argv: list[str]) -> str:
    lines = [PLANS_HEADER, "",
             f"{today()}, {machine()}. Command: `python benchmarks/resnet_family.py {' '.join(argv)}`. "
             "Secure preset, compiled without keys (random weights: a schedule depends on the architecture "
             "only), one process per depth.", "",
             "| model | steps | ReLUs | linear maps | bootstraps | key switches | estimated time | "
             "rotation keys | estimated peak | compile | compile peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = next((r["totals"]["estimated_seconds"] for r in records if r["depth"] == 20), None)
    for r in records:
        t = r["totals"]
        est = t["estimated_seconds"]
        ratio = f", {est / base:.2f} x ResNet-20" if est is not None and base else ""
        lines.append(f"| ResNet-{r['depth']} ({r['shortcut']}) | {r['steps']} | {r['relus']} | {r['linear']} | "
                     f"{t['bootstraps']} | {t['key_switches']} | "
                     f"{'n/a' if est is None else f'{est:.0f} s ({est / 60:.1f} min{ratio})'} | "
                     f"{t['automorphism_keys']} keys, {_fmt(t['rotation_key_gib'], ' GiB', 2)} | "
                     f"{_fmt(t['estimated_peak_gib'], ' GiB', 1)} | {r['compile_seconds']:.0f} s | "
                     f"{r['compile_peak_rss_gib']:.1f} GiB |")
    done = {r["depth"] for r in records}
    if 110 not in done and len(records) >= 2:  # the compile's peak grows by one layer's matrices per layer
        a, b = records[0], records[-1]
        per = (b["compile_peak_rss_gib"] - a["compile_peak_rss_gib"]) / (b["depth"] - a["depth"])
        boots = (b["totals"]["bootstraps"] - a["totals"]["bootstraps"]) / (b["depth"] - a["depth"])
        lines += ["", f"ResNet-110 not compiled in this run: its compile would peak near "
                      f"{b['compile_peak_rss_gib'] + per * (110 - b['depth']):.1f} GiB ({per:.3f} GiB per layer, the "
                      f"plan's matrices); by the same trend it makes about "
                      f"{b['totals']['bootstraps'] + boots * (110 - b['depth']):.0f} bootstraps "
                      "(`--plans --depths 110` where memory allows)."]
    source = records[0]["cost_model"] if records else ""
    lines += ["", f"Cost model: {source}. Estimated times and memory are n/a until the secure preset's cost "
                  "constants are measured (`python benchmarks/resnet20.py` or `benchmarks/costs.py --preset secure`)."
              if records and records[0]["totals"]["estimated_seconds"] is None else
              f"Cost model: {source}. Its constants are those of the hour they were measured in (see the ResNet-20 "
              "section); the ratios to ResNet-20 carry over to any hour. The estimated peak is the keys and the "
              "run's working set; the server also holds the plan (about the compile's peak RSS)."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ --encrypted
def encrypted(depth: int, shortcut: str, calibration_images: int, dry_run: bool = False) -> dict:
    import ckksnet
    from ckksnet.compiler.report import plan_report
    from ckksnet.data import load_cifar10
    from ckksnet.inference import pick_images
    from ckksnet.runtime import rotation_key_text
    from ckksnet.runtime import peak_rss_gb as run_peak

    model = random_model(depth, shortcut)
    train = load_cifar10("train")
    idx = np.random.default_rng(0).permutation(len(train))[:calibration_images]
    t = time.time()
    plan = ckksnet.compile(model, calibration=train.images[np.sort(idx)], preset="secure")
    compile_s = time.time() - t
    rep = plan_report(plan)
    images, labels, indices, source = pick_images(1)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255
    with torch.no_grad():
        want = model(x).double().numpy()[0]
    twin = plan.twin(images[:1])[0]
    if dry_run:  # everything but keys and the encrypted run
        return {"depth": depth, "compile_seconds": round(compile_s, 1), "peak_rss_gib": round(peak_rss_gb(), 2),
                "plan_bootstraps": rep["totals"]["bootstraps"], "max_abs_logit": float(np.max(np.abs(want))),
                "max_abs_twin_error_vs_torch": float(np.max(np.abs(twin - want)))}
    t = time.time()
    client = ckksnet.Client(plan)
    keygen_s = time.time() - t
    keygen_rss = run_peak()
    server = ckksnet.Server(plan, client.evaluation_keys())
    t = time.time()
    got = client.decrypt(server.run(client.encrypt(images[0]), progress=True))
    run_s = time.time() - t
    run = server.report.to_dict()
    return {"depth": depth, "shortcut": shortcut, "preset": "secure", "image": int(indices[0]), "source": source,
            "calibration_images": calibration_images, "margin": plan.options.get("margin"),
            "compile_seconds": round(compile_s, 1), "keygen_seconds": round(keygen_s, 1),
            "peak_rss_gib_after_keygen": round(keygen_rss, 2), "seconds": round(run_s, 1),
            "bootstraps": run["bootstraps"], "bootstrap_seconds": round(run["bootstrap_seconds"], 1),
            "peak_rss_gib": round(max(run["peak_rss_gb"], peak_rss_gb()), 2),
            "key_memory": rotation_key_text(client.key_memory_gb),
            "max_abs_logit_error_vs_torch": float(np.max(np.abs(got - want))),
            "max_abs_logit_error_vs_twin": float(np.max(np.abs(got - twin))),
            "max_abs_logit": float(np.max(np.abs(want))),
            "top1_torch": int(want.argmax()), "top1_encrypted": int(got.argmax()),
            "plan_bootstraps": rep["totals"]["bootstraps"], "plan_estimated_seconds": rep["totals"]["estimated_seconds"],
            "steps": run["steps"]}


def encrypted_section(r: dict, argv: list[str]) -> str:
    est = r["plan_estimated_seconds"]
    lines = [encrypted_header(r["depth"]), "",
             f"{today()}, {machine()}. Command: `python benchmarks/resnet_family.py {' '.join(argv)}`. "
             f"ResNet-{r['depth']} (shortcut {r['shortcut']}) with random weights and random BatchNorm statistics, "
             f"calibrated on {r['calibration_images']} CIFAR-10 training images (margin {r['margin']}); "
             f"image {r['image']} of {r['source']}.", "",
             "| figure | value |", "|---|---|",
             f"| time, one image | {r['seconds']:.0f} s ({r['seconds'] / 60:.1f} min) |",
             f"| bootstraps | {r['bootstraps']} ({r['bootstrap_seconds']:.0f} s); plan: {r['plan_bootstraps']} |",
             f"| plan estimate | {'n/a (no secure cost model)' if est is None else f'{est:.0f} s'} |",
             f"| key generation | {r['keygen_seconds']:.0f} s; {r['key_memory'] or 'key memory not recorded'} |",
             f"| peak RSS | {r['peak_rss_gib']:.1f} GiB (after key generation {r['peak_rss_gib_after_keygen']:.1f} GiB) |",
             f"| max abs logit error vs torch | {r['max_abs_logit_error_vs_torch']:.2e} (logits up to "
             f"{r['max_abs_logit']:.2f}); vs the twin {r['max_abs_logit_error_vs_twin']:.2e} |",
             f"| top-1 | torch {r['top1_torch']}, encrypted {r['top1_encrypted']} |",
             f"| compile | {r['compile_seconds']:.0f} s |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plans", action="store_true", help="secure plans of the family (no keys)")
    ap.add_argument("--depths", default="20,32,44,56,110")
    ap.add_argument("--shortcut", default="A", choices=["A", "B"])
    ap.add_argument("--encrypted", type=int, metavar="DEPTH", help="one encrypted image at the secure preset")
    ap.add_argument("--calibration", type=int, default=500, help="training images to calibrate on")
    ap.add_argument("--dry-run", action="store_true",
                    help="with --encrypted: compile, calibrate and run the twin only (no keys, nothing written)")
    ap.add_argument("--plan-one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    if args.plan_one:
        print(json.dumps(plan_one(args.plan_one, args.shortcut)))
        return 0
    if args.plans:
        records = plans([int(d) for d in args.depths.split(",")], args.shortcut)
        replace_section(PLANS_HEADER, plans_section(records, argv))
        (HERE / "resnet_family_plans.json").write_text(json.dumps(records, indent=1) + "\n")
    if args.encrypted and args.dry_run:
        print(json.dumps(encrypted(args.encrypted, args.shortcut, args.calibration, dry_run=True), indent=1))
        return 0
    if args.encrypted:
        res = encrypted(args.encrypted, args.shortcut, args.calibration)
        (HERE / "resnet_family_last.json").write_text(json.dumps(res, indent=1) + "\n")
        replace_section(encrypted_header(args.encrypted), encrypted_section(res, argv))
        print(json.dumps({k: v for k, v in res.items() if k != "steps"}, indent=1))
    if not (args.plans or args.encrypted):
        ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
