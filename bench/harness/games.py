"""Recorded games to replay: what the replay bench and the replay unit tests play back."""

from __future__ import annotations

from tetriszmq.tetris.dellacherie import Dellacherie
from tetriszmq.tetris.placement_env import PlacementTetris
from tetriszmq.tetris.records import EpisodeRecord


def dellacherie_game(pieces: int, seed: int) -> EpisodeRecord:
    """A game of Dellacherie's agent, which clears lines for ever, cut at ``pieces``: a long game, fast to make."""
    agent = Dellacherie()
    env = PlacementTetris(features=agent.feature_names, max_pieces=pieces)
    obs, _ = env.reset(seed=seed)
    while True:
        obs, _, terminated, truncated, info = env.step(agent(obs))
        if terminated or truncated:
            return info["episode_record"]
