"""Throughput of ``ckksnet run --workers N`` (Ray) through examples/scale_out.sh.

    python benchmarks/scale_out.py --preset test [--images 8] [--workers 1,2]
        a tiny ResNet-8 checkpoint (2/4/8 channels, random weights, 8x8 random images), the whole
        flow once per worker count in a fresh work folder: images per minute of the run
        (``ckksnet run``'s own figure: from the start of Ray to the last output), seconds per image,
        key loads per worker and their seconds, worker peak memory.

    python benchmarks/scale_out.py --preset secure [--images 2]
        the bundled ResNet-20 on the first official CIFAR-10 test images (foolbox 3.3.4, bit-exact
        PNGs) with ONE worker (a secure worker needs ~13 GiB; this machine has 24): each image's
        seconds, the one key load, and the worker's memory. The worker gets every core (WORKER_CPUS). Needs ~14 GiB and 30-60 min; run it
        alone (the keys are made by `ckksnet keygen` in its own process, which exits first).

Writes the section "Scaling out on Ray" of benchmarks/RESULTS.md (test and secure rows kept side
by side) and scale_out_last.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _results import RESULTS, machine, replace_section, today

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPT = ROOT / "examples" / "scale_out.sh"
HEADER = "## Scaling out on Ray (benchmarks/scale_out.py)"
LAST = HERE / "scale_out_last.json"


def ckksnet_command() -> str:
    exe = Path(sys.executable).parent / "ckksnet"
    return str(exe) if exe.exists() else "ckksnet"


def test_inputs(work: Path, images: int) -> tuple[Path, Path, dict]:
    """The tiny checkpoint and random 8x8 PNGs of tests/test_cli_flow.py."""
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from tests.test_cli_flow import SIZE, _tiny_checkpoint

    ck = _tiny_checkpoint(work / "checkpoint")
    folder = work / "images"
    folder.mkdir()
    for i in range(images):
        Image.fromarray(np.random.default_rng(100 + i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
            folder / f"random{i}.png")
    return ck, folder, {"IMAGE_SIZE": str(SIZE), "ALPHA": "8", "EPS_BITS": "8"}


def secure_inputs(work: Path, images: int) -> tuple[str, Path, dict]:
    from PIL import Image

    from ckksnet.data import load_cifar10

    split = load_cifar10("test", "foolbox")
    folder = work / "images"
    folder.mkdir()
    for i in range(images):
        Image.fromarray(split.images[i]).save(folder / f"cifar10_test_{i}.png")
    return "bundled", folder, {"WORKER_CPUS": str(os.cpu_count() or 1)}  # the one worker gets every core


def flow(preset: str, ck, images: Path, workers: int, work: Path, env: dict) -> dict:
    """examples/scale_out.sh once; its files, wall time and last line."""
    t0 = time.monotonic()
    done = subprocess.run(["bash", str(SCRIPT), preset, str(ck), str(images), str(workers), str(work)],
                          capture_output=True, text=True,
                          env={**os.environ, **env, "CKKSNET": ckksnet_command(), "PYTHON": sys.executable})
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"scale_out.sh failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    run = json.loads((work / "run.json").read_text())
    keygen = json.loads((work / "keygen.json").read_text())
    per_image = [r["seconds"] for r in run["results"]]
    return {"workers_asked": workers, "workers": len(run["workers"]), "images": run["images"],
            "run_seconds": run["seconds"], "images_per_minute": run["images_per_minute"],
            "seconds_per_image": per_image, "bootstraps": [r["bootstraps"] for r in run["results"]],
            "key_loads": [w["key_loads"] for w in run["workers"]],
            "key_load_seconds": [w["load_seconds"] for w in run["workers"]],
            "images_per_worker": [w["images"] for w in run["workers"]],
            "worker_peak_rss_gb": [w["peak_rss_gb"] for w in run["workers"]],
            "eval_keys_gib": round(keygen["eval_keys_bytes"] / 2**30, 2), "flow_wall_seconds": round(wall, 1),
            "last_line": done.stdout.strip().splitlines()[-1]}


def rows(results: list[dict]) -> list[str]:
    out = ["| preset | images | workers | run s | images/min | s per image (each) | key loads (s each) | "
           "worker peak GiB | eval keys GiB | check |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        out.append(f"| {r['preset']} | {r['images']} | {r['workers']} | {r['run_seconds']:.0f} | "
                   f"{r['images_per_minute']:.3g} | {', '.join(f'{s:.1f}' for s in r['seconds_per_image'])} | "
                   f"{', '.join(f'{n} ({s:.1f})' for n, s in zip(r['key_loads'], r['key_load_seconds']))} | "
                   f"{', '.join(f'{g:.2f}' for g in r['worker_peak_rss_gb'])} | {r['eval_keys_gib']} | "
                   f"{r['last_line']} |")
    return out


def section(record: dict) -> str:
    lines = [HEADER, "", f"Machine: {machine()}; latest run {record['date']}. Commands: "
             + "; ".join(f"`{c}`" for c in record["commands"]) + ".", ""]
    lines += rows(record["results"])
    lines += ["", record.get("notes", "").strip(), ""]
    return "\n".join(lines)


def load_record() -> dict:
    if LAST.exists():
        return json.loads(LAST.read_text())
    return {"results": [], "commands": []}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="test", choices=["test", "secure"])
    ap.add_argument("--images", type=int)
    ap.add_argument("--workers", default=None, help="comma-separated worker counts (test default 1,2; secure 1)")
    ap.add_argument("--work", default=str(HERE / "scale_out_work"))
    args = ap.parse_args(argv)
    images = args.images or (8 if args.preset == "test" else 2)
    counts = [int(w) for w in (args.workers or ("1,2" if args.preset == "test" else "1")).split(",")]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ck, folder, env = (test_inputs if args.preset == "test" else secure_inputs)(work, images)
    record = load_record()
    record["results"] = [r for r in record["results"] if r["preset"] != args.preset]
    record["commands"] = [c for c in record["commands"] if f"--preset {args.preset}" not in c]
    for n in counts:
        res = flow(args.preset, ck, folder, n, work / f"workers{n}", env)
        res["preset"] = args.preset
        print(json.dumps(res), flush=True)
        record["results"].append(res)
    record["results"].sort(key=lambda r: (r["preset"] != "test", r["workers"]))
    record["commands"].append(f"python benchmarks/scale_out.py --preset {args.preset} --images {images} "
                              f"--workers {','.join(map(str, counts))}")
    record["date"] = today()
    LAST.write_text(json.dumps(record, indent=1) + "\n")
    if RESULTS.exists():
        replace_section(HEADER, section(record))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
