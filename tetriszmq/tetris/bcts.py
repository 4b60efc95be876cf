"""BCTS, Thiery and Scherrer's one-piece controller: a second, stronger reference line.

Dellacherie's six features plus hole depth and rows with holes, with the weights
that the cross-entropy method found for them: C. Thiery and B. Scherrer, "Building
Controllers for Tetris", ICGA Journal 32(1), 2009, pp. 3-11 (hal.inria.fr
inria-00418954), where it clears about 35 million lines per game on average without
a piece cap. Our feature definitions (`tetriszmq.tetris.features`) follow theirs; the
game here differs in its details (tetris-gymnasium's 7-bag, spawn and game-over
rules), so its lines per game are not theirs: it is a reference on the same games.
"""

from __future__ import annotations

from tetriszmq.tetris.dellacherie import LinearAgent

WEIGHTS: dict[str, float] = {
    "landing_height": -12.63,
    "eroded_cells": 6.60,
    "row_transitions": -9.22,
    "column_transitions": -19.77,
    "holes": -13.08,
    "cumulative_wells": -10.49,
    "hole_depth": -1.61,
    "rows_with_holes": -24.04,
}


class Bcts(LinearAgent):
    """BCTS's eight weights (`WEIGHTS`)."""

    weights = WEIGHTS
