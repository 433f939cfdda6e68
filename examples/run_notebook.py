"""Execute a notebook top to bottom into a copy with its outputs (needs the `notebook` extra, which
``./run.sh`` installs: nbclient, nbformat, ipykernel, ipywidgets). The notebook itself is never
rewritten, so the tracked file keeps no (stale) outputs.

    python examples/run_notebook.py [NOTEBOOK] [--out OUT.ipynb] [--preset test] [--images K]

``--preset`` / ``--images`` reach the notebook as CKKSNET_PRESET / CKKSNET_IMAGES.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbclient
import nbformat


def run(path: str | Path, out: str | Path, preset: str | None = None, images: int | None = None,
        timeout: int = 7200) -> nbformat.NotebookNode:
    """Run ``path`` in a fresh kernel of this Python, write the executed copy to ``out``, return it."""
    nb = nbformat.read(path, as_version=4)
    if preset:
        os.environ["CKKSNET_PRESET"] = preset  # the kernel inherits this process's environment
    if images:
        os.environ["CKKSNET_IMAGES"] = str(images)
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    nbformat.write(nb, out)
    return nb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebook", nargs="?", default="examples/encrypted_cifar.ipynb")
    ap.add_argument("--out", help="executed copy (default: NOTEBOOK with .out.ipynb)")
    ap.add_argument("--preset", choices=("secure", "test"),
                    help="secure (the notebook's default: about 15 minutes and 13 GiB per image) or test "
                         "(INSECURE, about a minute)")
    ap.add_argument("--images", type=int, help="official test images to run, 1-20 (default 1)")
    args = ap.parse_args(argv)
    if args.images is not None and not 1 <= args.images <= 20:
        ap.error(f"--images must be 1-20 (the official test images), not {args.images}")
    if args.preset is None:
        print("run_notebook.py: the secure preset (default): about 15 minutes and 13 GiB per image; "
              "--preset test runs in about a minute", file=sys.stderr)
    out = args.out or str(Path(args.notebook).with_suffix(".out.ipynb"))
    t = time.time()
    nb = run(args.notebook, out, args.preset, args.images)
    print(f"{args.notebook}: all {len(nb.cells)} cells ran in {time.time() - t:.0f} s; outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
