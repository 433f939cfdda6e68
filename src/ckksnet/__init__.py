"""ckksnet: encrypted inference of trained PyTorch CNNs with RNS-CKKS (OpenFHE).

Sub-packages: ``backend`` (CKKS context, keys, serialization), ``data`` (CIFAR-10),
``models`` (ResNet-20), ``training``, ``approx`` (minimax composite ReLU), ``layout`` (slot
packing), ``kernels`` (encrypted linear maps), ``compiler`` (model -> plan), ``runtime``
(client and server).
"""
from ckksnet.errors import (ApproxError, CkksnetError, CompileError, ContextMismatchError, CorruptDataError,
                            DataError, InputError, LevelError, MissingKeyError, NonFiniteError,
                            PresetError, RangeError, SerializationError, ShapeError,
                            WrongFileTypeError)

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: importing ckksnet stays cheap (no torch/openfhe) until these are used
    if name == "compile":
        from ckksnet.compiler import compile as fn
        return fn
    if name in ("Client", "Server"):
        import ckksnet.runtime as rt
        return getattr(rt, name)
    if name in ("load_plan", "load_client_spec"):
        import ckksnet.compiler.artifact as art
        return getattr(art, name)
    if name in ("Plan", "ClientSpec"):
        import ckksnet.compiler.plan as plan
        return getattr(plan, name)
    raise AttributeError(f"module 'ckksnet' has no attribute {name!r}")

__all__ = ["ApproxError", "CkksnetError", "CompileError", "ContextMismatchError", "CorruptDataError", "DataError",
           "InputError", "LevelError", "MissingKeyError", "NonFiniteError", "PresetError",
           "RangeError", "SerializationError", "ShapeError", "WrongFileTypeError", "__version__", "compile", "Client", "Server",
           "load_plan", "load_client_spec", "Plan", "ClientSpec"]
