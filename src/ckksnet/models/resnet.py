"""The CIFAR ResNets of He et al. 2016 (section 4.2), with batch norm after every convolution:
ResNet-(6n+2), 3 stages of n basic blocks, 16/32/64 channels (ResNet-20, 32, 44, 56, 110 for
n = 3, 5, 7, 9, 18; :func:`resnet_cifar`).

Downsampling shortcut: **option A** (ResNet-20's, the default) — the identity, subsampled with
stride 2 and zero-padded to the new channel count. It has no weights, and the compiler lowers it
to a fixed linear map, so the encrypted network needs no kernel beyond the ones the main path
already uses. **Option B** — a 1x1 stride-2 convolution and batch norm (a projection), which
the compiler folds into one linear map like any convolution.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ckksnet.models.poly import activation_degree, to_polynomial
from ckksnet.nn import CIFAR10_MEAN, CIFAR10_STD, Normalize, PadShortcut  # noqa: F401  (re-exported)


SHORTCUTS = ("A", "B")


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str = "A"):
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be 'A' (zero-padded identity) or 'B' (1x1 conv + BN), not {shortcut!r}")
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        if stride == 1 and in_ch == out_ch:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_ch, out_ch, stride)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs (n = ``blocks``); ``widths`` and ``blocks`` shrink it for
    tests; ``shortcut``: "A" (zero-padded identity) or "B" (1x1 convolution + BN).

    Input: float images in [0, 1], shape (N, 3, H, W). Output: logits (N, classes).
    """

    def __init__(self, blocks: int = 3, widths: tuple[int, int, int] = (16, 32, 64),
                 num_classes: int = 10, mean=CIFAR10_MEAN, std=CIFAR10_STD, shortcut: str = "A"):
        super().__init__()
        self.config = {"blocks": blocks, "widths": list(widths), "num_classes": num_classes,
                       "mean": list(mean), "std": list(std)}
        if shortcut != "A":  # option A's config stays as checkpoints of ResNet-20 store it
            self.config["shortcut"] = shortcut
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        layers, in_ch = [], widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(BasicBlock(in_ch, width, stride, shortcut))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layers(x)
        return self.fc(self.flatten(self.pool(x)))


def resnet20(num_classes: int = 10) -> ResNetCifar:
    """Standard ResNet-20: 3 stages x 3 blocks, 16/32/64 channels, about 0.27 M parameters."""
    return ResNetCifar(3, (16, 32, 64), num_classes)


DEPTHS = (20, 32, 44, 56, 110)  #: the depths He et al. report on CIFAR-10


def resnet_cifar(depth: int, shortcut: str = "A", widths: tuple[int, int, int] = (16, 32, 64),
                 num_classes: int = 10, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> ResNetCifar:
    """ResNet-``depth`` for CIFAR (He et al. 2016): depth = 6n + 2 (20, 32, 44, 56, 110, ...),
    3 stages of n basic blocks. ``shortcut``: "A" (zero-padded identity, no weights) or "B"
    (1x1 stride-2 convolution + BN where the shape changes); ``widths`` shrink it for tests."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110), not {depth!r}")
    return ResNetCifar((depth - 2) // 6, tuple(widths), num_classes, mean, std, shortcut)


def build(config: dict) -> ResNetCifar:
    """Rebuild a model from its ``config`` dict (as stored in checkpoint metadata)."""
    model = ResNetCifar(config["blocks"], tuple(config["widths"]), config["num_classes"],
                        tuple(config["mean"]), tuple(config["std"]), config.get("shortcut", "A"))
    if config.get("activation", "relu") != "relu":  # polynomial activations (ckksnet.models.poly)
        to_polynomial(model, activation_degree(config["activation"]))
    return model
