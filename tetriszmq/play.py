"""`tetriszmq play`: one game by a trained or hand-tuned agent, streamed like a training run.

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
from tetriszmq.stream.state import TrainerState
from tetriszmq.tetris.placement_env import PlacementTetris

MIN_FRAME_GAP = 1 / 60  # board frames at most 60/s when playing flat out
Policy = Callable[[dict[str, np.ndarray]], int]


def play(policy: Policy, env: PlacementTetris, *, pub: str, ctl: str, seed: int, pps: float,
         setup_socket: Callable | None = None) -> dict[str, object]:
    """Play one game at ``pps`` placements per second (0: flat out); returns lines, pieces, score, end."""
    state = TrainerState(run=f"play-{secrets.token_hex(3)}")
    broker = Broker(state, pub, ctl, setup_socket=setup_socket)
    broker.start()
    outbox = broker.outbox
    status = broker.set_state

    period = 1.0 / pps if pps else 0.0
    obs, _ = env.reset(seed=seed)
    status(State.RUNNING)
    next_at = last_frame = 0.0
    terminated = False
    try:
        while not state.stop_requested:
            if time.monotonic() - last_frame >= MIN_FRAME_GAP:
                last_frame = time.monotonic()
                outbox.post(Topic.BOARD, {**env.board_frame(), "episode": 1})
            obs, _, terminated, truncated, info = env.step(policy(obs))
            state.timesteps += 1
            if terminated or truncated:
                break
            next_at = max(next_at + period, time.monotonic() - period)
            _wait_turn(state, next_at)
        frame = {**env.board_frame(), "episode": 1}
        state.episodes, state.best_lines = 1, frame["lines"]
        outbox.post(Topic.BOARD, frame)
        outbox.post(Topic.EPISODE, {"episode": 1, "reward": frame["score"], "lines": frame["lines"],
                                    "length": frame["step"], "timesteps": state.timesteps})
        reason = "stop requested" if state.stop_requested else "game over" if terminated else "piece cap reached"
        status(State.STOPPED, reason)
        return {"lines": frame["lines"], "pieces": frame["step"], "score": frame["score"], "end": reason}
    finally:
        broker.close()


def _wait_turn(state: TrainerState, at: float) -> None:
    """Wait until monotonic time ``at``, and while paused; a stop request ends the wait at once."""
    while not state.stop_requested and (state.paused or time.monotonic() < at):
        state.wake.wait(1.0 if state.paused else max(0.0, at - time.monotonic()))
        state.wake.clear()
