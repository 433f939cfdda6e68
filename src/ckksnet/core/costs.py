"""The cost model behind ``ckksnet plan``'s estimates: seconds per operation, by levels left.

seconds(op, levels) = c0 + c1 * levels for each operation a kernel performs (an RNS limb per
level is what each product, rotation and key switch pays for). The constants are measured on
this machine by ``benchmarks/costs.py`` (least squares over several levels) and stored per
backend and preset in ``costs.json`` (``{"openfhe": {"secure": ...}}``) with the machine, date
and command: another backend (a GPU library) has other constants for the same preset; an estimate is only as good as the
hour it was measured in (this machine's speed swings 1.5x), so reports give ratios too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

COSTS_PATH = Path(__file__).with_name("costs.json")
OPERATIONS = ("add", "scalar_product", "plain_product", "product", "relinearization", "rotation", "bootstrap")


@dataclass(frozen=True)
class CostModel:
    """``coefficients``: op -> (c0, c1) seconds; ``memory``: measured GiB figures (key memory,
    one ciphertext per level) for the peak-memory estimate; ``source``: where they came from."""

    preset: str
    coefficients: dict
    memory: dict = field(default_factory=dict)
    source: str = ""

    def seconds(self, op: str, levels: int) -> float:
        c0, c1 = self.coefficients.get(op, (0.0, 0.0))
        return c0 + c1 * max(levels, 0)


@lru_cache(maxsize=None)
def _table() -> dict:
    return json.loads(COSTS_PATH.read_text()) if COSTS_PATH.exists() else {}


def cost_model(preset_name: str, backend: str) -> CostModel | None:
    """The stored cost model of a preset on a backend, or None if none was measured."""
    entry = _table().get(backend, {}).get(preset_name)
    if entry is None:
        return None
    coeffs = {op: tuple(v) for op, v in entry["coefficients"].items()}
    return CostModel(preset_name, coeffs, entry.get("memory", {}), entry.get("source", ""))
