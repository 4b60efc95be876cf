"""The trainer's I/O path without the training: a real Broker fed through `Outbox.post` at the default rates.

Same bytes and ``t`` stamp as the trainer's, heartbeats from the broker thread, ``snapshot``
answered on REP; board frames at 30/s, an episode every 0.5 s, metrics every second.
"""

from __future__ import annotations

import random
import time
from multiprocessing.connection import Connection

FPS = 30.0  # the trainer's default `publish.board_fps`
EPISODE_EVERY, METRICS_EVERY = 0.5, 1.0


def publisher(pub: str, ctl: str, fps: float, pipe: Connection, *, relay: str = "", journal: str = "") -> None:
    """Post boards, episodes and metrics until told "stop" on ``pipe``.

    Answers ``("count", t0, t1)`` with the number of boards posted with ``t`` in [t0, t1).
    ``relay``: also connect out to this relay's trainers side; ``journal``: a metrics.jsonl to write.
    """
    from pathlib import Path

    from tetriszmq.stream.broker import Broker
    from tetriszmq.stream.protocol import State, Topic
    from tetriszmq.stream.relay import Uplink, side
    from tetriszmq.stream.state import TrainerState

    state = TrainerState(run=f"bench-{random.randrange(1 << 24):06x}", state=State.RUNNING)
    broker = Broker(state, pub, ctl, heartbeat_every=0.5, relay=Uplink(side(relay, "relay")) if relay else None,
                    journal=Path(journal) if journal else None)
    broker.start()
    rng = random.Random(1)
    stack = [[0] * 10 for _ in range(8)] + [[rng.choice((0, 2, 3, 4, 5, 6, 7, 8)) for _ in range(10)]
                                            for _ in range(12)]
    stamps: list[float] = []
    pipe.send("ready")
    start = next_board = time.monotonic()
    next_episode, next_metrics, episodes = start + EPISODE_EVERY, start + METRICS_EVERY, 0
    try:
        while True:
            now = time.monotonic()
            if now >= next_board:
                next_board = max(next_board + 1.0 / fps, now)  # capped like the trainer: no catching up
                state.timesteps += 1
                board = {"board": stack, "next": [2, 3, 4, 5, 6], "hold": None, "episode": episodes + 1,
                         "step": state.timesteps % 500, "lines": 3, "score": 12.0}
                broker.outbox.post(Topic.BOARD, board)
                stamps.append(board["t"])  # `post` stamps the dict it is given
            if now >= next_episode:
                next_episode += EPISODE_EVERY
                episodes += 1
                state.episodes = episodes
                broker.outbox.post(Topic.EPISODE, {"episode": episodes, "reward": 42.0, "lines": 3,
                                                   "length": 120, "timesteps": state.timesteps})
            if now >= next_metrics:
                next_metrics += METRICS_EVERY
                broker.outbox.post(Topic.METRICS, {
                    "timesteps": state.timesteps, "episodes": episodes, "sps": 950.0, "dropped": 0,
                    "scalars": {"rollout/ep_rew_mean": 40.1, "train/loss": 0.5, "time/fps": 950.0}})
            if pipe.poll(max(0.0, min(next_board, next_episode, next_metrics) - time.monotonic())):
                request = pipe.recv()
                if request == "stop":
                    return
                _, t0, t1 = request
                pipe.send(sum(t0 <= t < t1 for t in stamps))
    finally:
        broker.close()
