"""Tensors over several ciphertexts: :class:`Tiles`, and :class:`TiledEvaluator`, which lets
every kernel written for one ciphertext run on them.

An activation larger than one ciphertext's slots spans ``k`` ciphertexts (MPCNN's and Orion's
multi-ciphertext packing): its layout places value i of the packed vector in slot ``i % slots``
of ciphertext ``i // slots`` (:attr:`ckksnet.layout.Layout.ciphertexts`). A plan value is then a
:class:`Tiles` of k ciphertexts (as the evaluator represents them: OpenFHE ciphertexts, traced
levels or numpy slot vectors); a value of one ciphertext stays a bare ciphertext.

:class:`TiledEvaluator` wraps any evaluator: each operation on tiles runs tile by tile (the
elementwise kernels, ReLU and addition, need nothing more), plaintext operands of ``k * slots``
values are split per tile, shorter ones apply to every tile, and rotations turn each ciphertext
on its own. A kernel that moves values across ciphertexts (a linear map between layouts) reads
the tiles itself (:class:`ckksnet.kernels.linear.BlockLinearMap`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from ckksnet.errors import ShapeError


class Tiles(tuple):
    """The ``k`` ciphertexts of one tensor, in order: tile t holds packed values
    [t * slots, (t + 1) * slots)."""

    def __repr__(self) -> str:
        return f"Tiles({len(self)})"


def width(value: Any) -> int:
    """Ciphertexts in a value: len(tiles), or 1."""
    return len(value) if isinstance(value, Tiles) else 1


def tiles_of(value: Any) -> list:
    """The value's ciphertexts as a list (one for a bare ciphertext)."""
    return list(value) if isinstance(value, Tiles) else [value]


def join(parts: list) -> Any:
    """The inverse of :func:`tiles_of`: one part stays bare, more become :class:`Tiles`."""
    return parts[0] if len(parts) == 1 else Tiles(parts)


def split_packed(packed: np.ndarray, slots: int) -> list[np.ndarray]:
    """(..., k * slots) packed values -> k arrays (..., slots), one per ciphertext."""
    packed = np.asarray(packed)
    n = packed.shape[-1]
    if n % slots:
        raise ShapeError(f"{n} packed values are not a whole number of {slots}-slot ciphertexts")
    return [packed[..., t * slots:(t + 1) * slots] for t in range(n // slots)]


def tiled(ev: Any) -> "TiledEvaluator":
    """``ev`` able to take :class:`Tiles` (itself if it already is)."""
    return ev if isinstance(ev, TiledEvaluator) else TiledEvaluator(ev)


class TiledEvaluator:
    """:class:`ckksnet.core.evaluator.Evaluator` over tiles, tile by tile, on a base evaluator;
    bare ciphertexts pass straight through. Anything else (a backend's own attributes) is the
    base's."""

    def __init__(self, base: Any):
        self.base = base

    def __getattr__(self, name: str):  # slots, key_switches, levels_only, a backend's extras
        if name == "base":  # not yet set (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    # ---------------------------------------------------------------- helpers
    def _operand(self, b: Any, t: int, k: int) -> Any:
        """Tile t's part of an operand: a tile of tiles, a slice of a k * slots plaintext, or
        the operand itself (a scalar, a one-ciphertext plaintext, a bare ciphertext)."""
        if isinstance(b, Tiles):
            if len(b) != k:
                raise ShapeError(f"an operation between values of {k} and {len(b)} ciphertexts")
            return b[t]
        if isinstance(b, np.ndarray) and b.ndim >= 1 and k > 1 and b.shape[-1] == k * self.base.slots:
            s = self.base.slots
            return b[..., t * s:(t + 1) * s]
        return b

    def _map(self, fn: Callable, a: Any, *rest: Any) -> Any:
        k = max(width(a), *(width(r) for r in rest)) if rest else width(a)
        if k == 1 and not isinstance(a, Tiles) and not any(isinstance(r, Tiles) for r in rest):
            return fn(a, *rest)
        return Tiles(fn(self._operand(a, t, k), *(self._operand(r, t, k) for r in rest)) for t in range(k))

    # ---------------------------------------------------------------- levels
    def levels_left(self, ct) -> int:
        return min(self.base.levels_left(c) for c in tiles_of(ct))

    def require_levels(self, ct, needed: int, what: str = "operation") -> None:
        for c in tiles_of(ct):
            self.base.require_levels(c, needed, what)

    def bootstrap(self, ct):
        return self._map(self.base.bootstrap, ct)

    def drop_levels(self, ct, levels_left: int):
        return self._map(lambda c: self.base.drop_levels(c, levels_left), ct)

    # ---------------------------------------------------------------- arithmetic
    def add(self, a, b):
        return self._map(self.base.add, a, b)

    def sub(self, a, b):
        return self._map(self.base.sub, a, b)

    def add_many(self, cts: list):
        if not any(isinstance(c, Tiles) for c in cts):
            return self.base.add_many(cts)
        k = width(next(c for c in cts if isinstance(c, Tiles)))
        return Tiles(self.base.add_many([self._operand(c, t, k) for c in cts]) for t in range(k))

    def add_inplace(self, acc, b):
        return self._map(self.base.add_inplace, acc, b)

    def mul(self, a, b):
        return self._map(self.base.mul, a, b)

    def mul_lazy(self, a, b):
        return self._map(self.base.mul_lazy, a, b)

    def relinearize(self, ct):
        return self._map(self.base.relinearize, ct)

    def rescale(self, ct):
        return self._map(self.base.rescale, ct)

    def dot(self, pairs: Iterable):
        pairs = list(pairs)
        if not any(isinstance(c, Tiles) for c, _ in pairs):
            return self.base.dot(pairs)
        k = max(width(c) for c, _ in pairs)
        return Tiles(self.base.dot([(self._operand(c, t, k), self._operand(v, t, k)) for c, v in pairs])
                     for t in range(k))

    def rotate_composed(self, ct, ks: Iterable[int]) -> dict:
        if not isinstance(ct, Tiles):
            return self.base.rotate_composed(ct, ks)
        ks = list(ks)
        per = [self.base.rotate_composed(c, ks) for c in ct]  # each ciphertext turns on its own
        return {k: Tiles(p[k] for p in per) for k in per[0]} if per else {}

    def shortcut(self, ct, fn, levels: int):
        """Per tile: ``fn`` must be elementwise or act on one ciphertext's slots (a kernel that
        mixes ciphertexts takes its shortcut tile by tile itself)."""
        if not isinstance(ct, Tiles):
            return self.base.shortcut(ct, fn, levels)
        parts = [self.base.shortcut(c, fn, levels) for c in ct]
        return None if any(p is None for p in parts) else Tiles(parts)
