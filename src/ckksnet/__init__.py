"""ckksnet: encrypted inference of trained PyTorch CNNs with RNS-CKKS (OpenFHE).

Sub-packages: ``backend`` (CKKS context, keys, serialization), ``data`` (CIFAR-10),
``models`` (ResNet-20), ``training``, ``approx`` (minimax composite ReLU).
"""
from ckksnet.errors import (ApproxError, CkksnetError, CompileError, ContextMismatchError, CorruptDataError,
                            DataError, InputError, LevelError, MissingKeyError, NonFiniteError,
                            PresetError, RangeError, SerializationError, ShapeError,
                            WrongFileTypeError)

__version__ = "0.1.0"

__all__ = ["ApproxError", "CkksnetError", "CompileError", "ContextMismatchError", "CorruptDataError", "DataError",
           "InputError", "LevelError", "MissingKeyError", "NonFiniteError", "PresetError",
           "RangeError", "SerializationError", "ShapeError", "WrongFileTypeError", "__version__"]
