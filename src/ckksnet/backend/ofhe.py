"""The one place ckksnet imports OpenFHE's Python module (``openfhe``), after applying its thread
rule: OpenMP reads ``OMP_NUM_THREADS`` and ``OMP_WAIT_POLICY`` once, when it loads, so a script or
notebook that never calls :func:`ckksnet.set_threads` (nor the CLI's ``--threads``) still gets
threads that fit the free cores, passive waiting and ``$CKKSNET_THREADS``, not OpenMP's one
busy-waiting thread per core (measured 12x slower beside other work: RESULTS.md "Threads")."""
from ckksnet.core.threads import ensure_applied

ensure_applied()

import openfhe  # noqa: E402  (after the thread rule, on purpose)

__all__ = ["openfhe"]
