"""Your own model, end to end: train a small CNN, compile it, and run it encrypted.

    python examples/own_model.py [--images 2] [--out DIR]

Trains ``SmallCNN`` (two convolutions with batch norm and ReLU, pooling, a linear layer) for one
epoch on 512 synthetic 8x8 RGB images of four classes (stripes across, stripes down, a bright
centre, a dark centre; no download), compiles it with ``ckksnet.compile`` at the small,
explicitly INSECURE ``test`` preset, makes keys, encrypts test images, runs the network on the
ciphertexts without the secret key, decrypts, and prints the plaintext (torch) and decrypted
logits with their largest difference. Exit status 1 if an encrypted prediction differs from the
plaintext one. About a minute on 2 cores.

With ``--out DIR`` it also writes ``DIR/weights.pt`` (the state dict) and
``DIR/calibration.npz`` and prints the command lines that take the same model from here
(``ckksnet compile --model own_model:SmallCNN ...``, run from ``examples/``).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

import ckksnet
from ckksnet.core.preset import InsecurePresetWarning

SIZE = 8  #: 3 x 8 x 8 inputs: 192 of the test preset's 2,048 slots
CLASSES = ("stripes across", "stripes down", "bright centre", "dark centre")


class SmallCNN(nn.Module):
    """conv-BN-ReLU, average pooling, conv-BN-ReLU, global average pooling, linear."""

    def __init__(self, classes: int = len(CLASSES)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float (N, 3, 8, 8) images in [0, 1] and their labels (0..3)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    centre = ((yy - 3.5) ** 2 + (xx - 3.5) ** 2 < 5).astype(float)
    patterns = [(yy % 2).astype(float), (xx % 2).astype(float), centre, 1 - centre]
    colour = rng.uniform(0.4, 1.0, (n, 3, 1, 1))  # each image its own tint
    images = colour * np.stack([patterns[k] for k in labels])[:, None] * 0.7
    images += rng.uniform(0, 0.3, images.shape)  # noise
    return np.clip(images, 0, 1), labels


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, epochs: int = 1) -> None:
    """One epoch of Adam on mini-batches of 32 (batch norm learns its running statistics)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(images).float(), torch.from_numpy(labels)
    model.train()
    for _ in range(epochs):
        for i in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
    model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2, help="test images to run encrypted (default 2)")
    parser.add_argument("--out", help="also write DIR/weights.pt and DIR/calibration.npz for the command line")
    args = parser.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    train_x, train_y = synthetic(512, seed=1)
    test_x, test_y = synthetic(max(args.images, 64), seed=2)
    model = SmallCNN()
    train(model, train_x, train_y)
    with torch.no_grad():
        plain = model(torch.from_numpy(test_x).float()).double().numpy()
    accuracy = 100 * float(np.mean(plain.argmax(1) == test_y))
    print(f"trained SmallCNN for one epoch on 512 synthetic images in {time.time() - t0:.1f} s: "
          f"{accuracy:.0f}% on {len(test_y)} test images")

    warnings.simplefilter("ignore", InsecurePresetWarning)  # said once, here:
    print("preset 'test' is NOT secure (N = 4096): for trying the flow only")
    t1 = time.time()
    calibration = train_x[:128]  # each ReLU's bound B: measured on these images (x a margin)
    net = ckksnet.compile(model, calibration=calibration, preset="test", input_shape=(3, SIZE, SIZE),
                          classes=CLASSES)
    print(f"compiled: {len(net.steps)} steps, {net.schedule.bootstraps} bootstrap(s), input "
          f"{'x'.join(map(str, net.input_shape))} ({time.time() - t1:.1f} s)")
    if args.out:
        from pathlib import Path

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "weights.pt")
        np.savez(out / "calibration.npz", images=calibration)
        print(f"wrote {out / 'weights.pt'} and {out / 'calibration.npz'}; the same model from the command line "
              "(in examples/):\n"
              f"  ckksnet compile --model own_model:SmallCNN --weights {out / 'weights.pt'} --input-shape 3 {SIZE} "
              f"{SIZE} --calibration {out / 'calibration.npz'} --preset test --out {out / 'plan'}")

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
