"""ckksnet: encrypted inference of trained PyTorch CNNs with RNS-CKKS (OpenFHE).

Sub-packages, bottom to top (each imports only those below it; ``tests/test_layering.py``):
``layout`` (slot packing), ``core`` (plan, schedule, walker, the evaluator interface, the numpy
slot evaluator, the level tracer, the file envelope; numpy only), ``approx`` (minimax composite
ReLU), ``data`` (CIFAR-10), ``backend`` (OpenFHE: context, keys, serialization), ``kernels``,
``runtime`` (client and server), ``compiler`` / ``training`` / ``models`` (the only torch users),
``fidelity``, and ``deploy`` (the CLI, the HTTP service, Ray).
"""
from ckksnet.errors import (ApproxError, BackendError, CkksnetError, CompileError, ContextMismatchError, CorruptDataError,
                            DataError, InputError, InsufficientMemoryError, LevelError, MissingKeyError, NonFiniteError,
                            PresetError, RangeError, SerializationError, ShapeError, UnknownBackendError,
                            VersionMismatchError, WrongFileTypeError)

from ckksnet.core.threads import preset_wait_policy, set_threads  # standard library only

preset_wait_policy()  # before torch or OpenFHE loads OpenMP (core/threads.py)

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
        import ckksnet.runtime as rt
        return getattr(rt, name)
    if name in ("Plan", "ClientSpec"):
        import ckksnet.core.plan as plan
        return getattr(plan, name)
    raise AttributeError(f"module 'ckksnet' has no attribute {name!r}")

__all__ = ["ApproxError", "CkksnetError", "CompileError", "ContextMismatchError", "CorruptDataError", "DataError",
           "InputError", "InsufficientMemoryError", "LevelError", "MissingKeyError", "NonFiniteError", "PresetError",
           "RangeError", "SerializationError", "ShapeError", "BackendError", "UnknownBackendError", "VersionMismatchError", "WrongFileTypeError", "__version__", "compile", "set_threads", "Client", "Server",
           "load_plan", "load_client_spec", "Plan", "ClientSpec"]
