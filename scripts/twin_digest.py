"""Digest of the secure ResNet-20's cleartext twin, to show a refactor changed no behaviour.

Compiles the bundled checkpoint at the secure preset (no keys), runs the fast twin on the first 20
CIFAR-10 test images (JPEG copy) and the reference twin (every kernel's algorithm as written) on 2,
and prints a SHA-256 of the logits' bytes with the schedule's bootstraps and key switches. Two
runs of different code that print the same line computed bit-identical twins.

    python scripts/twin_digest.py [--preset secure] [--images 20]
"""
from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="secure")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--reference-images", type=int, default=2)
    args = ap.parse_args()
    from ckksnet.compiler.checkpoints import compile_checkpoint
    from ckksnet.data import load_cifar10

    plan = compile_checkpoint(None, preset=args.preset)[0]
    images = load_cifar10("test").images[:args.images]
    fast = np.ascontiguousarray(plan.twin(images), dtype=np.float64)
    ref = np.ascontiguousarray(plan.twin(images[:args.reference_images], reference=True), dtype=np.float64)
    print(json.dumps({"preset": args.preset, "bootstraps": plan.schedule.bootstraps,
                      "key_switches": plan.schedule.key_switches,
                      "fast": hashlib.sha256(fast.tobytes()).hexdigest()[:16],
                      "reference": hashlib.sha256(ref.tobytes()).hexdigest()[:16],
                      "predictions": fast.argmax(1).tolist()}))


if __name__ == "__main__":
    main()
