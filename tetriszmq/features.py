"""Board features of many afterstates at once, chosen by name.

The placement environment scores every candidate placement each step, so each
feature is a numpy expression over a stack of boards ``(N, 20, 10)`` (row 0 at
the top, True = filled) rather than a loop over one board. Intermediate arrays
(column heights, hole mask, ...) are computed once per stack and shared.

Definitions (the Dellacherie / Thiery-Scherrer "BCTS" set plus the classic four):

- ``lines``: rows the placement cleared.
- ``holes``: empty cells with a filled cell somewhere above them in the column.
- ``bumpiness``: sum of |height difference| of neighbouring columns.
- ``aggregate_height`` / ``max_height``: sum / maximum of the column heights.
- ``landing_height``: height of the middle of the placed piece above the floor,
  before lines clear (1 for a flat piece on the floor).
- ``eroded_cells``: lines cleared x cells of the placed piece in those lines.
- ``row_transitions``: filled/empty changes along each row, walls counted as
  filled, over the rows from the highest filled cell down (empty rows above the
  stack would add a constant 2 each and so reward a taller stack).
- ``column_transitions``: filled/empty changes down each column, the floor
  counted as filled.
- ``cumulative_wells``: a well cell is empty with filled cells (or walls) left
  and right; each counts 1 + the well cells directly above it, so a well of
  depth d scores d(d+1)/2.
- ``hole_depth``: for each hole, the filled cells above it in its column, summed.
- ``rows_with_holes``: rows that contain at least one hole.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Sequence

import numpy as np

ROWS, COLS = 20, 10

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
    "column_transitions": ((ROWS + 1) * COLS, 50),
    "cumulative_wells": (COLS * ROWS * (ROWS + 1) // 2, 20),
    "hole_depth": (ROWS * COLS * ROWS, 20),
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


@dataclass
class Afterstates:
    """A stack of boards left by N placements, with what the placements themselves did.

    :param boards: ``(N, 20, 10)`` bool, after full rows were cleared.
    :param lines: ``(N,)`` rows cleared by each placement.
    :param landing_height: ``(N,)`` see the module docstring.
    :param eroded_cells: ``(N,)`` see the module docstring.
    """

    boards: np.ndarray
    lines: np.ndarray
    landing_height: np.ndarray
    eroded_cells: np.ndarray

    @cached_property
    def heights(self) -> np.ndarray:
        top = self.boards.argmax(axis=1)
        return np.where(self.boards.any(axis=1), ROWS - top, 0)

    @cached_property
    def hole_mask(self) -> np.ndarray:
        """Empty cells under their column's top filled cell."""
        under_top = np.arange(ROWS)[None, :, None] >= (ROWS - self.heights)[:, None, :]
        return under_top & ~self.boards

    def compute(self, names: Sequence[str]) -> np.ndarray:
        """``(N, len(names))`` float32 feature matrix."""
        return np.stack([_COMPUTE[n](self) for n in names], axis=1).astype(np.float32)


def _holes(a: Afterstates) -> np.ndarray:
    return a.heights.sum(axis=1) - a.boards.sum(axis=(1, 2))


def _bumpiness(a: Afterstates) -> np.ndarray:
    return np.abs(np.diff(a.heights, axis=1)).sum(axis=1)


def _row_transitions(a: Afterstates) -> np.ndarray:
    b = a.boards
    inner = (b[:, :, 1:] != b[:, :, :-1]).sum(axis=(1, 2))
    at_walls = (~b[:, :, 0]).sum(axis=1) + (~b[:, :, -1]).sum(axis=1)
    empty_rows_above_stack = ROWS - a.heights.max(axis=1)
    return inner + at_walls - 2 * empty_rows_above_stack


def _column_transitions(a: Afterstates) -> np.ndarray:
    b = a.boards
    return (b[:, 1:, :] != b[:, :-1, :]).sum(axis=(1, 2)) + (~b[:, -1, :]).sum(axis=1)


def _cumulative_wells(a: Afterstates) -> np.ndarray:
    b = a.boards
    wall = np.ones(b.shape[:2] + (1,), dtype=bool)
    left = np.concatenate([wall, b[:, :, :-1]], axis=2)
    right = np.concatenate([b[:, :, 1:], wall], axis=2)
    well = left & right & ~b
    run = np.cumsum(well, axis=1)
    # depth within the current run: the count so far minus the count at the last non-well cell
    depth = run - np.maximum.accumulate(np.where(well, 0, run), axis=1)
    return depth.sum(axis=(1, 2))


def _hole_depth(a: Afterstates) -> np.ndarray:
    filled_above = np.cumsum(a.boards, axis=1)
    return np.where(a.hole_mask, filled_above, 0).sum(axis=(1, 2))


_COMPUTE: dict[str, Callable[[Afterstates], np.ndarray]] = {
    "lines": lambda a: a.lines,
    "holes": _holes,
    "bumpiness": _bumpiness,
    "aggregate_height": lambda a: a.heights.sum(axis=1),
    "max_height": lambda a: a.heights.max(axis=1),
    "landing_height": lambda a: a.landing_height,
    "eroded_cells": lambda a: a.eroded_cells,
    "row_transitions": _row_transitions,
    "column_transitions": _column_transitions,
    "cumulative_wells": _cumulative_wells,
    "hole_depth": _hole_depth,
    "rows_with_holes": lambda a: a.hole_mask.any(axis=2).sum(axis=1),
}
assert tuple(_COMPUTE) == FEATURES
