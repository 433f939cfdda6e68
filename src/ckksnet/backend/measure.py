"""Measuring the cost model's constants (:mod:`ckksnet.core.costs`) on this machine.

Each operation a kernel performs is timed on ciphertexts at several levels (median of
``repeats``), and seconds = c0 + c1 * levels is fitted by least squares; the bootstrap is timed
from a nearly spent ciphertext (its cost does not depend on the input level). Used by
``benchmarks/costs.py`` and ``benchmarks/resnet20.py``, which store the result in
``costs.json`` with the machine, date and command.
"""
from __future__ import annotations

import statistics
import time

import numpy as np


def _time(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _fit(points: list[tuple[int, float]]) -> list[float]:
    lv = np.array([p[0] for p in points], dtype=float)
    sec = np.array([p[1] for p in points])
    if len(set(lv)) < 2:
        return [float(sec.mean()), 0.0]
    c1, c0 = np.polyfit(lv, sec, 1)
    return [round(float(c0), 6), round(float(max(c1, 0.0)), 6)]


def measure_costs(client, levels: list[int], repeats: int = 3, bootstraps: int = 3) -> dict:
    """{op: [c0, c1]} for the cost model, and the reference bootstrap's seconds, measured with
    ``client`` (a :class:`ckksnet.backend.CkksClient` with bootstrapping keys and a rotation key
    for index 1, as bootstrapping makes)."""
    srv = client.server()
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, client.slots)
    vec = rng.uniform(-0.5, 0.5, client.slots)
    pts: dict[str, list] = {op: [] for op in ("add", "scalar_product", "plain_product", "product",
                                              "relinearization", "rotation")}
    for lv in levels:
        ct = client.encrypt(x, levels_left=lv)
        prod = srv.mul_lazy(ct, ct)
        pts["add"].append((lv, _time(lambda: srv.add(ct, ct), repeats)))
        pts["scalar_product"].append((lv, _time(lambda: srv.mul(ct, 0.5), repeats)))
        pts["plain_product"].append((lv, _time(lambda: srv.mul(ct, vec), repeats)))
        pts["product"].append((lv, _time(lambda: srv.mul_lazy(ct, ct), repeats)))
        pts["relinearization"].append((lv - 1, _time(lambda: srv.relinearize(prod), repeats)))
        pts["rotation"].append((lv, _time(lambda: srv.rotate_composed(ct, [1]), repeats)))
    coeffs = {op: _fit(p) for op, p in pts.items()}
    boot = reference_bootstrap(client, bootstraps) if client.has_bootstrap_keys else None
    if boot is not None:
        coeffs["bootstrap"] = [round(boot, 4), 0.0]
    return {"coefficients": coeffs, "reference_bootstrap_seconds": boot, "points": pts}


def reference_bootstrap(client, repeats: int = 3) -> float:
    """Seconds of one bootstrap of a fresh ciphertext filling all ``client.slots`` slots
    (uniform values in [-0.5, 0.5], encrypted with 1 level left), median of ``repeats`` after one
    untimed call (one-off set-up): the unit in which a run's time is reported as a ratio, so that
    figures from a machine whose speed swings with the hour stay comparable."""
    srv = client.server()
    x = np.random.default_rng(1).uniform(-0.5, 0.5, client.slots)
    ct = client.encrypt(x, levels_left=1)
    srv.bootstrap(ct)
    return _time(lambda: srv.bootstrap(ct), repeats)
