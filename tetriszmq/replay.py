"""`tetriszmq replay`: re-simulate a recorded episode, checked or streamed like a live run.

A record (`tetriszmq.tetris.records`) holds an episode's seed and placements;
playing them again on a `PlacementTetris` built from the record's environment
settings must give the same game, which `check` verifies and `replay` streams
through `tetriszmq.play.stream_game`, the loop `tetriszmq play` uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import numpy as np

from tetriszmq.play import Bound, stream_game
from tetriszmq.stream.security import ServerCurve
from tetriszmq.tetris.placement_env import PlacementTetris
from tetriszmq.tetris.records import EpisodeRecord, RecordError

Observation = dict[str, np.ndarray]


def start(record: EpisodeRecord) -> tuple[PlacementTetris, Observation]:
    """The record's environment, reset to the start of its episode.

    A record's header is checked for its types, not for settings this tetriszmq cannot build (a feature
    another version added): that is a `RecordError` too, for the CLI's message and the viewer's 422.
    """
    try:
        env = PlacementTetris(features=record.features, max_pieces=record.max_pieces)
    except ValueError as exc:
        raise RecordError(f"episode {record.episode}: its environment cannot be built here: {exc}") from None
    obs, _ = env.reset(seed=record.seed)
    return env, obs


def simulate(record: EpisodeRecord) -> dict[str, Any]:
    """Play every recorded placement at full speed; the game's lines, score, pieces and how it ended."""
    env, _ = start(record)
    end = "cut"
    for action in record.actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            end = "game over" if terminated else "piece cap"
            break
    frame = env.board_frame()
    return {"lines": frame["lines"], "score": frame["score"], "pieces": frame["step"], "end": end}


def check(record: EpisodeRecord) -> dict[str, Any]:
    """Re-simulate and compare with the record: ``{"ok", "record", "replayed"}``."""
    replayed = simulate(record)
    expected = {"lines": record.lines, "score": record.score, "pieces": record.pieces, "end": record.end}
    return {"ok": replayed == expected, "record": expected, "replayed": replayed}


def replay(record: EpisodeRecord, *, pub: str, ctl: str, pps: float, from_piece: int = 0,
           scorer: Callable[[Observation], np.ndarray] | None = None,
           curve: ServerCurve | None = None, on_bound: Bound | None = None) -> dict[str, object]:
    """Stream the recorded episode from piece ``from_piece`` on, at ``pps`` placements per second."""
    if not 0 <= from_piece <= len(record.actions):
        raise RecordError(f"--from-piece {from_piece}: the record holds pieces 0..{len(record.actions)}")
    env, obs = start(record)
    actions: Iterator[int] = iter(record.actions)
    for action in islice(actions, from_piece):
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            raise RecordError(f"--from-piece {from_piece}: the replayed game ends before that piece")
    env.set_scorer(scorer)
    return stream_game(lambda _obs: next(actions, None), env, obs, pub=pub, ctl=ctl, pps=pps, run="replay",
                       episode=record.episode or 1, curve=curve, on_bound=on_bound)
