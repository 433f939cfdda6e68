"""Models whose activations span several ciphertexts (issue #29): plan and twin, no keys.

    python benchmarks/any_size.py [--json benchmarks/any_size.json]

1. the bundled ResNet-20 at the insecure ``test`` preset on full 32x32 images (2,048 slots: the
   input spans 2 ciphertexts, stage 1 spans 8): bootstraps, key switches, estimated seconds;
2. a CNN on 64x64 inputs at the ``secure`` preset (16,384 slots; 16 x 64 x 64 spans 4
   ciphertexts), random weights and BatchNorm statistics: plan, and the twin against torch;
3. ResNet-18 with the CIFAR stem (torchvision's BasicBlock layout, 1x1 projection shortcuts;
   64 x 32 x 32 = 4 ciphertexts at the secure preset), random weights and BatchNorm statistics:
   compile time and peak memory, plan, and the twin against torch (about 4 minutes, 9.4 GiB).

Writes the figures as JSON (machine, date, command included); RESULTS.md quotes them.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import random_batchnorms  # noqa: E402


def _plan_figures(plan) -> dict:
    from ckksnet.compiler.report import plan_report

    rep = plan_report(plan)
    return {"input_ciphertexts": rep["input_ciphertexts"],
            "max_ciphertexts": max(s["ciphertexts"] for s in rep["steps"]),
            "bootstraps": rep["totals"]["bootstraps"], "key_switches": rep["totals"]["key_switches"],
            "estimated_seconds": rep["totals"]["estimated_seconds"], "steps": len(rep["steps"])}


def bundled_at_test_preset() -> dict:
    from ckksnet.compiler.checkpoints import compile_checkpoint

    t = time.time()
    plan, _, _ = compile_checkpoint(None, "test")
    return {"model": "bundled ResNet-20, 3x32x32", "preset": "test", "compile_seconds": round(time.time() - t, 1),
            **_plan_figures(plan)}


class Cnn64(nn.Module):
    """3x64x64 -> 16 ch (4 ciphertexts) -> stride 2: 32 ch at 32x32 (2) -> stride 2: 64 ch at
    16x16 (1) -> pool -> 10 logits."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        return self.body(x)


def _compile_and_twin(model: nn.Module, cal: np.ndarray, images: int) -> dict:
    """Compile ``model`` at the secure preset on calibration images ``cal`` (uint8 N,H,W,C), then
    twin the first ``images`` of them against torch: seconds, peak memory, errors, plan figures."""
    import resource

    import ckksnet

    t = time.time()
    plan = ckksnet.compile(model, calibration=cal, preset="secure", image_size=cal.shape[1:3])
    compile_s = time.time() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    x = cal[:images]
    t = time.time()
    twin = plan.twin(x)
    twin_s = time.time() - t
    with torch.no_grad():
        want = model(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255).double().numpy()
    return {"preset": "secure", "compile_seconds": round(compile_s, 1), "peak_rss_gib_after_compile": round(peak, 2),
            "twin_seconds_per_image": round(twin_s / images, 2),
            "twin_max_logit_error": float(np.max(np.abs(twin - want))),
            "twin_identical_top1": float(np.mean(twin.argmax(1) == want.argmax(1))), **_plan_figures(plan)}


def cnn64_at_secure_preset(images: int = 4) -> dict:
    torch.manual_seed(0)
    model = random_batchnorms(Cnn64(), torch.Generator().manual_seed(0))
    cal = np.random.default_rng(0).integers(0, 256, (32, 64, 64, 3), dtype=np.uint8)
    figures = _compile_and_twin(model, cal, images)
    figures.pop("peak_rss_gib_after_compile")  # the process's peak so far: the test-preset plan's, not this one's
    return {"model": "CNN 3x64x64 -> 16 -> 32 -> 64 channels", **figures}


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convolutions, a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (a 3x3 convolution, no max pool): 64-128-256-512 channels."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64)
        blocks, c = [], 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(c, width, stride), BasicBlock(width, width, 1)]
            c = width
        self.layers = nn.Sequential(*blocks)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(512, classes)

    def forward(self, x):
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18_entries() -> int:
    """Slot-matrix entries of ResNet-18 (CIFAR stem) convolutions: C_in * C_out * k^2 * H_out * W_out."""
    total, c, size = 3 * 64 * 9 * 32 * 32, 64, 32
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        out = size // stride
        total += c * width * 9 * out * out + width * width * 9 * out * out * 3  # two basic blocks
        total += c * width * out * out if stride > 1 else 0  # the 1x1 projection shortcut
        c, size = width, out
    return total


def resnet18_at_secure_preset(images: int = 2) -> dict:
    torch.manual_seed(0)
    model = random_batchnorms(ResNet18(), torch.Generator().manual_seed(0))
    cal = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    return {"model": "ResNet-18, CIFAR stem, 3x32x32", "slot_matrix_entries": resnet18_entries(),
            **_compile_and_twin(model, cal, images)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "any_size.json"), help="where to write the figures")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # the test preset's insecurity warning; figures are labelled
    out = {"machine": f"{platform.machine()} {platform.node()}", "date": datetime.now(timezone.utc).isoformat(),
           "command": "python benchmarks/any_size.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out["bundled_test_preset"] = bundled_at_test_preset()
    print(json.dumps(out["bundled_test_preset"]), flush=True)
    out["cnn64_secure"] = cnn64_at_secure_preset()
    print(json.dumps(out["cnn64_secure"]), flush=True)
    out["resnet18_secure"] = resnet18_at_secure_preset()  # last: its 9 GiB of matrices stay mapped
    print(json.dumps(out["resnet18_secure"]), flush=True)
    Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
