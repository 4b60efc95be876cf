"""Pierre Dellacherie's hand-tuned one-piece controller: the reference line for learned agents.

It scores every legal placement by a fixed linear function of six afterstate
features and takes the best. It needs no training and clears thousands of
lines per game, so it also checks that the placement environment plays real
Tetris: a broken landing rule or feature would show up as a collapse in lines.
"""

from __future__ import annotations

import numpy as np

from tetriszmq.tetris.features import DELLACHERIE_FEATURES

WEIGHTS: dict[str, float] = {
    "landing_height": -1.0,
    "eroded_cells": 1.0,
    "row_transitions": -1.0,
    "column_transitions": -1.0,
    "holes": -4.0,
    "cumulative_wells": -1.0,
}


class Dellacherie:
    """``act(obs) -> action`` for a `PlacementTetris` built with `feature_names` (in any order).

    :param feature_names: the features the environment reports; must include the six weighted ones.
    """

    def __init__(self, feature_names: tuple[str, ...] = DELLACHERIE_FEATURES) -> None:
        self.feature_names = tuple(feature_names)
        self._columns = [self.feature_names.index(name) for name in WEIGHTS]
        self._weights = np.array(list(WEIGHTS.values()), dtype=np.float32)

    def __call__(self, obs: dict[str, np.ndarray]) -> int:
        return int(np.argmax(np.where(obs["mask"] > 0, self.scores(obs), -np.inf)))

    def scores(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The evaluation of each of the 40 placements (meaningless where illegal)."""
        return obs["features"][:, self._columns] @ self._weights
