"""The OpenFHE backend (``openfhe``): RNS-CKKS with bootstrapping over the ``openfhe`` PyPI wheel.

The key half of :class:`ckksnet.core.backend.Backend` for OpenFHE; its evaluator is
:class:`ckksnet.backend.context.CkksServer` and its secret-key holder
:class:`ckksnet.backend.context.CkksClient`. Key folders and bundles: :mod:`ckksnet.backend.keys`.

Importing this file loads no OpenFHE: planning facts (bootstrapping's rotation keys, the key
memory) come from measured tables, and bundle checks read envelope headers only
(:mod:`ckksnet.backend.bundle`); the methods that make, load or use keys import the OpenFHE
modules when called (the HTTP service and the Ray driver stay light until a job runs).
"""
from __future__ import annotations

import ctypes
import json
import os
import threading
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from ckksnet.backend import bundle
from ckksnet.core.backend import Backend, BundleInfo, KeySetView, register_backend
from ckksnet.core.costs import cost_model
from ckksnet.core.preset import PRESETS, Preset
from ckksnet.core.threads import parse_threads
from ckksnet.errors import WrongTypeError

BOOTSTRAP_ROTATIONS = Path(__file__).with_name("bootstrap_rotations.json")

#: measured at the secure preset (2026-12-04): a context 0.32 GiB; 20 rotation keys 7.34 GiB resident
#: and 9.04 GiB at the peak of their generation, so a key in memory is about 3 x its serialized
#: size (``one_key_gib``) and generation peaks 1.25 x above the resident keys
KEY_RESIDENT_FACTOR = 3.0
KEYGEN_PEAK_FACTOR = 1.25
CONTEXT_GIB = 0.4


@lru_cache(maxsize=None)
def _stored_rotations() -> dict:
    return json.loads(BOOTSTRAP_ROTATIONS.read_text())["presets"]


@lru_cache(maxsize=8)
def _measured_rotations(preset: Preset) -> frozenset:
    from ckksnet.backend.context import CkksClient  # OpenFHE: only for presets not measured before

    client = CkksClient(preset)
    client.gen_bootstrap_keys()
    return frozenset(client.rotations)

# ---------------------------------------------------------------- threads (OpenMP)
_OPENMP_NAMES = ("libgomp", "libomp", "libiomp5")


def openmp_libraries() -> list:
    """The OpenMP runtimes mapped into this process (ctypes handles, never a new load).

    OpenFHE's libraries ask for ``libgomp.so.1`` (RUNPATH ``$ORIGIN``). The 1.6.1 wheel ships
    ``openfhe/lib/libgomp.so`` under another name, so the dynamic linker takes the system's
    ``libgomp.so.1`` — or torch's ``torch/lib/libgomp.so.1`` when torch was imported first (one
    soname, one copy). Whichever it is, it is in ``/proc/self/maps``."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rstrip("\n").partition("/")[2]
                name = os.path.basename(path)
                if path and name.startswith(_OPENMP_NAMES) and "/" + path not in paths:
                    paths.append("/" + path)
    except OSError:
        return []
    libs = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            lib.omp_set_num_threads, lib.omp_get_max_threads  # noqa: B018 (an OpenMP runtime)
        except (OSError, AttributeError):
            continue
        libs.append((path, lib))
    return libs


def openmp_report() -> dict:
    """``openmp_library``, ``openmp_threads`` (what a parallel region of this thread would use)
    and ``openmp_threads_at_load`` (the thread count libgomp took from ``OMP_NUM_THREADS`` when it
    loaded: asked from a fresh thread, which sees the global setting); {} while no OpenMP runtime
    is loaded."""
    libs = openmp_libraries()
    if not libs:
        return {}
    path, lib = libs[0]
    seen: list[int] = []
    probe = threading.Thread(target=lambda: seen.append(lib.omp_get_max_threads()), daemon=True)
    probe.start()
    probe.join()
    return {"openmp_library": path, "openmp_threads": lib.omp_get_max_threads(),
            "openmp_threads_at_load": seen[0] if seen else None}


class OpenFHE(Backend):
    """OpenFHE 1.6.1 (CPU). See the module docstring."""

    name = "openfhe"

    # ------------------------------------------------------------ planning
    def bootstrap_rotations(self, preset: Preset) -> frozenset:
        """Rotation indices (mod slots) of the keys OpenFHE's bootstrapping key generation makes
        for ``preset``: stored for the shipped presets (measured), else measured now by
        generating bootstrapping keys once (slow at large rings; a warning says so)."""
        if not preset.bootstrap:
            return frozenset()
        if preset.name in _stored_rotations() and PRESETS.get(preset.name) == preset:
            return frozenset(_stored_rotations()[preset.name]["rotations"])
        warnings.warn(f"preset {preset.name!r} is not a shipped preset: generating its bootstrapping keys "
                      "once to learn their rotation indices", stacklevel=3)
        return _measured_rotations(preset)

    def bootstrap_key_count(self, preset: Preset) -> int:
        """Automorphism keys OpenFHE's bootstrapping key generation makes for a shipped preset
        (0 if not recorded)."""
        return len(_stored_rotations().get(preset.name, {}).get("automorphisms", []))

    def key_memory_gib(self, preset: Preset, rotation_keys: int, bootstrap: bool) -> float | None:
        """From the preset's measured constants (``core/costs.json``: the whole key set of a
        bootstrapping plan, one key-switching key's size) and the factors above."""
        costs = cost_model(preset.name, self.name)
        memory = costs.memory if costs else {}
        if "one_key_gib" not in memory:
            return None
        per_key = float(memory["one_key_gib"]) * KEY_RESIDENT_FACTOR * KEYGEN_PEAK_FACTOR
        own = rotation_keys * per_key  # the plan's rotation keys beyond bootstrapping's
        if bootstrap and preset.bootstrap and "keys_gib" in memory:
            return round(float(memory["keys_gib"]) + own, 2)
        return round(CONTEXT_GIB + per_key + own, 2)  # the context, relinearization and rotation keys

    # ------------------------------------------------------------ threads
    def set_threads(self, n: int) -> None:
        """``n`` OpenMP threads: ``OMP_NUM_THREADS`` for an OpenMP runtime not loaded yet (and for
        child processes), and ``omp_set_num_threads(n)`` (ctypes) on each one loaded. OpenMP keeps
        that per calling thread: call it from the thread that computes (the CLI's main thread)."""
        n = parse_threads(n, "set_threads")
        os.environ["OMP_NUM_THREADS"] = str(n)
        for _, lib in openmp_libraries():
            lib.omp_set_num_threads(n)

    def thread_report(self) -> dict:
        return openmp_report()

    # ------------------------------------------------------------ a key set
    def make_keys(self, preset: Preset, rotations: Iterable[int], bootstrap: bool):
        """A :class:`~ckksnet.backend.context.CkksClient` with every key made; its
        ``key_memory_gb`` records the resident memory key generation added (GiB; differences of
        resident memory, so memory freed meanwhile lowers them: never below 0) and the rotation
        keys present (bootstrapping's, reused by the kernels, and the kernels' own)."""
        import psutil

        from ckksnet.backend.context import CkksClient

        rss = lambda: psutil.Process().memory_info().rss / 2**30  # noqa: E731
        rotations = list(rotations)
        start = rss()
        client = CkksClient(preset)
        if bootstrap and preset.bootstrap:
            client.gen_bootstrap_keys()  # first: later rotation keys then merge without copies
        mid = rss()
        reused = len(client.rotations)
        client.gen_rotation_keys(rotations)
        one_key = client.key_switching_key_bytes() / 2**30
        present = client.automorphism_key_count()
        client.key_memory_gb = {"bootstrap_and_relinearization": max(0.0, round(mid - start, 2)),
                                "rotation": max(0.0, round(rss() - mid, 2)),
                                "rotation_keys": len(rotations), "bootstrap_rotation_keys_reused": reused,
                                "automorphism_keys_present": present, "one_key": round(one_key, 4),
                                "automorphism_keys": round(present * one_key, 2)}
        return client

    def key_set(self, evaluator) -> KeySetView:
        from ckksnet.backend.context import CkksClient, CkksServer

        if isinstance(evaluator, CkksClient) or not isinstance(evaluator, CkksServer):
            raise WrongTypeError(f"the OpenFHE backend's evaluation keys are a CkksServer (client.evaluator(), "
                                 f"or loaded from a bundle), got {type(evaluator).__name__}; a server never "
                                 "holds the secret key")
        return KeySetView(evaluator.preset, evaluator.context_id, frozenset(evaluator.rotations),
                          evaluator.has_bootstrap_keys, evaluator.check_ciphertext)

    # ------------------------------------------------------------ files
    def save_keys(self, keys, folder: str | os.PathLike) -> Path:
        from ckksnet.backend.keys import save_keys

        return save_keys(keys, folder)

    def load_secret_keys(self, folder: str | os.PathLike):
        from ckksnet.backend.keys import load_client_keys

        return load_client_keys(folder)

    def check_evaluation_keys(self, folder: str | os.PathLike) -> BundleInfo:
        return bundle.check_evaluation_keys(folder)

    def bundle_file_allowed(self, name: str) -> bool:
        return bundle.BUNDLE_NAME.match(name) is not None

    def bundle_identity(self, folder: str | os.PathLike) -> tuple[str, Preset, int]:
        """(key set id, preset, bytes on disk) of a bundle from its context envelope alone."""
        return bundle.evaluation_keys_id(folder)

    def load_evaluation_keys(self, folder: str | os.PathLike, rotations: Iterable[int] = (),
                             bootstrap: bool = False, memory_check: bool = True):
        from ckksnet.backend.keys import load_evaluation_keys

        return load_evaluation_keys(folder, rotations, bootstrap, memory_check)

    def load_memory_gib(self, bundle_bytes: int) -> float:
        return bundle.load_memory_gib(bundle_bytes)

    # ------------------------------------------------------------ ciphertexts
    def ciphertext_to_bytes(self, keys, ct, role: str | None = None) -> bytes:
        from ckksnet.backend.serialize import ciphertext_to_bytes

        return ciphertext_to_bytes(keys, ct, role)

    def ciphertext_from_bytes(self, keys, data: bytes):
        from ckksnet.backend.serialize import ciphertext_from_bytes

        return ciphertext_from_bytes(keys, data)


register_backend(OpenFHE())
