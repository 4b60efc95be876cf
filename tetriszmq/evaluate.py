"""Play seeded games with a fixed policy and summarise lines per game.

Game ``i`` is seeded with ``seed + i``, so two evaluations with the same
arguments play the same pieces, and two policies can be compared game by game.
With ``record``, each game is also kept as an episode record (``episode-<i>.rec``,
i from 1), which ``tetriszmq replay DIR --episode i`` plays again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm

from tetriszmq.recorder import model_scorer
from tetriszmq.tetris import records
from tetriszmq.tetris.features import DEFAULT_FEATURES
from tetriszmq.tetris.placement_env import PlacementTetris

Observation = dict[str, np.ndarray]


class Policy(Protocol):
    """Chooses a placement; `feature_names` says which environment it reads."""

    feature_names: tuple[str, ...]

    def __call__(self, obs: Observation) -> int: ...


class ModelPolicy:
    """Greedy play of a trained SB3 model on `PlacementTetris` (e.g. a loaded afterstate-dqn checkpoint).

    The feature names come from the model's policy when it records them
    (`AfterstatePolicy` does), so a checkpoint is evaluated on the features it learnt.
    """

    def __init__(self, model: BaseAlgorithm, feature_names: Sequence[str] | None = None) -> None:
        self.model = model
        self.feature_names = tuple(feature_names or getattr(model.policy, "feature_names", DEFAULT_FEATURES))
        self.scores = model_scorer(model)  # the values behind its choice, for board frames; None if it has none

    def __call__(self, obs: Observation) -> int:
        action, _ = self.model.predict(obs, deterministic=True)
        return int(action)


def play_game(policy: Callable[[Observation], int], env: PlacementTetris, seed: int) -> dict[str, Any]:
    """One game to game over or the env's piece cap: its ``episode_stats``, whether it was capped, its record."""
    obs, _ = env.reset(seed=seed)
    while True:
        obs, _, terminated, truncated, info = env.step(policy(obs))
        if terminated or truncated:
            return {**info["episode_stats"], "capped": truncated, "record": info["episode_record"]}


def evaluate(
    player: Policy | BaseAlgorithm | Callable[[Observation], int],
    games: int = 10,
    max_pieces: int = 10_000,
    seed: int = 1,
    features: Sequence[str] | None = None,
    record: Path | None = None,
) -> dict[str, Any]:
    """Play ``games`` games capped at ``max_pieces`` pieces; seeds ``seed, seed + 1, ...`` (> 0).

    The environment reports ``features``, else the player's ``feature_names``, else the default set.
    ``record``: a folder that keeps each game's episode record, game ``i`` (from 1) as ``episode-<i>.rec``.

    :return: per-game ``lines`` and ``pieces``, their mean / median / min / max,
        and ``capped``: how many games reached the piece cap.
    """
    if seed < 1:
        raise ValueError("seed must be > 0: tetris-gymnasium ignores seed 0")
    policy = ModelPolicy(player) if isinstance(player, BaseAlgorithm) else player
    names = features or getattr(policy, "feature_names", DEFAULT_FEATURES)
    env = PlacementTetris(features=names, max_pieces=max_pieces)
    if record is not None:
        record.mkdir(parents=True, exist_ok=True)
    results = []
    for game in range(1, games + 1):
        results.append(play_game(policy, env, seed + game - 1))
        if record is not None:
            records.write(records.episode_path(record, game), replace(results[-1]["record"], episode=game))
    lines = np.array([r["lines"] for r in results])
    return {
        "lines": lines.tolist(),
        "pieces": [r["pieces"] for r in results],
        "mean": float(lines.mean()),
        "median": float(np.median(lines)),
        "min": int(lines.min()),
        "max": int(lines.max()),
        "capped": sum(r["capped"] for r in results),
        "max_pieces": max_pieces,
    }
