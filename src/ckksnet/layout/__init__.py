"""Slot layouts: where each activation (channel c, row y, column x) lives in a ciphertext's slots.

A layout is *multiplexed* with a gap g (MPCNN's packing, g = 1 is plain channel-major):
``g * g`` channels share one grid of ``grid_h x grid_w`` slots, each on its own sub-lattice, so a
stride-2 convolution needs no compaction — its output simply doubles the gap::

    gap 1 (stage 1, 16 ch x 32 x 32)       gap 2 (stage 2, 32 ch x 16 x 16, 4 ch per grid)
    block 0: c0 c0 c0 c0 ...               block 0: c0 c1 c0 c1 ...
             c0 c0 c0 c0 ...                        c2 c3 c2 c3 ...
    block 1: c1 c1 ...                     block 1: c4 c5 ...

    slot(c, y, x) = b * grid_h * grid_w + (g*y + ry) * grid_w + (g*x + rx),
    with b = c // g^2, r = c % g^2, ry = r // g, rx = r % g.

The grid is ``gap * height x gap * width`` by default, but a layout may carry a larger grid
explicitly (``grid_h``, ``grid_w``): a map whose output is smaller than the grid its input used
(a valid convolution, a stride that does not divide the size) keeps the input's grid and places
its ``height x width`` output at the grid's top-left (:meth:`Layout.resized`)::

    8 x 8 input, gap 1, grid 8 x 8   ->   5x5 valid conv: 4 x 4 output, gap 1, grid 8 x 8
                                          (rows 0-3, columns 0-3 of each channel's grid)

Slots not covered by the layout hold zeros.

**Several ciphertexts.** A layout needing more than ``slots`` slots spans
``ciphertexts = ceil(used / slots)`` ciphertexts: packed value i lives in slot ``i % slots`` of
ciphertext ``i // slots`` (:mod:`ckksnet.core.tiles`). Grids never straddle two ciphertexts
when ``slots`` is a multiple of the grid's size (:attr:`Layout.aligned`), which rotate-and-sum
pooling needs; linear maps work across any split.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ckksnet.errors import ShapeError


@dataclass(frozen=True)
class Layout:
    """channels x height x width activations multiplexed with ``gap`` into ``slots`` slots, on
    grids of ``grid_h x grid_w`` slots (0: the default, ``gap * height x gap * width``)."""

    channels: int
    height: int
    width: int
    gap: int
    slots: int
    grid_h: int = 0
    grid_w: int = 0

    def __post_init__(self) -> None:
        if min(self.channels, self.height, self.width, self.gap) < 1:
            raise ShapeError(f"layout {self.channels}x{self.height}x{self.width} (gap {self.gap}): "
                             "every size must be positive")
        object.__setattr__(self, "grid_h", int(self.grid_h or self.gap * self.height))
        object.__setattr__(self, "grid_w", int(self.grid_w or self.gap * self.width))
        if self.gap * self.height > self.grid_h or self.gap * self.width > self.grid_w:
            raise ShapeError(f"layout {self.channels}x{self.height}x{self.width} (gap {self.gap}) does not "
                             f"fit its {self.grid_h}x{self.grid_w} grid")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def blocks(self) -> int:
        return -(-self.channels // (self.gap * self.gap))

    @property
    def used(self) -> int:
        """Slots spanned by the layout (blocks x grid), including multiplexing holes."""
        return self.blocks * self.grid_h * self.grid_w

    @property
    def span(self) -> int:
        """Packed positions [0, span) hold every non-zero value; the rest are zero (kernels may fold)."""
        return self.used

    @property
    def ciphertexts(self) -> int:
        """Ciphertexts the layout spans (1 when it fits one)."""
        return -(-self.used // self.slots)

    @property
    def aligned(self) -> bool:
        """Each channel grid lies within one ciphertext (rotate-and-sum pooling needs it)."""
        return self.ciphertexts == 1 or self.slots % (self.grid_h * self.grid_w) == 0

    @cached_property
    def index(self) -> np.ndarray:
        """int64 array (channels, height, width) of slot positions."""
        c = np.arange(self.channels)[:, None, None]
        y = np.arange(self.height)[None, :, None]
        x = np.arange(self.width)[None, None, :]
        g = self.gap
        b, r = c // (g * g), c % (g * g)
        return b * self.grid_h * self.grid_w + (g * y + r // g) * self.grid_w + (g * x + r % g)

    def pack(self, chw: np.ndarray) -> np.ndarray:
        """(channels, height, width) or (batch, channels, height, width) -> (..., ciphertexts *
        slots): ciphertext t's slots are [t * slots, (t + 1) * slots)."""
        chw = np.asarray(chw, dtype=np.float64)
        if chw.shape[-3:] != (self.channels, self.height, self.width):
            raise ShapeError(f"expected (..., {self.channels}, {self.height}, {self.width}), got {chw.shape}")
        out = np.zeros(chw.shape[:-3] + (self.ciphertexts * self.slots,))
        out[..., self.index.ravel()] = chw.reshape(chw.shape[:-3] + (-1,))
        return out

    def unpack(self, vec: np.ndarray) -> np.ndarray:
        """(..., ciphertexts * slots) -> (..., channels, height, width)."""
        vec = np.asarray(vec)
        return vec[..., self.index.ravel()].reshape(vec.shape[:-1] + (self.channels, self.height, self.width))

    def strided(self, channels: int, stride: int) -> "Layout":
        """The layout of a stride-``stride`` convolution's output with ``channels`` channels."""
        if self.height % stride or self.width % stride:
            raise ShapeError(f"{self.height}x{self.width} is not divisible by stride {stride}")
        return Layout(channels, self.height // stride, self.width // stride, self.gap * stride, self.slots)

    def resized(self, channels: int, height: int, width: int, stride: tuple[int, int] = (1, 1)) -> "Layout":
        """A layout for a ``channels x height x width`` map computed from this one by a spatial
        map with ``stride`` (any linear map may target any layout; this one keeps rotations
        few): the first that fits of

        1. the same grid with the gap multiplied by the stride (multiplexed packing: ResNet's
           stride-2 stages), when both strides are equal and the output fits that lattice;
        2. the same grid and gap, the output at the grid's top-left (a valid convolution, a
           stride that does not divide the size);
        3. a fresh gap-1 layout of ``height x width`` grids;

        where none fits one ciphertext, the one that spans the fewest (ties: in that order)."""
        gaps = ([self.gap * stride[0]] if stride[0] == stride[1] and stride[0] > 1 else []) + [self.gap]
        options = [Layout(channels, height, width, g, self.slots, self.grid_h, self.grid_w)
                   for g in gaps if g * height <= self.grid_h and g * width <= self.grid_w]
        options.append(Layout(channels, height, width, 1, self.slots))
        return min(options, key=lambda lay: lay.ciphertexts)


@dataclass(frozen=True)
class VectorLayout:
    """A flat vector of ``length`` values (logits): in slots 0..length-1, or at ``positions``."""

    length: int
    slots: int
    positions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.positions is not None and (len(self.positions) != self.length or len(set(self.positions)) != self.length
                                           or not all(0 <= p < self.slots for p in self.positions)):
            raise ShapeError(f"positions must be {self.length} distinct slots below {self.slots}")

    @property
    def span(self) -> int:
        return self.length if self.positions is None else max(self.positions) + 1

    @property
    def ciphertexts(self) -> int:
        """Ciphertexts the vector spans (a long one, e.g. a wide hidden layer, more than one)."""
        return -(-self.span // self.slots)

    @cached_property
    def index(self) -> np.ndarray:
        return np.arange(self.length) if self.positions is None else np.array(self.positions, dtype=np.int64)

    def pack(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        out = np.zeros(v.shape[:-1] + (self.ciphertexts * self.slots,))
        out[..., self.index] = v
        return out

    def unpack(self, vec: np.ndarray) -> np.ndarray:
        return np.asarray(vec)[..., self.index]


@dataclass(frozen=True)
class PooledLayout:
    """One value per channel, at the slot where the channel's pixel (0, 0) lived in ``source``:
    what rotate-and-sum pooling leaves (other slots hold partial sums, which nothing reads)."""

    source: Layout

    @property
    def channels(self) -> int:
        return self.source.channels

    @property
    def slots(self) -> int:
        return self.source.slots

    @property
    def ciphertexts(self) -> int:
        return self.source.ciphertexts

    @property
    def span(self) -> int:
        """Partial sums may wrap around to any slot (pooling rotates left), in every ciphertext."""
        return self.source.ciphertexts * self.source.slots

    @cached_property
    def index(self) -> np.ndarray:
        return self.source.index[:, 0, 0]

    @property
    def box(self) -> tuple[tuple[int, int], ...]:
        """((stride, count), ...) whose offsets include every channel's slot: the position in
        the gap x gap sub-lattice (columns, rows), then the block."""
        src = self.source
        g = min(src.gap, src.channels)
        return ((1, g), (src.grid_w, -(-min(src.channels, src.gap * src.gap) // src.gap)),
                (src.grid_h * src.grid_w, src.blocks))

    def unpack(self, vec: np.ndarray) -> np.ndarray:
        return np.asarray(vec)[..., self.index]
