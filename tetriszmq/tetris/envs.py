"""Environment factory: tetris-gymnasium, wrapped for SB3 and for streaming.

Every environment the trainer builds offers the same two things to the
stream callback, whatever its kind:

- ``board_frame() -> dict``: the playfield with the falling piece, next
  pieces, hold, and the episode's step, lines and score (the `board` topic's
  fields, less ``episode``);
- ``info["episode_stats"] = {"reward", "lines", "pieces"}`` on the last step
  of every episode (placement envs add the mean ``holes``, ``max_height`` and
  ``bumpiness`` of the boards left, and ``info["episode_record"]``, the
  `tetriszmq.tetris.records.EpisodeRecord` that replays the episode).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from tetriszmq.config import ConfigError, EnvSection
from tetriszmq.stream.protocol import BOARD_COLS, BOARD_ROWS

PAD = 4  # tetris-gymnasium pads the playfield with 4 wall columns each side and 4 floor rows
ENV_ID = "tetris_gymnasium/Tetris"


class TetrisStats(gym.Wrapper):
    """Tetris-gymnasium's key-action env with float rewards, episode stats and board frames."""

    def __init__(self, env: gym.Env, max_pieces: int = 0) -> None:
        super().__init__(env)
        self.max_pieces = max_pieces
        self._obs: dict[str, np.ndarray] | None = None
        self._pieces = self._lines = 0
        self._score = 0.0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._obs, info = self.env.reset(**kwargs)
        self._pieces = self._lines = 0
        self._score = 0.0
        return self._obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        reward = float(reward)
        self._obs = obs
        self._score += reward
        self._lines += int(info["lines_cleared"])
        self._pieces += (reward > 0) + terminated  # a lock pays >= 1; the game-over step pays 0
        if self.max_pieces and self._pieces >= self.max_pieces:
            truncated = True
        if terminated or truncated:
            info["episode_stats"] = {"reward": self._score, "lines": self._lines, "pieces": self._pieces}
        return obs, reward, terminated, truncated, info

    def board_frame(self) -> dict[str, Any]:
        base = self.env.unwrapped
        held = base.holder.get_tetrominoes()
        board = self._obs["board"][:BOARD_ROWS, PAD:PAD + BOARD_COLS] if self._obs is not None else np.zeros(
            (BOARD_ROWS, BOARD_COLS), np.uint8)
        return {
            "board": board.tolist(),
            "next": [base.tetrominoes[i].id for i in base.queue.get_queue()],
            "hold": int(held[0].id) if held else None,
            "step": self._pieces,
            "lines": self._lines,
            "score": self._score,
        }


def make_raw_env(max_pieces: int = 0) -> gym.Env:
    import tetris_gymnasium.envs  # noqa: F401  (registers the env id)

    return TetrisStats(gym.make(ENV_ID), max_pieces)


class LinesReward(gym.Wrapper):
    """+1 per piece and 10 per line, in place of 10 x lines^2: no premium for risky multi-line clears.

    The stream and the evaluation still report the game's own score and lines (``episode_stats``).
    """

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if not terminated:
            reward = 1.0 + BOARD_COLS * info["lines_cleared"]
        if "episode_record" in info:
            info["episode_record"] = replace(info["episode_record"], reward="lines")
        return obs, reward, terminated, truncated, info


def make_placement_env(features: list[str], max_pieces: int = 0, reward: str = "score") -> gym.Env:
    from tetriszmq.tetris.placement_env import PlacementTetris

    env = PlacementTetris(features=features or None, max_pieces=max_pieces)
    return LinesReward(env) if reward == "lines" else env


def env_factory(section: EnvSection) -> Callable[[], gym.Env]:
    """A picklable-enough constructor for one monitored env of the configured kind."""
    check_env(section)
    if section.kind == "placement":
        return lambda: Monitor(make_placement_env(section.features, section.max_pieces, section.reward))
    return lambda: Monitor(make_raw_env(section.max_pieces))


def check_env(section: EnvSection) -> None:
    """Refuse settings that only make sense together (checked before a run makes its directory)."""
    if section.kind == "placement":
        check_features(section.features)
    elif section.reward != "score":
        raise ConfigError(f"env.reward: {section.reward!r} needs env.kind = 'placement'")
    elif section.features:
        raise ConfigError("env.features: only the placement env has features (env.kind = 'placement')")


def check_features(names: list[str]) -> None:
    from tetriszmq.tetris.features import FEATURES

    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ConfigError(f"env.features: unknown {', '.join(unknown)}; known: {', '.join(FEATURES)}")


def make_vec_env(section: EnvSection, seed: int) -> VecEnv:
    """``n_envs`` seeded copies; env i gets seed ``seed + i`` (always > 0)."""
    factory = env_factory(section)
    cls = SubprocVecEnv if section.vec_env == "subproc" else DummyVecEnv
    vec_env = cls([factory] * section.n_envs)
    vec_env.seed(seed)
    return vec_env
