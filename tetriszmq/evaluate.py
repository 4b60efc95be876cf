"""Play seeded games with a fixed policy and summarise lines per game.

Game ``i`` is seeded with ``seed + i``, so two evaluations with the same
arguments play the same pieces, and two policies can be compared game by game.
With ``record``, each game is also kept as an episode record (``episode-<i>.rec``,
i from 1), which ``tetriszmq replay DIR --episode i`` plays again.

With ``workers`` > 1 the games are shared out to that many processes (spawned, one
torch thread each, the policy sent once to each); a game depends only on its seed
and the policy, so the result is the one a single process gives.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from multiprocessing import get_context
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

    def __getstate__(self) -> dict[str, Any]:
        """Pickled as the model's own save file, so a worker process rebuilds it with ``load``."""
        saved = io.BytesIO()
        self.model.save(saved)
        return {"algo": type(self.model), "model": saved.getvalue(), "feature_names": self.feature_names}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["algo"].load(io.BytesIO(state["model"]), device="cpu"), state["feature_names"])


def play_game(policy: Callable[[Observation], int], env: PlacementTetris, seed: int) -> dict[str, Any]:
    """One game to game over or the env's piece cap: its ``episode_stats``, whether it was capped, its record,
    and the ``seconds`` it took (in its worker: games in parallel overlap)."""
    start = time.monotonic()
    obs, _ = env.reset(seed=seed)
    while True:
        obs, _, terminated, truncated, info = env.step(policy(obs))
        if terminated or truncated:
            return {**info["episode_stats"], "capped": truncated, "record": info["episode_record"],
                    "seconds": time.monotonic() - start}


PARALLEL_FROM = 50_000  # pieces (games x cap) from which `default_workers` uses every CPU
GameDone = Callable[[int, dict[str, Any]], None]  # (game number from 1, its result): e.g. a progress line


def evaluate(
    player: Policy | BaseAlgorithm | Callable[[Observation], int],
    games: int = 10,
    max_pieces: int = 10_000,
    seed: int = 1,
    features: Sequence[str] | None = None,
    record: Path | None = None,
    workers: int = 1,
    on_game: GameDone | None = None,
) -> dict[str, Any]:
    """Play ``games`` games capped at ``max_pieces`` pieces; seeds ``seed, seed + 1, ...`` (> 0).

    The environment reports ``features``, else the player's ``feature_names``, else the default set.
    ``record``: a folder that keeps each game's episode record, game ``i`` (from 1) as ``episode-<i>.rec``.
    ``workers``: processes playing games at once (1: this process); the player must then pickle.
    ``on_game``: called as each game ends (in the order they end when ``workers`` > 1).

    :return: per-game ``lines`` and ``pieces``, their mean / median / min / max,
        and ``capped``: how many games reached the piece cap.
    """
    if seed < 1:
        raise ValueError("seed must be > 0: tetris-gymnasium ignores seed 0")
    policy = ModelPolicy(player) if isinstance(player, BaseAlgorithm) else player
    names = tuple(features or getattr(policy, "feature_names", DEFAULT_FEATURES))
    if record is not None:
        record.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, Any]] = {}
    play = _in_processes if workers > 1 and games > 1 else _here
    for game, result in play(policy, names, max_pieces, seed, games, workers):
        results[game] = result
        if record is not None:
            records.write(records.episode_path(record, game), replace(result["record"], episode=game))
        if on_game is not None:
            on_game(game, result)
    ordered = [results[game] for game in range(1, games + 1)]
    lines = np.array([r["lines"] for r in ordered])
    return {
        "lines": lines.tolist(),
        "pieces": [r["pieces"] for r in ordered],
        "mean": float(lines.mean()),
        "median": float(np.median(lines)),
        "min": int(lines.min()),
        "max": int(lines.max()),
        "capped": sum(r["capped"] for r in ordered),
        "max_pieces": max_pieces,
    }


def default_workers(games: int, max_pieces: int) -> int:
    """One process per CPU this process may run on, for evaluations long enough to repay starting them.

    A worker costs a few CPU-seconds to start (it imports torch and SB3); a game of a few thousand
    pieces costs about as much, so short evaluations stay in this process.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cpus, games) if games * max_pieces >= PARALLEL_FROM else 1


Games = Iterator[tuple[int, dict[str, Any]]]


def _here(policy: Callable[[Observation], int], names: tuple[str, ...], max_pieces: int, seed: int, games: int,
          workers: int) -> Games:
    env = PlacementTetris(features=names, max_pieces=max_pieces)
    for game in range(1, games + 1):
        yield game, play_game(policy, env, seed + game - 1)


def _in_processes(policy: Callable[[Observation], int], names: tuple[str, ...], max_pieces: int, seed: int,
                  games: int, workers: int) -> Games:
    with ProcessPoolExecutor(min(workers, games), mp_context=get_context("spawn"), initializer=_start_worker,
                             initargs=(policy, names, max_pieces)) as pool:
        futures = {pool.submit(_worker_game, seed + game - 1): game for game in range(1, games + 1)}
        for future in as_completed(futures):
            yield futures[future], future.result()


_worker: tuple[Callable[[Observation], int], PlacementTetris] | None = None  # a worker process's policy and env


def _start_worker(policy: Callable[[Observation], int], names: tuple[str, ...], max_pieces: int) -> None:
    global _worker
    import torch

    torch.set_num_threads(1)  # one process per core: torch's own threads would only contend
    _worker = (policy, PlacementTetris(features=names, max_pieces=max_pieces))


def _worker_game(seed: int) -> dict[str, Any]:
    assert _worker is not None
    return play_game(*_worker, seed)
