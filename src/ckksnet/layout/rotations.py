"""Rotation search: pure graph arithmetic over slot indices, no CKKS.

A rotation by k slots that has no key of its own is made by chaining rotations that have
keys: the keys are the edges of a graph over Z_slots, and a breadth-first search from 0 gives
every index its shortest chain (fewest key switches). Used by the evaluators (to rotate), the
kernels' baby-step tuning (to count key switches) and the plan (which keys a client makes).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable

from ckksnet.errors import MissingKeyError


@lru_cache(maxsize=16)
def _paths(slots: int, keys: frozenset) -> dict[int, tuple[int, int]]:
    parent: dict[int, tuple[int, int]] = {}
    seen = {0}
    frontier = [0]
    steps = sorted(keys)
    while frontier:  # breadth-first: fewest key switches first
        nxt = []
        for node in frontier:
            for k in steps:
                m = (node + k) % slots
                if m not in seen:
                    seen.add(m)
                    parent[m] = (node, k)
                    nxt.append(m)
        frontier = nxt
    return parent


def rotation_paths(slots: int, keys: Iterable[int]) -> dict[int, tuple[int, int]]:
    """Shortest decompositions of every rotation into available ones: {index: (previous, key)},
    found by breadth-first search over Z_slots with one edge per rotation key."""
    return _paths(slots, frozenset(int(k) % slots for k in keys if int(k) % slots))


def rotation_chain(parent: dict[int, tuple[int, int]], idx: int) -> list[int] | None:
    """The indices a rotation by ``idx`` passes through along ``parent`` (from
    :func:`rotation_paths`): idx first, its first hop from 0 last; None if unreachable."""
    out = []
    while idx:
        if idx not in parent:
            return None
        out.append(idx)
        idx = parent[idx][0]
    return out


def signed_powers_of_two(slots: int) -> list[int]:
    """Rotation indices +-2^i (mod slots): any rotation is then at most ~log2(slots)/2 key
    switches, with 2 log2(slots) - 1 keys."""
    out = {1 << i for i in range(slots.bit_length() - 1)}
    return sorted(out | {(slots - p) % slots for p in out} - {0})


def compose_rotations(slots: int, keys: Iterable[int], ks: Iterable[int],
                      what: str = "rotation keys present") -> tuple[list[int], list[tuple[int, int, int]]]:
    """How to make every rotation in ``ks`` from the rotation ``keys``, each node once.

    Returns (first hops: indices rotated directly from the input, which can share one hoisted
    decomposition; then [(index, previous index, key)] for every further node, each after the
    node it starts from). The key switches this costs are len(first) + len(further). Raises
    :class:`ckksnet.errors.MissingKeyError` naming the first rotation no chain of keys reaches.
    """
    keys = frozenset(int(k) % slots for k in keys)
    parent = rotation_paths(slots, keys)
    first: set[int] = set()
    further: dict[int, tuple[int, int, int]] = {}
    for k in dict.fromkeys(int(k) % slots for k in ks):
        chain = rotation_chain(parent, k)
        if chain is None:
            raise MissingKeyError(f"rotation {k} cannot be composed from the {len(keys)} {what}")
        first.update(chain[-1:])
        for idx in reversed(chain[:-1]):  # from the first hop outwards
            further.setdefault(idx, (idx, *parent[idx]))
    return sorted(first), list(further.values())
