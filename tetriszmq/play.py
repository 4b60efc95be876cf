"""`tetriszmq play`: one game by a trained or hand-tuned agent, streamed like a training run.

`stream_game` is the loop `tetriszmq replay` streams a recorded game with, too.

It speaks the same protocol as the trainer (status, board, episode, heartbeat
on PUB; status, stop, pause, resume, snapshot on REP), so a viewer shows it
with no change.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import numpy as np

from tetriszmq.stream.broker import Broker
from tetriszmq.stream.protocol import State, Topic
from tetriszmq.stream.security import ServerCurve
from tetriszmq.stream.state import TrainerState
from tetriszmq.tetris.placement_env import BOARD_STATS, PlacementTetris

MIN_FRAME_GAP = 1 / 60  # board frames at most 60/s when playing flat out
Policy = Callable[[dict[str, np.ndarray]], int | None]  # None: no more moves (a replay's record ran out)


Bound = Callable[[dict[str, str]], None]  # told the endpoints once bound (a port given as * or 0 is known then)


def play(policy: Policy, env: PlacementTetris, *, pub: str, ctl: str, seed: int, pps: float,
         curve: ServerCurve | None = None, on_bound: Bound | None = None) -> dict[str, object]:
    """Play one game at ``pps`` placements per second (0: flat out); returns lines, pieces, score, end."""
    obs, _ = env.reset(seed=seed)
    return stream_game(policy, env, obs, pub=pub, ctl=ctl, pps=pps, run="play", curve=curve,
                       on_bound=on_bound)


def stream_game(policy: Policy, env: PlacementTetris, obs: dict[str, np.ndarray], *, pub: str, ctl: str,
                pps: float, run: str, episode: int = 1, curve: ServerCurve | None = None,
                on_bound: Bound | None = None) -> dict[str, object]:
    """Stream a game from ``obs`` on, as a run named ``run-<random>`` with one episode, numbered ``episode``.

    Frames go out before each placement, naming it (``chosen``) when the env shows candidates.
    """
    state = TrainerState(run=f"{run}-{secrets.token_hex(3)}")
    broker = Broker(state, pub, ctl, curve=curve)
    broker.start()
    if on_bound is not None:
        on_bound(state.endpoints)
    outbox = broker.outbox
    period = 1.0 / pps if pps else 0.0
    broker.set_state(State.RUNNING)
    next_at = last_frame = 0.0
    terminated = truncated = interrupted = False
    info: dict = {}
    try:
        try:
            while not state.stop_requested and (action := policy(obs)) is not None:
                if time.monotonic() - last_frame >= MIN_FRAME_GAP:
                    last_frame = time.monotonic()
                    outbox.post(Topic.BOARD, {**env.board_frame(chosen=action), "episode": episode})
                obs, _, terminated, truncated, info = env.step(action)
                state.timesteps += 1
                if terminated or truncated:
                    break
                next_at = max(next_at + period, time.monotonic() - period)
                _wait_turn(state, next_at)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (cli): the game ends as a stop would, and says so
            interrupted = True
        frame = {**env.board_frame(), "episode": episode}
        state.episodes, state.best_lines = 1, frame["lines"]
        outbox.post(Topic.BOARD, frame)
        board_stats = {k: v for k, v in info.get("episode_stats", {}).items() if k in BOARD_STATS}
        outbox.post(Topic.EPISODE, {"episode": episode, "reward": frame["score"], "lines": frame["lines"],
                                    "length": frame["step"], "timesteps": state.timesteps, **board_stats})
        reason = ("interrupted" if interrupted else "stop requested" if state.stop_requested
                  else "game over" if terminated else "piece cap reached" if truncated else "end of record")
        broker.set_state(State.STOPPED, reason)
        return {"lines": frame["lines"], "pieces": frame["step"], "score": frame["score"], "end": reason}
    finally:
        broker.close()


def _wait_turn(state: TrainerState, at: float) -> None:
    """Wait until monotonic time ``at``, and while paused; a stop request ends the wait at once."""
    while not state.stop_requested and (state.paused or time.monotonic() < at):
        state.wake.wait(1.0 if state.paused else max(0.0, at - time.monotonic()))
        state.wake.clear()
