"""Board features of many afterstates at once, chosen by name.

The placement environment scores all ~34 candidate placements every step, so a
board is stored as 12 column bitmasks (bit ``r`` = row ``r`` counted from the
top; a full wall column on each side) and one compiled kernel (numba,
`place_and_measure`) places every candidate, clears its full rows and measures
all 12 features of the board left, in one pass over its columns; the counts
that are sums over a column (height, holes, column transitions, hole depth, and
the rows of its holes) come from one lookup in a table of all 2^20 columns.
As ~40 numpy calls over all candidates at once the same work took 35-40 us a
step, however small the arrays; compiled it takes a few (docs/PERFORMANCE.md).

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

import numba
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
N_FEATURES = len(FEATURES)  # what the kernels use: a tuple of strings in compiled code is unpickled on every call
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
WALLED = COLS + 2


def column_masks(filled: np.ndarray) -> np.ndarray:
    """A ``(20, 10)`` bool board -> ``(12,)`` int64 column bitmasks, a full wall column each side.

    Bit ``r`` is row ``r`` from the top. The walls make the neighbours of the edge columns
    (row transitions, wells) and full rows (a row is full when the AND of all 12 has its bit)
    need no special case.
    """
    weights = np.left_shift(1, np.arange(ROWS, dtype=np.int64))[:, None]
    return WALLS | np.pad((filled * weights).sum(axis=0), 1)


def column_heights(cols: np.ndarray) -> np.ndarray:
    """``(12,)`` walled column masks -> ``(10,)`` heights of the playfield's columns."""
    return _column_table()[cols[1:-1]] & _MASK_HEIGHT


def columns_of(names: Sequence[str]) -> np.ndarray:
    """The columns of `Afterstates.values` that hold these features, in this order."""
    return np.array([FEATURES.index(name) for name in names], dtype=np.int64)


class Afterstates:
    """A stack of N boards (the afterstates of N placements) with all 12 features of each.

    :param cols: ``(N, 12)`` int64 walled column masks, full rows cleared.
    :param values: ``(N, 12)`` float32, the features in `FEATURES` order.
    :param heights: ``(N, 10)`` int64 column heights.
    """

    __slots__ = ("cols", "heights", "values")

    def __init__(self, cols: np.ndarray, values: np.ndarray, heights: np.ndarray) -> None:
        self.cols, self.values, self.heights = cols, values, heights

    @classmethod
    def of_boards(cls, cols: np.ndarray) -> Afterstates:
        """Boards as they stand, no placement: lines, landing height and eroded cells are 0."""
        values = np.zeros((len(cols), N_FEATURES), dtype=np.float32)
        heights = np.empty((len(cols), COLS), dtype=np.int64)
        for j in range(len(cols)):
            _board_features(cols[j], *lookup_tables(), values[j], heights[j])
        return cls(cols, values, heights)

    def compute(self, names: Sequence[str]) -> np.ndarray:
        """``(N, len(names))`` float32 feature matrix."""
        return self.values[:, columns_of(names)]


def board_features(filled: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Features of one ``(20, 10)`` board as it stands (no placement: lines, landing, eroded are 0)."""
    return Afterstates.of_boards(column_masks(filled)[None]).compute(names)[0]


# --- the compiled kernels ----------------------------------------------------------------------
# A step scores ~34 candidate boards; done as numpy calls over all of them at once, the ~40 calls
# (~0.5-1 us each, whatever the arrays' size) were most of the step. Compiled, a candidate's
# placement, line clears and 12 features are one pass over its 12 columns (docs/PERFORMANCE.md).

(LINES, HOLES_AT, BUMPINESS, AGGREGATE_HEIGHT, MAX_HEIGHT, LANDING_HEIGHT, ERODED_CELLS, ROW_TRANSITIONS,
 COLUMN_TRANSITIONS, CUMULATIVE_WELLS, HOLE_DEPTH_AT, ROWS_WITH_HOLES) = (FEATURES.index(name) for name in (
    "lines", "holes", "bumpiness", "aggregate_height", "max_height", "landing_height", "eroded_cells",
    "row_transitions", "column_transitions", "cumulative_wells", "hole_depth", "rows_with_holes"))


@numba.njit(cache=True, inline="always")
def _popcount(x: int) -> int:
    """Set bits of a non-negative int64 (SWAR: no loop, no table)."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56  # at most 64, so the wrapped product's top byte is the count


@numba.njit(cache=True)
def _board_features(cols: np.ndarray, table: np.ndarray, wells_table: np.ndarray, out: np.ndarray,
                    heights: np.ndarray) -> None:
    """The 9 features of one walled board that need no placement into ``out``, its heights into ``heights``."""
    height_sum = holes = transitions = hole_depth = hole_rows = max_height = bumpiness = wells = 0
    for c in range(1, COLS + 1):
        col = cols[c]
        packed = table[col]
        height = packed & _MASK_HEIGHT
        heights[c - 1] = height
        height_sum += height
        holes += (packed >> _SHIFT_HOLES) & _MASK_HOLES
        transitions += (packed >> _SHIFT_COLUMN_TRANSITIONS) & _MASK_COLUMN_TRANSITIONS
        hole_depth += (packed >> _SHIFT_HOLE_DEPTH) & _MASK_HOLE_DEPTH
        hole_rows |= packed >> HOLE_ROWS_SHIFT
        max_height = max(max_height, height)
        if c > 1:
            bumpiness += abs(height - heights[c - 2])
        wells += wells_table[cols[c - 1] & cols[c + 1] & ~col]
    row_transitions = 0
    for c in range(WALLED - 1):
        row_transitions += _popcount(cols[c] ^ cols[c + 1])
    out[AGGREGATE_HEIGHT] = height_sum
    out[HOLES_AT] = holes
    out[COLUMN_TRANSITIONS] = transitions
    out[HOLE_DEPTH_AT] = hole_depth
    out[ROWS_WITH_HOLES] = _popcount(hole_rows)
    out[MAX_HEIGHT] = max_height
    out[BUMPINESS] = bumpiness
    out[ROW_TRANSITIONS] = row_transitions - 2 * (ROWS - max_height)  # the walls' 2 per empty row above the stack
    out[CUMULATIVE_WELLS] = wells


@numba.njit(cache=True)
def place_and_measure(board: np.ndarray, col_bits: np.ndarray, landing_rows: np.ndarray, tops: np.ndarray,
                      actions: np.ndarray, columns: np.ndarray, n_actions: int, table: np.ndarray,
                      wells_table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Place each of K candidates on ``board``, clear full rows, and measure the boards left.

    :param board: ``(12,)`` walled column masks.
    :param col_bits: ``(K, 12)`` each candidate's cells as column masks, its matrix's top row at bit 0.
    :param landing_rows: ``(K,)`` the row each lands at; negative: its cells above the top are cut off.
    :param tops: ``(K,)`` landing height + landing row (the piece's middle, from the floor, at row 0).
    :param actions: ``(K,)`` each candidate's action id, its row in the observation.
    :param columns: ``(F,)`` the observation's features, as columns of ``values``.
    :return: `Afterstates`' ``cols``, ``values`` and ``heights``, and the ``(n_actions, F)``
        observation: the chosen features of each candidate in its action's row, zeros elsewhere.
    """
    k = len(landing_rows)
    after = np.empty((k, WALLED), dtype=np.int64)
    values = np.empty((k, N_FEATURES), dtype=np.float32)
    observation = np.zeros((n_actions, len(columns)), dtype=np.float32)
    heights = np.empty((k, COLS), dtype=np.int64)
    for j in range(k):
        row = landing_rows[j]
        cols = after[j]
        full = PLAYFIELD
        for c in range(WALLED):
            cols[c] = board[c] | (col_bits[j, c] << row if row >= 0 else col_bits[j, c] >> -row)
            full &= cols[c]
        lines = eroded = 0
        if full:
            lines = _popcount(full)
            for c in range(WALLED):
                eroded += _popcount((col_bits[j, c] << row if row >= 0 else col_bits[j, c] >> -row) & full)
        while full:  # the highest full row first: removing it leaves the rows below where they are
            top = full & -full
            above = top - 1
            for c in range(1, COLS + 1):
                cols[c] = ((cols[c] & above) << 1) | (cols[c] & ~(above | top))
            full ^= top
        _board_features(cols, table, wells_table, values[j], heights[j])
        values[j, LINES] = lines
        values[j, ERODED_CELLS] = lines * eroded
        values[j, LANDING_HEIGHT] = tops[j] - row
        for f in range(len(columns)):
            observation[actions[j], f] = values[j, columns[f]]
    return after, values, heights, observation


@numba.njit(cache=True)
def drop_rows(limit: np.ndarray, cells_cols: np.ndarray, heights: np.ndarray) -> tuple[np.ndarray, int]:
    """Each candidate's row dropped onto the surface of its columns, and the lowest of them.

    :param limit: ``(K, 4)`` for each of a candidate's cells, the row at which it rests on the floor.
    :param cells_cols: ``(K, 4)`` the cells' columns.
    :param heights: ``(10,)`` the board's column heights.
    """
    rows = np.empty(len(limit), dtype=np.int64)
    for j in range(len(limit)):
        row = limit[j, 0] - heights[cells_cols[j, 0]]
        for i in range(1, limit.shape[1]):
            row = min(row, limit[j, i] - heights[cells_cols[j, i]])
        rows[j] = row
    return rows, rows.min()


# Per-column counts, some over pairs of cells in a column, which a few bit operations cannot do
# but a lookup table over all 2^20 columns can; each is built on first use (~0.1-0.3 s).

# A column's counts packed in one int64, each field wide enough for its sum over 10 columns
# (200, 190, 200, 1,000 at most), then the column's holes as 20 row bits.
_SHIFT_HOLES, _SHIFT_COLUMN_TRANSITIONS, _SHIFT_HOLE_DEPTH, HOLE_ROWS_SHIFT = 8, 16, 24, 34
_MASK_HEIGHT = _MASK_HOLES = _MASK_COLUMN_TRANSITIONS = 0xFF
_MASK_HOLE_DEPTH = 0x3FF


def lookup_tables() -> tuple[np.ndarray, np.ndarray]:
    """The kernels' tables: `_column_table` and `_well_table`."""
    return _column_table(), _well_table()


@cache
def _column_table() -> np.ndarray:
    """Indexed by a column's 20 row bits: its height, holes, transitions (floor filled), hole depth, hole rows."""
    cols = np.arange(1 << ROWS, dtype=np.int64) | FLOOR
    holes = ~cols & ~((cols & -cols) - 1) & PLAYFIELD  # empty, and below the column's top filled cell
    depth = np.zeros(1 << ROWS, dtype=np.int64)
    for d in range(1, ROWS):
        depth += np.bitwise_count(holes & (cols << d))  # holes with a filled cell d rows above
    fields = (  # (count, shift, mask)
        (ROWS - np.bitwise_count((cols & -cols) - 1).astype(np.int64), 0, _MASK_HEIGHT),
        (np.bitwise_count(holes), _SHIFT_HOLES, _MASK_HOLES),
        (np.bitwise_count((cols ^ (cols >> 1)) & PLAYFIELD), _SHIFT_COLUMN_TRANSITIONS, _MASK_COLUMN_TRANSITIONS),
        (depth, _SHIFT_HOLE_DEPTH, _MASK_HOLE_DEPTH),
    )
    table = holes << HOLE_ROWS_SHIFT
    for count, shift, mask in fields:
        assert COLS * int(count.max()) <= mask
        table |= count.astype(np.int64) << shift
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
