"""The CKKS backend: parameter presets, client/server key split and serialization over OpenFHE.

Only this package imports ``openfhe`` for key and context management; everything above it
(kernels, runtime) talks to :class:`CkksServer` and :class:`CkksClient`.
"""
from ckksnet.backend.context import Ciphertext, CkksClient, CkksContext, CkksServer
from ckksnet.backend.presets import (PRESETS, SECURE, TEST, InsecurePresetWarning, Preset,
                                     build_crypto_context, get_preset)
from ckksnet.backend import serialize

__all__ = ["Ciphertext", "CkksClient", "CkksContext", "CkksServer", "PRESETS", "SECURE", "TEST",
           "InsecurePresetWarning", "Preset", "build_crypto_context", "get_preset", "serialize"]
