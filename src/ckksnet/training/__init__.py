"""Training, plaintext evaluation and ReLU-range calibration of CIFAR models.

``calibrate`` (from :mod:`ckksnet.compiler.calibrate`) is loaded on first use, so that training
alone (``ckksnet.training.train``, e.g. on a GPU machine without OpenFHE) imports no compiler.
"""
from ckksnet.training.train import TrainConfig, augment, evaluate, to_tensor, train

__all__ = ["TrainConfig", "augment", "calibrate", "evaluate", "to_tensor", "train"]


def __getattr__(name: str):
    if name == "calibrate":
        from ckksnet.compiler.calibrate import calibrate

        return calibrate
    raise AttributeError(f"module 'ckksnet.training' has no attribute {name!r}")
