"""Pierre Dellacherie's hand-tuned one-piece controller: the reference line for learned agents.

It scores every legal placement by a fixed linear function of six afterstate
features and takes the best. It needs no training and clears thousands of
lines per game, so it also checks that the placement environment plays real
Tetris: a broken landing rule or feature would show up as a collapse in lines.
"""

from __future__ import annotations

import numpy as np

WEIGHTS: dict[str, float] = {
    "landing_height": -1.0,
    "eroded_cells": 1.0,
    "row_transitions": -1.0,
    "column_transitions": -1.0,
    "holes": -4.0,
    "cumulative_wells": -1.0,
}


class LinearAgent:
    """``act(obs) -> action``: the legal placement whose features score best under fixed ``weights``.

    :param feature_names: the features the environment reports (in any order); must include the
        weighted ones. Default: exactly those.
    """

    weights: dict[str, float] = WEIGHTS

    def __init__(self, feature_names: tuple[str, ...] | None = None) -> None:
        self.feature_names = tuple(feature_names or self.weights)
        self._columns = [self.feature_names.index(name) for name in self.weights]
        self._weights = np.array(list(self.weights.values()), dtype=np.float32)

    def __call__(self, obs: dict[str, np.ndarray]) -> int:
        return int(np.argmax(np.where(obs["mask"] > 0, self.scores(obs), -np.inf)))

    def scores(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The evaluation of each of the 40 placements (meaningless where illegal)."""
        return obs["features"][:, self._columns] @ self._weights


class Dellacherie(LinearAgent):
    """Dellacherie's six weights (`WEIGHTS`)."""
