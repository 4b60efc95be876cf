"""Board features of many afterstates at once, chosen by name.

The placement environment scores all ~34 candidate placements every step, so
a board is stored as 10 column bitmasks (bit ``r`` = row ``r`` counted from the
top, bit 20 = the floor, always set) and every feature is a handful of integer
operations over an ``(N, 10)`` array, and the counts that are sums over columns
(heights, holes, column transitions, hole depth) come from one lookup table for all
of them at once. What costs is the number of numpy calls (~0.5 us each), not the
size of the arrays: all 11 default features of 34 boards take about 30 us.

Definitions (the classic four, plus the Dellacherie / Thiery-Scherrer "BCTS" set):

- ``lines``: rows the placement cleared.
- ``holes``: empty cells with a filled cell somewhere above them in the column.
- ``bumpiness``: sum of |height difference| of neighbouring columns.
- ``aggregate_height`` / ``max_height``: sum / maximum of the column heights.
- ``landing_height``: height of the middle of the placed piece above the floor,
  before lines clear (1 for a flat piece on the floor).
- ``eroded_cells``: lines cleared x cells of the placed piece in those lines.
- ``row_transitions``: filled/empty changes along each row, walls counted as
  filled, over the rows from the highest filled cell down (empty rows above the
  stack would add a constant 2 each, and so reward a taller stack).
- ``column_transitions``: filled/empty changes down each column, the floor
  counted as filled.
- ``cumulative_wells``: a well cell is empty with filled cells (or walls) left
  and right; each counts 1 + the well cells directly above it, so a well of
  depth d scores d(d+1)/2.
- ``hole_depth``: for each hole, the filled cells above it in its column, summed.
- ``rows_with_holes``: rows that contain at least one hole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

ROWS, COLS = 20, 10
PLAYFIELD = (1 << ROWS) - 1  # the 20 row bits of a column mask
FLOOR = 1 << ROWS

# name -> (upper bound for the observation space, typical magnitude for scaling network inputs)
_SPEC: dict[str, tuple[float, float]] = {
    "lines": (4, 4),
    "holes": (ROWS * COLS, 10),
    "bumpiness": (ROWS * (COLS - 1), 20),
    "aggregate_height": (ROWS * COLS, 100),
    "max_height": (ROWS, 20),
    "landing_height": (ROWS + 4, 20),
    "eroded_cells": (16, 16),
    "row_transitions": (ROWS * (COLS + 1), 50),
    "column_transitions": (ROWS * COLS, 50),
    "cumulative_wells": (COLS * ROWS * (ROWS + 1) // 2, 20),
    "hole_depth": (COLS * (ROWS // 2) ** 2, 20),
    "rows_with_holes": (ROWS, 10),
}
FEATURES: tuple[str, ...] = tuple(_SPEC)
DELLACHERIE_FEATURES: tuple[str, ...] = (
    "landing_height", "eroded_cells", "row_transitions", "column_transitions", "holes", "cumulative_wells",
)
DEFAULT_FEATURES: tuple[str, ...] = (
    "lines", "holes", "bumpiness", "aggregate_height", "landing_height", "eroded_cells",
    "row_transitions", "column_transitions", "cumulative_wells", "hole_depth", "rows_with_holes",
)


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    """Validate feature names early, so a typo in a config fails at start-up, not mid-run."""
    unknown = [n for n in names if n not in _SPEC]
    if unknown or not names:
        raise ValueError(f"unknown or no features {unknown}; known: {', '.join(FEATURES)}")
    return tuple(names)


def upper_bounds(names: Sequence[str]) -> np.ndarray:
    return np.array([_SPEC[n][0] for n in names], dtype=np.float32)


def typical_scales(names: Sequence[str]) -> np.ndarray:
    """Divisors that bring each feature to order one, for a network's input."""
    return np.array([_SPEC[n][1] for n in names], dtype=np.float32)


def column_masks(filled: np.ndarray) -> np.ndarray:
    """``(..., 20, 10)`` bool boards -> ``(..., 10)`` int64 column bitmasks, floor bit set."""
    weights = np.left_shift(1, np.arange(ROWS, dtype=np.int64))[:, None]
    return (filled * weights).sum(axis=-2) | FLOOR


def board_features(filled: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Features of one ``(20, 10)`` board as it stands (no placement: lines, landing, eroded are 0)."""
    zero = np.zeros(1)
    return Afterstates(column_masks(filled)[None], zero, zero, zero).compute(names)[0]


class _lazy:  # noqa: N801  (a decorator, named like the one it stands in for)
    """Like `functools.cached_property`, without its per-access lock: the value is stored on first use."""

    def __init__(self, compute: Callable[[Any], np.ndarray]) -> None:
        self.compute = compute
        self.name = compute.__name__

    def __get__(self, instance: Any, owner: type) -> np.ndarray:
        value = instance.__dict__[self.name] = self.compute(instance)
        return value


@dataclass
class Afterstates:
    """A stack of boards left by N placements, with what the placements themselves did.

    What a feature needs is computed once, on first use, and shared: most of it comes from
    one lookup of every column in `_column_table` (heights, holes, transitions, hole depth).
    (`_lazy`, not `functools.cached_property`: on Python 3.11 that takes a lock per access.)

    :param cols: ``(N, 10)`` int64 column bitmasks after full rows were cleared.
    :param lines: ``(N,)`` rows cleared by each placement.
    :param landing_height: ``(N,)`` see the module docstring.
    :param eroded_cells: ``(N,)`` see the module docstring.
    """

    cols: np.ndarray
    lines: np.ndarray
    landing_height: np.ndarray
    eroded_cells: np.ndarray

    @_lazy
    def per_column(self) -> np.ndarray:
        """``(N, 10)``: each column's `_column_table` entry (height, holes, transitions, hole depth)."""
        return _column_table().take(self.cols & PLAYFIELD)

    @_lazy
    def column_sums(self) -> np.ndarray:
        """``(N, 4)`` the counts summed over the columns, indexed by `HEIGHT`, `HOLES`, ...

        One sum of the packed entries: 16 bits per count hold the sum of 10 columns, and
        a view of the sums as int16 unpacks them with no further work.
        """
        return _fields(self.per_column.sum(axis=1))

    @_lazy
    def heights(self) -> np.ndarray:
        return _fields(self.per_column)[..., HEIGHT]

    @_lazy
    def max_height(self) -> np.ndarray:
        return self.heights.max(axis=1)

    @_lazy
    def bumpiness(self) -> np.ndarray:
        heights = self.heights
        return np.abs(heights[:, 1:] - heights[:, :-1]).sum(axis=1)

    @_lazy
    def walled(self) -> np.ndarray:
        """Columns with a full wall column on each side: ``(N, 12)``."""
        walled = np.empty((len(self.cols), COLS + 2), dtype=np.int64)
        walled[:, 0] = walled[:, -1] = PLAYFIELD | FLOOR
        walled[:, 1:-1] = self.cols
        return walled

    def compute(self, names: Sequence[str]) -> np.ndarray:
        """``(N, len(names))`` float32 feature matrix."""
        out = np.empty((len(self.cols), len(names)), dtype=np.float32)
        for j, name in enumerate(names):
            out[:, j] = _COMPUTE[name](self)
        return out


def _count(bits: np.ndarray) -> np.ndarray:
    """Set bits summed over the columns of each board."""
    return np.bitwise_count(bits).sum(axis=1, dtype=np.int64)


def _fields(packed: np.ndarray) -> np.ndarray:
    """``(...)`` packed int64 counts -> ``(..., 4)`` int16 view (the counts are 16-bit, low first).

    Little-endian explicitly: on a big-endian machine ``astype`` makes the one copy that keeps it right.
    """
    return packed.astype("<i8", copy=False).view("<i2").reshape(*packed.shape, 4)


def _row_transitions(a: Afterstates) -> np.ndarray:
    changes = _count(a.walled[:, 1:] ^ a.walled[:, :-1])  # the floor bit, set everywhere, cancels
    empty_rows_above_stack = ROWS - a.max_height
    return changes - 2 * empty_rows_above_stack


def _cumulative_wells(a: Afterstates) -> np.ndarray:
    wells = a.walled[:, :-2] & a.walled[:, 2:] & ~a.cols  # ~cols clears the floor bit, the walls the rest
    return _well_table()[wells].sum(axis=1, dtype=np.int64)


def _rows_with_holes(a: Afterstates) -> np.ndarray:
    cols = a.cols
    holes = ~(cols | ((cols & -cols) - 1)) & PLAYFIELD  # neither filled nor above the column's top
    return np.bitwise_count(np.bitwise_or.reduce(holes, axis=1))


# Per-column counts, some over pairs of cells in a column, which a few bit operations cannot do
# but a lookup table over all 2^20 columns can; each is built on first use (~0.1-0.3 s).

HEIGHT, HOLES, COLUMN_TRANSITIONS, HOLE_DEPTH = range(4)  # the counts of `_column_table`, low bits first
FIELD_BITS = 16


@cache
def _column_table() -> np.ndarray:
    """Indexed by a column's 20 row bits: its height, holes, transitions (floor filled) and hole depth.

    The four counts are packed 16 bits apart in one int64 (8 MB in all), so that one gather
    fetches them and one sum adds them up over the columns: a count is at most 100 (hole
    depth: 10 holes under 10 cells), its sum over 10 columns at most 1,000 < 2^16.
    """
    cols = np.arange(1 << ROWS, dtype=np.int64) | FLOOR
    holes = ~cols & ~((cols & -cols) - 1) & PLAYFIELD
    depth = np.zeros(1 << ROWS, dtype=np.int64)
    for d in range(1, ROWS):
        depth += np.bitwise_count(holes & (cols << d))  # holes with a filled cell d rows above
    counts = {
        HEIGHT: ROWS - np.bitwise_count((cols & -cols) - 1).astype(np.int64),
        HOLES: np.bitwise_count(holes),
        COLUMN_TRANSITIONS: np.bitwise_count((cols ^ (cols >> 1)) & PLAYFIELD),
        HOLE_DEPTH: depth,
    }
    table = np.zeros(1 << ROWS, dtype=np.int64)
    for field, count in counts.items():
        table |= count.astype(np.int64) << (FIELD_BITS * field)
    return table


@cache
def _well_table() -> np.ndarray:
    """Indexed by a column's well cells: each counts 1 + the unbroken well cells above it."""
    wells = np.arange(1 << ROWS, dtype=np.int64)
    total = np.zeros(1 << ROWS, dtype=np.int64)
    run = wells  # bit r: rows r, r-1, ..., r-k+1 are all well cells
    for k in range(1, ROWS + 1):
        total += np.bitwise_count(run)
        run = run & (wells << k)
    return total.astype(np.uint8)


_COMPUTE: dict[str, Callable[[Afterstates], np.ndarray]] = {
    "lines": lambda a: a.lines,
    "holes": lambda a: a.column_sums[:, HOLES],
    "bumpiness": lambda a: a.bumpiness,
    "aggregate_height": lambda a: a.column_sums[:, HEIGHT],
    "max_height": lambda a: a.max_height,
    "landing_height": lambda a: a.landing_height,
    "eroded_cells": lambda a: a.eroded_cells,
    "row_transitions": _row_transitions,
    "column_transitions": lambda a: a.column_sums[:, COLUMN_TRANSITIONS],
    "cumulative_wells": _cumulative_wells,
    "hole_depth": lambda a: a.column_sums[:, HOLE_DEPTH],
    "rows_with_holes": _rows_with_holes,
}
