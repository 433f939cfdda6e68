"""Backends, one file each: ``ops_<name>.py`` defines a :class:`ckksnet.core.backend.Backend` and
registers it; :func:`ckksnet.core.backend.get_backend` finds it by name.

* ``ops_openfhe.py``: OpenFHE (the real one). Its parts: the context of a preset
  (``presets.py``), the client / server key split and the evaluator (``context.py``), key and
  ciphertext files (``serialize.py``, ``keys.py``), what their headers say without OpenFHE
  (``headers.py``, ``bundle.py``), measurements (``measure.py``).
* ``ops_cleartext.py``: numpy slots, no encryption: the reference, and the smallest backend.

Importing this package loads no OpenFHE: ``CkksClient`` and ``CkksServer`` are attributes that
import :mod:`ckksnet.backend.context` (and OpenFHE) when first used.
"""
from __future__ import annotations

_CONTEXT_NAMES = ("Ciphertext", "CkksClient", "CkksContext", "CkksServer")


def __getattr__(name: str):
    if name in _CONTEXT_NAMES:  # deferred: the OpenFHE module is heavy and only key holders need it
        from ckksnet.backend import context

        return getattr(context, name)
    raise AttributeError(f"module 'ckksnet.backend' has no attribute {name!r}")


__all__ = list(_CONTEXT_NAMES)
