"""Training, plaintext evaluation and ReLU-range calibration of CIFAR models."""
from ckksnet.compiler.calibrate import calibrate
from ckksnet.training.train import TrainConfig, augment, evaluate, to_tensor, train

__all__ = ["TrainConfig", "augment", "calibrate", "evaluate", "to_tensor", "train"]
