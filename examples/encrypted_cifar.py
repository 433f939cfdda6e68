"""Encrypted CIFAR-10 inference with the bundled ResNet-20, step by step.

    .venv/bin/python examples/encrypted_cifar.py [--images 1] [--preset secure] [--image-size 32]

At the secure preset (128-bit, N = 2^16), measured (benchmarks/RESULTS.md):
13-15 minutes of inference per image on 2 cores (806 s on 2026-12-04, 863 s on 2026-11-30),
54 bootstraps, 37-45 s of key generation, 13.15 GiB of peak memory. The explicitly
insecure test preset's 2,048 slots do not hold a 3x32x32 input: there the example takes each image's
8x8 centre (the ResNet is fully convolutional), for trying the flow, not for accuracy.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import torch

import ckksnet
from ckksnet.data import load_cifar10
from ckksnet.models import load_bundled
from ckksnet.training import to_tensor


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1, help="official test images to run (1-20)")
    ap.add_argument("--preset", default="secure", help="secure (128-bit, default) or test (INSECURE)")
    ap.add_argument("--image-size", type=int, metavar="N",
                    help="use each image's N x N centre (default 32; 8 at the test preset, where 3x8x8 fits "
                         "one 2,048-slot ciphertext: whole 32x32 images span several, about 14 min)")
    args = ap.parse_args()
    size = args.image_size or (8 if args.preset == "test" else 32)
    # a warning (the test preset's InsecurePresetWarning) as one line, without the library's source line
    seen: set[str] = set()  # compile and key generation both warn about the test preset: say it once
    warnings.formatwarning = lambda message, category, *where, **kw: (
        "" if str(message) in seen or seen.add(str(message)) else f"warning: {message}\n")
    try:
        run(args.images, args.preset, size)
    except ckksnet.CkksnetError as exc:  # a clear line, not a traceback
        print(f"encrypted_cifar.py: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


def centre(images: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` centre of each (n, H, W, C) image, in pixels."""
    top, left = (images.shape[1] - size) // 2, (images.shape[2] - size) // 2
    return np.ascontiguousarray(images[:, top:top + size, left:left + size])


def run(k: int, preset: str, size: int = 32) -> None:
    """Compile, make keys, run ``k`` official test images (their ``size`` x ``size`` centres)
    encrypted, compare with plaintext."""
    # 1. The trained model and real test images (the first official CIFAR-10 test images).
    model, meta = load_bundled()
    official = load_cifar10("test", "foolbox")
    test = official.subset(k)
    print(f"model: {meta['architecture']}, plaintext accuracy {meta['test']['accuracy']}% on the CIFAR-10 test split (JPEG copy, 32x32)")
    calibration = meta["calibration"]["relus"]
    if size != test.images.shape[1]:
        # the stored ReLU bounds were measured on whole images: bound the centres on the centres
        test.images, calibration = centre(test.images, size), centre(official.images, size)
        print(f"each image's {size}x{size} centre; ReLU bounds from the 20 official images' centres")

    # 2. Compile: BN folding, slot layouts, ReLU bounds from the calibration, rotations.
    net = ckksnet.compile(model, calibration=calibration, preset=preset, image_size=(size, size))

    # 3. The client makes the keys (the secret key never leaves it); the server gets the rest.
    t = time.time()
    client = ckksnet.Client(net)
    server = ckksnet.Server(net, client.evaluation_keys())
    print(f"keys: {time.time() - t:.0f} s, {client.key_memory_gb['rotation_keys']} rotation keys of its own, "
          f"{client.key_memory_gb['bootstrap_rotation_keys_reused']} reused from bootstrapping")

    with torch.no_grad():
        plain = model(to_tensor(test.images)).numpy()
    for i, (image, label) in enumerate(zip(test.images, test.labels)):
        ct = client.encrypt(image)                  # client side
        out = server.run(ct, progress=True)         # server side, on ciphertexts only
        logits = client.decrypt(out)                # client side
        name = lambda k: f"{k} ({net.classes[k]})"  # the class index and its name
        print(f"image {i}: label {name(label)}, plaintext {name(plain[i].argmax())}, "
              f"encrypted {name(logits.argmax())}, "
              f"max |logit diff| {np.max(np.abs(logits - plain[i])):.2e}, "
              f"{server.report.seconds:.0f} s, {server.report.bootstraps} bootstraps")

    # 4. The cleartext twin runs the same plan on plain slots: fast, batched.
    print("twin predictions:", net.twin(test.images).argmax(1), "labels:", test.labels)


if __name__ == "__main__":
    sys.exit(main())
