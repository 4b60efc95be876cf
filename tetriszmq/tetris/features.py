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

from collections.abc import Sequence
from functools import cache

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


WALLS = np.array([PLAYFIELD] + [0] * COLS + [PLAYFIELD], dtype=np.int64)  # the wall columns either side


def column_masks(filled: np.ndarray) -> np.ndarray:
    """A ``(20, 10)`` bool board -> ``(12,)`` int64 column bitmasks, a full wall column each side.

    Bit ``r`` is row ``r`` from the top. The walls make the neighbours of the edge columns
    (row transitions, wells) and full rows (a row is full when the AND of all 12 has its bit)
    need no special case.
    """
    weights = np.left_shift(1, np.arange(ROWS, dtype=np.int64))[:, None]
    return WALLS | np.pad((filled * weights).sum(axis=0), 1)


def column_heights(cols: np.ndarray) -> np.ndarray:
    """``(12, ...)`` walled column masks -> ``(10, ...)`` heights of the playfield's columns."""
    return _column_table().take(cols[1:-1]) & _SUM_MASKS[HEIGHT, 0]


def board_features(filled: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Features of one ``(20, 10)`` board as it stands (no placement: lines, landing, eroded are 0)."""
    return Afterstates(column_masks(filled)[:, None], 0, 0, 0).compute(names)[0]


class Afterstates:
    """A stack of boards left by N placements, with what the placements themselves did.

    All 12 features of all N boards are computed at once, on creation, into one ``(12, N)``
    array (`by_feature`, a row per feature): what costs is the number of numpy calls (~0.5-1
    us each), not the size of the arrays, so the whole set (about 30 calls) is cheaper than
    choosing among them, and a feature list is a selection of rows. The boards are stored
    column-major, ``(12, N)``, so that every sum, maximum or OR over a board's columns is an
    element-wise operation over rows of N candidates (numpy's fast inner loop), not N short
    reductions. Sums over columns (heights, holes, column transitions, hole depth) come from
    one gather in `_column_table` and one sum.

    :param cols: ``(12, N)`` int64 walled column masks after full rows were cleared.
    :param lines: ``(N,)`` rows cleared by each placement (or 0: none cleared any).
    :param landing_height: ``(N,)`` see the module docstring.
    :param eroded_cells: ``(N,)`` see the module docstring (or 0 with ``lines``).
    """

    __slots__ = ("by_feature", "cols", "heights")

    def __init__(self, cols: np.ndarray, lines: np.ndarray | int, landing_height: np.ndarray | float,
                 eroded_cells: np.ndarray | int) -> None:
        self.cols = cols
        self.by_feature, self.heights = _all_features(cols, lines, landing_height, eroded_cells)

    def compute(self, names: Sequence[str]) -> np.ndarray:
        """``(N, len(names))`` float32 feature matrix."""
        return self.by_feature[rows_of(names)].T


_ROWS_OF = {name: i for i, name in enumerate((  # `Afterstates.by_feature`'s rows: the packed sums first
    "aggregate_height", "holes", "column_transitions", "hole_depth",  # `_column_table`'s field order
    "max_height", "bumpiness", "row_transitions", "cumulative_wells", "rows_with_holes",
    "landing_height", "lines", "eroded_cells",  # the last two: one zero-fill when nothing clears
))}
assert set(_ROWS_OF) == set(_SPEC)


def rows_of(names: Sequence[str]) -> list[int]:
    """The rows of `Afterstates.by_feature` that hold these features, in this order."""
    return [_ROWS_OF[name] for name in names]


def _all_features(cols: np.ndarray, lines: np.ndarray | int, landing_height: np.ndarray | float,
                  eroded_cells: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """``(12, N)`` float32 features (rows: `_ROWS_OF`), and the ``(10, N)`` int64 column heights."""
    row = _ROWS_OF
    inner = cols[1:-1]
    out = np.empty((len(row), cols.shape[1]), dtype=np.float32)
    per_column = _column_table().take(inner)
    out[:4] = (np.add.reduce(per_column, axis=0) >> _SUM_SHIFTS) & _SUM_MASKS  # carries only go up: sums intact
    holes = np.bitwise_or.reduce(per_column, axis=0) >> HOLE_ROWS_SHIFT  # the fields below are OR-ed garbage
    out[row["rows_with_holes"]] = np.bitwise_count(holes)
    heights = per_column & _SUM_MASKS[0]  # HEIGHT, the lowest field
    max_height = out[row["max_height"]]
    max_height[:] = np.maximum.reduce(heights, axis=0)
    steps = heights[1:] - heights[:-1]
    np.add.reduce(np.abs(steps, out=steps), axis=0, out=out[row["bumpiness"]])
    row_transitions = out[row["row_transitions"]]
    # the walls' 2 for each empty row above the stack do not count
    np.add.reduce(np.bitwise_count(cols[1:] ^ cols[:-1]), axis=0, out=row_transitions, initial=-2 * ROWS)
    row_transitions += max_height
    row_transitions += max_height
    wells = cols[:-2] & cols[2:]
    wells &= ~inner
    np.add.reduce(_well_table().take(wells), axis=0, out=out[row["cumulative_wells"]])
    out[row["landing_height"]] = landing_height
    if isinstance(lines, int):
        out[row["lines"]:] = lines  # no placement cleared a row, so none eroded a cell
    else:
        out[row["lines"]] = lines
        out[row["eroded_cells"]] = eroded_cells
    return out, heights


# Per-column counts, some over pairs of cells in a column, which a few bit operations cannot do
# but a lookup table over all 2^20 columns can; each is built on first use (~0.1-0.3 s).

HEIGHT, HOLES, COLUMN_TRANSITIONS, HOLE_DEPTH = range(4)  # the counts of `_column_table`, low bits first
_SUM_BITS = (8, 8, 8, 10)  # wide enough for each count's sum over 10 columns: 200, 190, 200 and 1,000 at most
_SUM_SHIFTS = np.cumsum((0, *_SUM_BITS[:-1]), dtype=np.int64)[:, None]
_SUM_MASKS = (1 << np.array(_SUM_BITS, dtype=np.int64))[:, None] - 1
HOLE_ROWS_SHIFT = sum(_SUM_BITS)  # then the column's holes as 20 row bits


@cache
def _column_table() -> np.ndarray:
    """Indexed by a column's 20 row bits: its height, holes, transitions (floor filled), hole depth, hole rows.

    All packed in one int64 (8 MB in all), so that one gather fetches them, one sum adds the
    counts up over the columns (each field wide enough for its sum; the hole rows above them
    sum to garbage) and one OR gives the rows with holes (the counts below OR to garbage).
    """
    cols = np.arange(1 << ROWS, dtype=np.int64) | FLOOR
    holes = ~cols & ~((cols & -cols) - 1) & PLAYFIELD  # empty, and below the column's top filled cell
    depth = np.zeros(1 << ROWS, dtype=np.int64)
    for d in range(1, ROWS):
        depth += np.bitwise_count(holes & (cols << d))  # holes with a filled cell d rows above
    counts = {
        HEIGHT: ROWS - np.bitwise_count((cols & -cols) - 1).astype(np.int64),
        HOLES: np.bitwise_count(holes),
        COLUMN_TRANSITIONS: np.bitwise_count((cols ^ (cols >> 1)) & PLAYFIELD),
        HOLE_DEPTH: depth,
    }
    table = holes << HOLE_ROWS_SHIFT
    for field, count in counts.items():
        assert COLS * int(count.max()) < 1 << _SUM_BITS[field]
        table |= count.astype(np.int64) << int(_SUM_SHIFTS[field, 0])
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
