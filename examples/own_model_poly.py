"""Your own model with polynomial activations, end to end: train, compile, run encrypted.

    python examples/own_model_poly.py [--images 2] [--degree 2]

``PolyCNN`` is ``examples/own_model.py``'s small CNN with :class:`ckksnet.nn.PolyAct` where
``nn.ReLU`` was: a trainable polynomial of degree 2 to 4 (its coefficients are parameters,
initialised to the least-squares fit of ReLU on [-B, B]). It is trained for two epochs on 512
synthetic 8x8 RGB images (no download), compiled at the small, explicitly INSECURE ``test``
preset, and run on ciphertexts without the secret key; the decrypted logits are compared with
torch's. A degree-2 activation read by a convolution costs one level (its leading coefficient
is folded into the convolution), where the composite ReLU spends about 14. Exit status 1 if an
encrypted prediction differs from the plaintext one. Seconds on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import ckksnet
from ckksnet.core.preset import InsecurePresetWarning
from ckksnet.nn import PolyAct

sys.path.insert(0, str(Path(__file__).resolve().parent))
from own_model import CLASSES, SIZE, synthetic, train  # noqa: E402  (the same data and loop)


class PolyCNN(nn.Module):
    """conv-BN-PolyAct, average pooling, conv-BN-PolyAct, global average pooling, linear."""

    def __init__(self, degree: int = 2, classes: int = len(CLASSES)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), PolyAct.from_relu(4.0, degree),
            nn.AvgPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), PolyAct.from_relu(4.0, degree),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2, help="test images to run encrypted (default 2)")
    parser.add_argument("--degree", type=int, default=2, choices=(2, 3, 4), help="the activations' degree")
    args = parser.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    train_x, train_y = synthetic(512, seed=1)
    test_x, test_y = synthetic(max(args.images, 64), seed=2)
    model = PolyCNN(args.degree)
    train(model, train_x, train_y, epochs=2)
    with torch.no_grad():
        plain = model(torch.from_numpy(test_x).float()).double().numpy()
    accuracy = 100 * float(np.mean(plain.argmax(1) == test_y))
    print(f"trained PolyCNN (degree-{args.degree} activations) for two epochs on 512 synthetic images in "
          f"{time.time() - t0:.1f} s: {accuracy:.0f}% on {len(test_y)} test images")

    warnings.simplefilter("ignore", InsecurePresetWarning)  # said once, here:
    print("preset 'test' is NOT secure (N = 4096): for trying the flow only")
    t1 = time.time()
    net = ckksnet.compile(model, calibration=train_x[:128], preset="test", input_shape=(3, SIZE, SIZE),
                          classes=CLASSES)
    for s in net.schedule.steps:
        if s.kind.startswith("poly"):
            print(f"  activation {s.name}: {s.kind}, {s.level_in - s.level_out} level(s)")
    print(f"compiled: {len(net.steps)} steps, {net.schedule.bootstraps} bootstrap(s) ({time.time() - t1:.1f} s)")

    t2 = time.time()
    client = ckksnet.Client(net)  # the secret key stays here
    server = ckksnet.Server(net, client.evaluation_keys())  # evaluation keys only
    print(f"keys: {time.time() - t2:.1f} s")
    same = True
    for i in range(args.images):
        t3 = time.time()
        logits = client.decrypt(server.run(client.encrypt(test_x[i])))
        err = float(np.max(np.abs(logits - plain[i])))
        agree = int(logits.argmax()) == int(plain[i].argmax())
        same &= agree
        print(f"image {i} ({CLASSES[test_y[i]]}): encrypted in {time.time() - t3:.1f} s")
        print(f"  plaintext logits {np.array2string(plain[i], precision=4)} -> {CLASSES[plain[i].argmax()]}")
        print(f"  decrypted logits {np.array2string(logits, precision=4)} -> {CLASSES[logits.argmax()]}")
        print(f"  max |difference| {err:.2e}; {'same prediction' if agree else 'PREDICTIONS DIFFER'}")
    print(f"{'all' if same else 'NOT all'} {args.images} encrypted predictions match the plaintext model "
          f"({time.time() - t0:.0f} s in all)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
