"""Trainable torch models that ckksnet compiles, and the bundled trained checkpoints."""
from ckksnet.models.resnet import (CIFAR10_MEAN, CIFAR10_STD, BasicBlock, Normalize, PadShortcut,
                                   ResNetCifar, build, resnet20)
from ckksnet.models.checkpoint import BUNDLED, BUNDLED_DIR, checkpoint_folder, load_bundled, load_checkpoint, save_checkpoint

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "BasicBlock", "Normalize", "PadShortcut", "ResNetCifar",
           "build", "resnet20", "load_bundled", "load_checkpoint", "save_checkpoint", "BUNDLED", "BUNDLED_DIR",
           "checkpoint_folder"]
