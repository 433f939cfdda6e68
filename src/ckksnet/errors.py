"""Every exception ckksnet raises on purpose.

All derive from :class:`CkksnetError`, so ``except ckksnet.CkksnetError``
catches anything the library reports; the subclasses let callers (and tests)
tell the cases apart.
"""
from __future__ import annotations


class CkksnetError(Exception):
    """Base class of all ckksnet errors."""


class InputError(CkksnetError, ValueError):
    """Input values or shapes that ckksnet refuses to process."""


class ShapeError(InputError):
    """An array has the wrong length or shape."""


class NonFiniteError(InputError):
    """An array contains NaN or infinity."""


class RangeError(InputError):
    """Values exceed the range a preset or an approximation was built for."""


class WrongTypeError(InputError, TypeError):
    """An argument of the wrong type: a numpy array where a ciphertext is expected, the
    secret-key holder (``CkksClient``) where evaluation keys (``CkksServer``) are expected, a
    server where a client is. Also a ``TypeError``, so older ``except TypeError`` still works."""


class PresetError(CkksnetError, ValueError):
    """An unknown or inconsistent parameter preset."""


class MissingKeyError(CkksnetError):
    """An operation needs an evaluation key (rotation, bootstrap) that was not generated or loaded."""


class InsufficientMemoryError(CkksnetError, MemoryError):
    """Refused before starting: the work (key generation, a key load) needs more memory than this
    process may allocate; the message names both figures in GiB and the override."""


class LevelError(CkksnetError):
    """A ciphertext has fewer levels left than an operation needs."""


class DecryptionError(CkksnetError):
    """A ciphertext decrypted to values OpenFHE cannot decode ("approximation error is too
    high"): a value grew beyond what the ciphertext's modulus holds, most often an activation
    beyond its approximation's bound B, where the ReLU polynomial explodes. The message says
    what to do (recalibrate, raise ``compile(..., margin=...)`` or ``relu_extension``)."""


class SerializationError(CkksnetError):
    """Base class of errors while writing or reading serialized objects."""


class WrongFileTypeError(SerializationError):
    """The data is a ckksnet object of another kind, or not a ckksnet file at all."""


class UnsupportedFormatError(WrongFileTypeError):
    """A ckksnet file in a format version this ckksnet cannot read (a newer one, or a retired one)."""


class CorruptDataError(SerializationError):
    """The data is truncated or its checksum does not match."""


class VersionMismatchError(SerializationError):
    """A key or ciphertext file written by another OpenFHE version than the one installed: its
    binary objects may not read back correctly. The message names both versions."""


class ContextMismatchError(SerializationError):
    """An object was made under another crypto context than the one it is used with."""


class ApproxError(CkksnetError, ValueError):
    """An approximation cannot be built or used as asked (no table for alpha, bound <= 0)."""


class DataError(CkksnetError):
    """A data set is missing or not in the expected format."""


class BackendError(CkksnetError, TypeError):
    """A backend registered wrongly, or keys and plans of different backends put together."""


class UnknownBackendError(BackendError, LookupError):
    """No backend is registered under the name asked for (a plan naming one this process lacks)."""


class CompileError(CkksnetError):
    """A model cannot be compiled to an encrypted plan."""


class ChecksumError(DataError, CorruptDataError):
    """Stored data does not match its recorded checksum (a checkpoint's SHA-256, a gzip CRC).

    A :class:`DataError` (the data set or checkpoint is unusable) and a :class:`CorruptDataError`
    (the bytes were altered after they were written), so either ``except`` catches it.
    """


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint was loaded that records no checksum, so its contents could not be verified."""
