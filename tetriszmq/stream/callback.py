"""`StreamCallback`: a stable-baselines3 callback that streams a run on ZeroMQ.

Add it to any ``model.learn(callback=...)``. Per step it does a handful of
attribute reads and one clock read. Board frames, metrics and episodes are
staged and handed to the broker thread (see `tetriszmq.stream.broker`), which does
all network and disk I/O, in one batch per `FLUSH_PERIOD`: each hand-off
wakes that thread, and a woken thread competes for the GIL, so the number of
hand-offs, not of messages, is what publishing costs training. Control
requests arrive as flags on the shared `TrainerState` and are obeyed here,
between steps, where the model is consistent.
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter

from tetriszmq.stream.broker import Broker
from tetriszmq.stream.checkpoints import Checkpoints
from tetriszmq.stream.protocol import State, Topic
from tetriszmq.stream.state import TrainerState

FLUSH_PERIOD = 1 / 30  # seconds between hand-offs to the broker: an episode reaches subscribers this late at most


class LoggerTap(KVWriter):
    """An SB3 logger output that keeps the latest value of every numeric scalar."""

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        for key, value in key_values.items():
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                self.latest[key] = float(value)

    def close(self) -> None:
        pass


class StreamCallback(BaseCallback):
    """Publish status, metrics, episodes and board frames; obey stop/pause/resume/save.

    :param broker: a started `Broker` to publish through (the trainer's). If
        None, the callback starts its own on ``pub``/``ctl`` for the duration
        of ``learn()`` and stops it afterwards.
    :param checkpoints: where ``save`` requests and periodic checkpoints go;
        without it, ``save`` is refused.
    :param board_fps: board frames per second at most (0: none), so the
        stream's cost does not grow with training speed.
    :param metrics_every: seconds between metrics messages.
    """

    def __init__(
        self,
        broker: Broker | None = None,
        *,
        pub: str = "tcp://127.0.0.1:5555",
        ctl: str = "tcp://127.0.0.1:5556",
        checkpoints: Checkpoints | None = None,
        board_fps: float = 30.0,
        metrics_every: float = 1.0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self._own_broker = broker is None
        if broker is None:
            broker = Broker(TrainerState(run=f"sb3-{secrets.token_hex(3)}"), pub, ctl)
        self.broker = broker
        self.state = broker.state
        self.checkpoints = checkpoints
        self.board_period = 1.0 / board_fps if board_fps > 0 else math.inf
        self.metrics_every = metrics_every
        self.tap = LoggerTap()
        self._next_board = self._next_metrics = self._next_flush = 0.0
        self._last_metrics = (0.0, 0)

    # SB3 hooks --------------------------------------------------------------

    def _on_training_start(self) -> None:
        if self._own_broker and not self.broker.running:
            self.broker.start()
        self.state.can_save = self.checkpoints is not None
        self.model.logger.output_formats.append(self.tap)
        if self.checkpoints is not None:
            self.checkpoints.start_at(self.num_timesteps)
        self._last_metrics = (time.monotonic(), self.num_timesteps)
        self.set_state(State.RUNNING)

    def _on_step(self) -> bool:
        state = self.state
        state.timesteps = self.num_timesteps
        dones = self.locals.get("dones")
        if dones is not None and np.count_nonzero(dones):  # 4x quicker than dones.any() on one env
            self._episodes_ended(dones, self.locals["infos"])
        now = time.monotonic()
        if now >= self._next_board:
            self._stage_board(now)
        if now >= self._next_flush:
            self._flush(now)
        if self.checkpoints is not None and self.checkpoints.due(self.num_timesteps):
            self.save()
        return self._obey() if state.attention else True

    def _on_training_end(self) -> None:
        self._stage_metrics(time.monotonic())
        self.broker.outbox.flush()
        self.model.logger.output_formats.remove(self.tap)
        if self._own_broker:
            self.set_state(State.STOPPED, self.state.reason or "training ended")
            self.broker.close()

    # What the trainer and the hooks share ------------------------------------

    def set_state(self, new: State, reason: str = "") -> None:
        self.broker.set_state(new, reason)

    def save(self, *, final: bool = False) -> None:
        """Checkpoint now, telling subscribers; an I/O error propagates and ends training."""
        assert self.checkpoints is not None
        previous = self.state.state
        self.set_state(State.SAVING)
        path = self.checkpoints.save(self.model, self.counters(), final=final)
        self.set_state(previous if previous is not State.SAVING else State.RUNNING, f"saved {path.name}")

    def counters(self) -> dict[str, int]:
        return {"episodes": self.state.episodes, "best_lines": self.state.best_lines}

    def _stage_metrics(self, now: float) -> None:
        state = self.state
        then, steps_then = self._last_metrics
        if now > then:
            state.sps = (self.num_timesteps - steps_then) / (now - then)
        self._last_metrics = (now, self.num_timesteps)
        self._next_metrics = now + self.metrics_every
        self.broker.outbox.stage(Topic.METRICS, {
            "timesteps": self.num_timesteps,
            "episodes": state.episodes,
            "sps": round(state.sps, 1),
            "dropped": self.broker.outbox.dropped,
            "scalars": self.tap.latest,
        })

    # Per-step work -----------------------------------------------------------

    def _episodes_ended(self, dones: np.ndarray, infos: list[dict[str, Any]]) -> None:
        state = self.state
        for i in np.flatnonzero(dones):
            info = infos[i]
            stats = info.get("episode_stats") or _monitor_stats(info)
            state.episodes += 1
            state.best_lines = max(state.best_lines, stats["lines"])
            self.broker.outbox.stage(Topic.EPISODE, {
                "episode": state.episodes,
                "reward": stats["reward"],
                "lines": stats["lines"],
                "length": stats["pieces"],
                "timesteps": self.num_timesteps,
            })

    def _stage_board(self, now: float) -> None:
        self._next_board = now + self.board_period
        try:
            frame = self.training_env.env_method("board_frame", indices=0)[0]
        except AttributeError:
            self._next_board = math.inf  # an env without frames: stream the rest
            return
        frame["episode"] = self.state.episodes + 1
        self.broker.outbox.stage(Topic.BOARD, frame)

    def _flush(self, now: float) -> None:
        """The per-`FLUSH_PERIOD` hand-off: metrics when due, then everything staged."""
        self._next_flush = now + FLUSH_PERIOD
        if now >= self._next_metrics:
            self._stage_metrics(now)
        self.broker.outbox.flush()

    def _obey(self) -> bool:
        """Act on control flags set by the broker thread; False ends ``learn()``."""
        state = self.state
        if state.failure:
            raise OSError(state.failure)
        if state.save_requested:
            state.save_requested = False
            self.save()
        if state.paused and not state.stop_requested:
            self._wait_while_paused()
        if state.stop_requested:
            state.reason = state.reason or "stop requested"
            return False
        return True

    def _wait_while_paused(self) -> None:
        state = self.state
        self.set_state(State.PAUSED)
        while state.paused and not state.stop_requested and not state.failure:
            state.wake.wait(1.0)
            state.wake.clear()
            if state.save_requested:
                state.save_requested = False
                self.save()
        self._last_metrics = (time.monotonic(), self.num_timesteps)  # paused time is not training speed
        self.set_state(State.RUNNING, "resumed")


def _monitor_stats(info: dict[str, Any]) -> dict[str, Any]:
    """Episode stats from SB3's Monitor, for envs that do not report lines."""
    episode = info.get("episode", {})
    return {"reward": float(episode.get("r", 0.0)), "lines": 0, "pieces": int(episode.get("l", 0))}
