"""ReLU domain extension (``compile(..., relu_extension=L)``): what it costs and what it buys,
on the bundled ResNet-20 at the secure preset. Compiles only: no key is made.

    python benchmarks/relu_extension.py [--images 1000] [--extensions 1,2,4,8] [--json OUT]

Per configuration (margin, L): the plan's bootstraps and key switches
(``ckksnet.compiler.report.plan_report``), its estimated time, the levels of one ReLU, and the
twin's fidelity on the first N test images (CIFAR-10, JPEG copy) against the plaintext model:
top-1 identical %, logit errors, images whose logits diverged, ReLU inputs beyond B and beyond
L B (the approximation's interval). The twin runs with the secure noise model (CKKS noise, in
stored units: an extension L makes it log2 L bits larger relative to B), and exactly for some.

Time: the cost model's estimate when one is stored for the preset; else (and always, as
``scaled_seconds``) the measured ResNet-20 run in ``benchmarks/resnet20_last.json`` rescaled:
its linear, pooling and addition steps as measured, each ReLU's kernel time times the ratio of
ciphertext products (the sign composite's, plus the final one), and the plan's bootstraps at
that run's mean seconds per bootstrap.

Stress images (out of distribution, pixels still valid): salt and pepper (10% of the pixels set
to 0 or 255) and a contrast of 2 (x -> clip(0.5 + 2 (x - 0.5))), which reach 1.36 and 1.23 x
the calibrated maxima (clean test images: 0.99); with margin 1.0 they go beyond B.

Prints a Markdown section for benchmarks/RESULTS.md and writes the raw JSON
(``benchmarks/relu_extension_last.json`` by default).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ckksnet.approx import ReluApprox
from ckksnet.compiler import compile
from ckksnet.core.plan import ActivationRangeWarning
from ckksnet.compiler.report import plan_report
from ckksnet.data import load_cifar10
from ckksnet.fidelity import bundled_noise, summarize
from ckksnet.models import load_bundled

HEADER = "## ReLU inputs beyond B: domain extension and its cost (benchmarks/relu_extension.py)"


def plaintext(model, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        return torch.cat([model(x[i:i + 250]) for i in range(0, len(x), 250)]).double().numpy()


def contrast(images: np.ndarray, k: float = 2.0) -> np.ndarray:
    x = images.astype(np.float64) / 255
    return np.round(np.clip(0.5 + k * (x - 0.5), 0, 1) * 255).astype(np.uint8)


def salt_and_pepper(images: np.ndarray, p: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hit = rng.random(images.shape[:3] + (1,)) < p
    return np.where(hit, rng.integers(0, 2, images.shape[:3] + (1,)) * 255, images).astype(np.uint8)


def scaled_seconds(plan, reference: dict) -> dict:
    """The reference run's seconds, rescaled to ``plan`` (see the module docstring)."""
    from ckksnet.approx.evaluate import count_products

    steps = {s["name"]: s for s in reference["report"]["steps"]}
    boot = reference["report"]["bootstrap_seconds"] / reference["report"]["bootstraps"]
    ref_products = sum(count_products(c) for c in
                       ReluApprox.from_table(reference["alpha"], 1.0, reference["eps_bits"]).sign.components) + 1
    kernel = 0.0
    for step, _, _ in plan.steps:
        ref = steps[step.name]
        secs = ref["seconds"] - ref.get("bootstrap_seconds", 0.0)
        if step.kind == "relu":
            secs *= (step.relu.sign.products + 1) / ref_products
        kernel += secs
    total = kernel + plan.schedule.bootstraps * boot
    return {"seconds": round(total, 1), "bootstrap_seconds_each": round(boot, 2)}


def beyond_b(plan, images: np.ndarray, noise=None) -> dict:
    """Twin logits and, per ReLU, how many inputs exceeded B and L B (counted in units of B)."""
    from ckksnet.core.slots import SlotEvaluator
    from ckksnet.core.walker import ScheduledRefresh, walk

    counts = {"inputs": 0, "beyond_B": 0, "beyond_LB": 0, "max_ratio": 0.0}
    rng = np.random.default_rng(0)

    def after(i, step, inputs, out):
        if step.kind == "relu":
            r = np.abs(inputs[0].data) * step.extension  # |x| / B
            counts["inputs"] += int(r.size)
            counts["beyond_B"] += int(np.count_nonzero(~(r <= 1)))
            counts["beyond_LB"] += int(np.count_nonzero(~(r <= step.extension)))
            counts["max_ratio"] = max(counts["max_ratio"], float(np.nanmax(r)))
        if noise is not None:
            used = np.asarray(plan.values[plan.steps[i][2]].layout.index).ravel()
            out.data = noise.perturb(step.name, out.data, rng, used)
        return out

    packed = np.atleast_2d(plan.preprocess(images))
    used_in = np.asarray(plan.values[plan.input].layout.index).ravel()
    logits = []
    for i in range(0, len(packed), 200):
        ev = SlotEvaluator(plan.preset.slots, plan.preset.levels_after_bootstrap, fast=True)
        x = packed[i:i + 200]
        if noise is not None:
            x = noise.perturb("input", x, rng, used_in)
        with np.errstate(over="ignore", invalid="ignore"):
            out = walk(plan, ev, ev.fresh(x, plan.schedule.input_level),
                       ScheduledRefresh(ev, plan.schedule.decisions()), after_step=after)
        logits.append(plan.output_layout.unpack(out.data * plan.values[plan.output].scale))
    return {"logits": np.concatenate(logits), **counts}


def measure(model, calib, images, labels, plain, margin: float, ext: float, noise, exact: set, reference) -> dict:
    t = time.time()
    plan = compile(model, calibration=calib, preset="secure", margin=margin, relu_extension=ext)
    compile_s = time.time() - t
    rep = plan_report(plan)["totals"]
    relus = [s for s, _, _ in plan.steps if s.kind == "relu"]
    r0 = relus[0].relu
    res = {"margin": margin, "L": ext, "compile_seconds": round(compile_s, 1),
           "bootstraps": rep["bootstraps"], "key_switches": rep["key_switches"],
           "estimated_seconds": rep["estimated_seconds"], "scaled": scaled_seconds(plan, reference),
           "estimated_bootstrap_seconds": rep["estimated_bootstrap_seconds"],
           "relu_levels": relus[0].levels(), "relu_degrees": list(r0.sign.degrees),
           "relu_products": r0.sign.products + 1,
           "sign_eps": r0.sign.eps, "relu_bounds_vs_grid": {
               "stated": r0.__class__(r0.sign, 1.0, r0.extension).error_bounds(),
               "measured": r0.__class__(r0.sign, 1.0, r0.extension).measured_errors(100_001)}}
    for name, imgs in images.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ActivationRangeWarning)
            t = time.time()
            noisy = beyond_b(plan, imgs, noise)
            res[f"{name}_noise"] = {**summarize(plain[name], noisy.pop("logits"), labels[:len(imgs)]), **noisy,
                                    "twin_seconds": round(time.time() - t, 1)}
            if name in exact:
                ex = beyond_b(plan, imgs, None)
                res[f"{name}_exact"] = {**summarize(plain[name], ex.pop("logits"), labels[:len(imgs)]), **ex}
    return res


def _fmt(r: dict | None) -> str:
    if r is None:
        return "-"
    err = "diverged" if r["max_logit_error"] is None else f"{r['max_logit_error']:.4f}"
    return (f"{r['identical_top1']:g}% / {err} / {r['diverged_images']} / "
            f"{r['beyond_B']:,} / {r['beyond_LB']:,} / {r['max_ratio']:.2f}")


def section(rows: list[dict], n: int, n_stress: int, argv: str) -> str:
    lines = [HEADER, "",
             f"Command: `python benchmarks/relu_extension.py {argv}` (bundled ResNet-20, secure preset, "
             f"compile only: no keys). Twin with the secure noise model on the first {n} CIFAR-10 test "
             f"images (JPEG copy), and on the first {n_stress} of them as stress images (salt and pepper "
             "10%, contrast 2). Each cell: top-1 identical to plaintext / max logit error / images "
             "diverged / ReLU inputs beyond B / beyond L B / max |x| / B (in a run that diverged, every "
             "input after the first divergence counts too). Time: the measured ResNet-20 run rescaled "
             "(module docstring); `plan` = the cost model's estimate where one is stored.", "",
             "| margin | L | ReLU levels | products | bootstraps | key switches | est. time | test images | "
             "salt & pepper | contrast 2 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        est = f"{r['scaled']['seconds'] / 60:.1f} min"
        if r["estimated_seconds"]:
            est += f" (plan {r['estimated_seconds'] / 60:.1f} min)"
        lines.append(f"| {r['margin']:g} | {r['L']:g} | {r['relu_levels']} | {r['relu_products']} | {r['bootstraps']} | "
                     f"{r['key_switches']} | {est} | {_fmt(r.get('test_noise'))} | {_fmt(r.get('saltpepper_noise'))} | "
                     f"{_fmt(r.get('contrast_noise'))} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--stress-images", type=int, default=500)
    ap.add_argument("--configs", default="1.5:1,1.5:2,1.5:4,1.0:1,1.0:2,1.0:4",
                    help="margin:L pairs; the twin runs exactly too for the first and the L=4 one at margin 1.5")
    ap.add_argument("--json", default=str(Path(__file__).parent / "relu_extension_last.json"))
    ap.add_argument("--merge", nargs="*", default=[], help="with --configs none: print these outputs' rows")
    ap.add_argument("--retime", nargs="*", default=[], help="earlier outputs: recompute their time estimates")
    ap.add_argument("--reference", default=str(Path(__file__).parent / "resnet20_last.json"),
                    help="the measured run the time estimate rescales")
    args = ap.parse_args()
    if args.retime:  # compile the rows of earlier outputs again: consistent time estimates
        reference = json.loads(Path(args.reference).read_text())
        runs = [json.loads(Path(f).read_text()) for f in args.retime]
        rows = [r for run in runs for r in run["rows"]]
        model, meta = load_bundled()
        for r in rows:
            plan = compile(model, calibration=meta["calibration"]["relus"], preset="secure", margin=r["margin"],
                           relu_extension=r["L"])
            rep = plan_report(plan)["totals"]
            r.update(estimated_seconds=rep["estimated_seconds"], scaled=scaled_seconds(plan, reference),
                     bootstraps=rep["bootstraps"], key_switches=rep["key_switches"])
        argv = " + ".join(run.get("argv", "") for run in runs) + f"; times: --retime, reference {args.reference}"
        Path(args.json).write_text(json.dumps({**runs[0], "argv": argv, "reference": args.reference, "rows": rows},
                                              indent=1) + "\n")
        print(section(rows, runs[0]["images"], runs[0]["stress_images"], argv))
        return
    if args.configs == "none":  # only print the section of earlier outputs
        runs = [json.loads(Path(f).read_text()) for f in args.merge]
        rows = [r for run in runs for r in run["rows"]]
        print(section(rows, runs[0]["images"], runs[0]["stress_images"], runs[0].get("argv", "")))
        return
    model, meta = load_bundled()
    calib = meta["calibration"]["relus"]
    reference = json.loads(Path(args.reference).read_text())
    split = load_cifar10("test").subset(args.images)
    k = args.stress_images
    images = {"test": split.images, "saltpepper": salt_and_pepper(split.images[:k]),
              "contrast": contrast(split.images[:k])}
    plain = {name: plaintext(model, v) for name, v in images.items()}
    noise = bundled_noise("secure")
    rows = []
    configs = [tuple(float(v) for v in c.split(":")) for c in args.configs.split(",")]
    for margin, ext in configs:
        stress = {"test", "saltpepper", "contrast"} if margin < 1.5 else {"test", "saltpepper"}
        exact = {"test"} if (margin, ext) in (configs[0], (1.5, 4.0)) else set()
        row = measure(model, calib, {n: v for n, v in images.items() if n in stress}, split.labels, plain,
                      margin, ext, noise, exact, reference)
        rows.append(row)
        print(json.dumps({k2: v for k2, v in row.items() if k2 != "relu_bounds_vs_grid"}), flush=True)
        argv = f"--images {args.images} --stress-images {k} --configs {args.configs}"
        Path(args.json).write_text(json.dumps({"images": args.images, "stress_images": k, "source": split.source,
                                               "argv": argv, "reference": args.reference,
                                               "rows": rows}, indent=1) + "\n")
    print(section(rows, args.images, k, argv))


if __name__ == "__main__":
    main()
