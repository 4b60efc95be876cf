"""`StreamCallback`: a stable-baselines3 callback that streams a run on ZeroMQ.

Add it to any ``model.learn(callback=...)``. Per step it does a handful of
attribute reads and one clock read. Board frames and episodes are staged and
handed to the broker process (see `tetriszmq.stream.broker`), which does all
network and disk I/O and sends the metrics, in one batch per `FLUSH_PERIOD`:
each hand-off is a system call and a wake-up, so the number of hand-offs, not
of messages, is what publishing costs training.
Control requests arrive as flags on the shared `TrainerState` and are obeyed
here, between steps, where the model is consistent.

Given endpoints rather than a broker, the callback owns one broker per
``learn()``: bound at the start, closed at the end, so one callback serves
several ``learn()`` calls (each a new run id) and holds no socket between
them. SB3 calls no hook when ``learn()`` raises, so the broker's listener thread
watches the training thread's stack (`LearnWatch`): once ``learn()`` is left
without ``on_training_end``, the broker publishes ``error`` and frees the ports. The
context-manager form reports the exception itself, at once.
"""

from __future__ import annotations

import atexit
import math
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter
from stable_baselines3.common.monitor import Monitor

from tetriszmq.stream.broker import Broker
from tetriszmq.stream.checkpoints import Checkpoints, counters_of
from tetriszmq.stream.protocol import State, Topic
from tetriszmq.stream.relay import Uplink, side
from tetriszmq.stream.security import ServerCurve, check_exposure
from tetriszmq.stream.sockets import DEFAULT_CTL, DEFAULT_PUB, any_port, check_endpoints, control_beside
from tetriszmq.stream.state import TrainerState, lineage_of, write_run_file

FLUSH_PERIOD = 1 / 30  # seconds between hand-offs to the broker: an episode reaches subscribers this late at most
EXCEPTION_GRACE = 2.0  # seconds to wait for the exception that ended learn() to be shown (sys.last_value)
ABANDONED = "learn() ended without on_training_end (an exception or KeyboardInterrupt)"
# Fields an env's `episode_stats` cannot override: the envelope's, and those the message already has.
TAKEN = frozenset({"v", "topic", "run", "seq", "t", "episode", "timesteps", "reward", "lines", "length", "pieces"})
EXPOSURE_ADVICE = ("Pass curve=ServerCurve(secret_key_file, allow_dir) (keys from `tetriszmq keys`), "
                   "or insecure=True.")


class LoggerTap(KVWriter):
    """An SB3 logger output that keeps the latest value of every numeric scalar in ``latest``."""

    def __init__(self, latest: dict[str, float]) -> None:
        self.latest = latest

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        for key, value in key_values.items():
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                self.latest[key] = float(value)

    def close(self) -> None:
        pass


class LearnWatch:
    """Tells the broker that ``learn()`` was left without ``on_training_end``, and why.

    It holds the frame of the ``learn()`` in progress and looks for it on the training
    thread's stack (`sys._current_frames`, a few microseconds, at heartbeat rate).
    """

    def __init__(self, frame: FrameType, thread_id: int) -> None:
        self.frame = frame
        self.thread_id = thread_id
        self._gone_since = 0.0

    @classmethod
    def of_caller(cls, model: object) -> LearnWatch | None:
        """The watch of the ``learn()`` of ``model`` that is calling us; None if there is none."""
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name == "learn" and frame.f_locals.get("self") is model:
                return cls(frame, threading.get_ident())
            frame = frame.f_back
        return None

    def learning(self) -> bool:
        frame = sys._current_frames().get(self.thread_id)
        while frame is not None:
            if frame is self.frame:
                return True
            frame = frame.f_back
        return False

    def exception(self) -> BaseException | None:
        """The exception that left ``learn()``, once the interpreter or IPython has shown it."""
        shown = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        tb = shown.__traceback__ if shown is not None else None
        while tb is not None:
            if tb.tb_frame is self.frame:
                return shown
            tb = tb.tb_next
        return None

    def reason(self) -> str:
        exc = self.exception()
        return f"learn() raised {describe(exc)}" if exc is not None else ABANDONED

    def __call__(self) -> str | None:
        """For `Broker`: None while ``learn()`` runs, and for a moment after, for the exception to be shown."""
        if self.learning():
            return None
        now = time.monotonic()
        self._gone_since = self._gone_since or now
        if self.exception() is None and now - self._gone_since < EXCEPTION_GRACE:
            return None
        return self.reason()


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_LIVE: set[StreamCallback] = set()  # callbacks whose own broker is running


@atexit.register
def _close_live_runs() -> None:
    """A script that dies in ``learn()`` still publishes ``error``, with the exception's message."""
    for callback in list(_LIVE):
        callback.close(error=callback.abandoned_reason() or "the process exited during learn()")


class StreamCallback(BaseCallback):
    """Publish status, metrics, episodes and board frames; obey stop/pause/resume/save.

    :param broker: a started `Broker` to publish through (the trainer's). If None, the
        callback binds ``pub``/``ctl`` itself for the duration of each ``learn()``.
    :param pub: the stream's endpoint (``tcp://HOST:PORT``, ``ipc://PATH``); checked here.
    :param ctl: the control endpoint; a network address needs ``curve`` or ``insecure``. Default
        ``tcp://127.0.0.1:5556``, or any free port when ``pub``'s port is ``*`` or ``0`` (as the trainer's ``--ctl``).
        Ports the system chose are said on stderr at each ``learn()``, and kept in ``run.json`` with a ``run_dir``.
    :param run_name: prefix of the run id (``<run_name>-<6 hex>``, new for each ``learn()``).
    :param run_dir: a run directory like the trainer's: ``run.json``, ``metrics.jsonl`` and
        ``checkpoints/`` (``save`` works), so the run is listed with the others.
    :param checkpoints: where ``save`` requests and periodic checkpoints go (default: under
        ``run_dir``); without either, ``save`` is refused.
    :param checkpoint_every: timesteps between periodic checkpoints under ``run_dir`` (0: none).
    :param board: stream board frames from env 0 if the envs have ``board_frame()``.
    :param board_fps: board frames per second at most (0: none), so the stream's cost does
        not grow with training speed.
    :param metrics_every: seconds between metrics messages.
    :param info_keys: keys of an episode's last ``info`` to publish with it (``is_success``).
    :param curve: CURVE keys for both sockets; required for a network address.
    :param insecure: bind (or connect to a relay at) a network address without CURVE anyway (with a warning).
    :param relay: (without ``broker``) also connect out to a relay's trainers side
        (``tcp://relay-box:5557``, or an `Uplink` with CURVE client keys), so the relay's clients reach this run.
    """

    def __init__(
        self,
        broker: Broker | None = None,
        *,
        pub: str = DEFAULT_PUB,
        ctl: str | None = None,
        run_name: str = "sb3",
        run_dir: str | Path | None = None,
        checkpoints: Checkpoints | None = None,
        checkpoint_every: int = 0,
        board: bool = True,
        board_fps: float = 30.0,
        metrics_every: float = 1.0,
        info_keys: Sequence[str] = (),
        curve: ServerCurve | None = None,
        insecure: bool = False,
        relay: Uplink | str | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self._own_broker = broker is None
        self.relay = Uplink(side(relay, "relay")) if isinstance(relay, str) else relay
        ctl = control_beside(pub, DEFAULT_CTL) if ctl is None else ctl
        if broker is None:
            check_endpoints(pub, ctl)
            check_exposure([pub, ctl], curve is not None, insecure, advice=EXPOSURE_ADVICE)
            if self.relay is not None:
                check_exposure([self.relay.side.stream, self.relay.side.control], self.relay.curve is not None,
                               insecure, advice="Pass relay=Uplink(side, ClientCurve(...)), or insecure=True.",
                               action="connect to")
        self.endpoints = (pub, ctl)
        self.run_name = run_name
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.lineage = lineage_of(self.run_dir, run_name)  # one run for every learn() of this callback
        if checkpoints is None and self.run_dir is not None:
            checkpoints = Checkpoints(self.run_dir / "checkpoints", checkpoint_every)
        self.checkpoints = checkpoints
        self.board_period = 1.0 / board_fps if board and board_fps > 0 else math.inf
        self.metrics_every = metrics_every
        self.info_keys = tuple(info_keys)
        self.curve = curve
        self.broker = broker  # an own broker is made by `bind`, once per learn()
        self.state = broker.state if broker is not None else TrainerState(run="")
        self.tap = LoggerTap(self.state.scalars)
        self._training = False
        self._ended: dict[str, int] = {}  # the counters of this callback's last run, for a learn() that continues it
        self._next_board = self._next_flush = self._rollout_started = 0.0
        self._board_episode = 1  # the `episode` of env 0's game in board frames: fixed while that game lasts
        self._returns = self._lengths = np.zeros(0)  # per env, for envs without a Monitor

    # SB3 hooks --------------------------------------------------------------

    def update_locals(self, locals_: dict[str, Any]) -> None:
        """Keep SB3's dict of the rollout's locals rather than copy it into ours at every step (~1 us each)."""
        self.locals = locals_

    def _on_training_start(self) -> None:
        if self._own_broker:
            self._close_abandoned_runs()
            self.bind()  # unless `bind` was called before learn()
            for name, value in self._counters_now().items():  # now that the model's timesteps are known
                setattr(self.state, name, value)
            self.broker.watch = LearnWatch.of_caller(self.model)
            if self.run_dir is not None:
                write_run_file(self.run_dir, self.state, algo=type(self.model).__name__)
        self._training = True
        self.state.can_save = self.checkpoints is not None
        if self.tap not in self.model.logger.output_formats:  # a custom logger outlives a raised learn()
            self.model.logger.output_formats.append(self.tap)
        if self.checkpoints is not None:
            self.checkpoints.start_at(self.num_timesteps)
        self._decide_per_env_work()
        self.state.timesteps = self.num_timesteps
        self.set_state(State.RUNNING)

    def _on_step(self) -> bool:
        state = self.state
        state.timesteps = self.num_timesteps
        dones = self.locals.get("dones")
        if self._returns.size:
            self._returns += self.locals["rewards"]
            self._lengths += 1
        if dones is not None and np.count_nonzero(dones):  # 4x quicker than dones.any() on one env
            self._episodes_ended(dones, self.locals["infos"])
        now = time.monotonic()
        if now >= self._next_board:
            self._stage_board(now)
        if now >= self._next_flush:
            self._next_flush = now + FLUSH_PERIOD
            self.broker.outbox.flush()
        if self.checkpoints is not None and self.checkpoints.due(self.num_timesteps):
            self.save()
        return self._obey() if state.attention else True

    def _on_rollout_start(self) -> None:
        self._rollout_started = time.monotonic()

    def _on_rollout_end(self) -> None:
        """A long rollout comes before a long update (PPO's), through which the broker's heartbeats and
        metrics repeat what the last hand-off told it: so it gets the rollout's last counters now."""
        if time.monotonic() - self._rollout_started >= FLUSH_PERIOD:
            self.broker.outbox.flush(always=True)

    def _on_training_end(self) -> None:
        """Also called a second time by rl-zoo3's ``finally``: the second call does nothing."""
        if not self._training:
            return
        self._training = False
        self.model.logger.output_formats.remove(self.tap)
        self.broker.outbox.stage_metrics()
        self.broker.outbox.flush()
        if self._own_broker:
            self.close()

    # Lifetime of an own broker ------------------------------------------------

    def close(self, error: str | None = None) -> None:
        """End the run: publish ``stopped`` (or ``error``) and free the ports. Safe to repeat."""
        if self not in _LIVE:
            return
        _LIVE.discard(self)
        self._ended = self.counters()
        if self.broker.running:
            if error is not None:
                self.set_state(State.ERROR, error)
            else:
                self.set_state(State.STOPPED, self.state.stop_reason or "training ended")
        self.broker.close()
        self.broker.watch = None  # drops the frame of learn() and all it holds

    def abandoned_reason(self) -> str | None:
        """Why the run is over if its ``learn()`` was left without ``on_training_end``; None otherwise."""
        watch = self.broker.watch if self.broker is not None else None
        if not isinstance(watch, LearnWatch) or watch.learning():
            return None
        return watch.reason()

    def __enter__(self) -> StreamCallback:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """``with StreamCallback(...) as cb: model.learn(callback=cb)`` reports an exception at once.

        A ``learn()`` that raised ends its run as ``error`` even if the block caught the exception (the
        reason then cannot name it), as it would without the block: the run did not end as training does.
        """
        self.close(error=f"learn() raised {describe(exc)}" if exc is not None else self.abandoned_reason())

    def bind(self) -> None:
        """Bind the endpoints now, for the next ``learn()`` (which otherwise binds them when it starts).

        Each ``learn()`` gets a fresh broker process and a new run id.
        """
        if not self._own_broker or self in _LIVE:
            return
        pub, ctl = self.endpoints
        self.state = TrainerState(run=f"{self.run_name}-{secrets.token_hex(3)}", lineage=self.lineage)
        self.tap.latest = self.state.scalars
        self.broker = Broker(self.state, pub, ctl, metrics_every=self.metrics_every,
                             journal=self.run_dir / "metrics.jsonl" if self.run_dir is not None else None,
                             curve=self.curve, relay=self.relay)
        self.broker.start()
        _LIVE.add(self)
        if any(map(any_port, self.endpoints)):  # the system chose: say what, as the trainer does
            bound = self.state.endpoints
            print(f"tetriszmq: run {self.state.run} streaming on {bound['pub']}, control on {bound['ctl']}",
                  file=sys.stderr)

    @staticmethod
    def _close_abandoned_runs() -> None:
        """Runs whose ``learn()`` raised (in a notebook, say) end now, before their ports are wanted again."""
        for callback in list(_LIVE):
            reason = callback.abandoned_reason()
            if reason is not None:
                callback.close(error=reason)

    def _counters_now(self) -> dict[str, int]:
        """At the start of ``learn()``: counters carry on when it continues the timesteps (from this
        callback's last run, else from the checkpoint the model was loaded from); a reset starts them afresh."""
        if self.num_timesteps == 0:
            return {}
        return self._ended or counters_of(self.model)

    def _decide_per_env_work(self) -> None:
        """Once per ``learn()``: board frames only if env 0 has them (never a call that can fail in a
        subprocess worker), and reward/length accumulators only for envs without a Monitor."""
        env = self.training_env
        self._next_board = 0.0 if self.board_period < math.inf and env.has_attr("board_frame") else math.inf
        self._board_episode = self.state.episodes + 1
        monitored = all(env.env_is_wrapped(Monitor))
        self._returns = np.zeros(0) if monitored else np.zeros(env.num_envs)
        self._lengths = np.zeros(0) if monitored else np.zeros(env.num_envs, np.int64)

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

    # Per-step work -----------------------------------------------------------

    def _episodes_ended(self, dones: np.ndarray, infos: list[dict[str, Any]]) -> None:
        state = self.state
        for i in np.flatnonzero(dones):
            info = infos[i]
            state.episodes += 1
            message: dict[str, Any] = {"episode": state.episodes, **self._episode_stats(i, info),
                                       "timesteps": self.num_timesteps}
            if "lines" in message:
                state.best_lines = max(state.best_lines, message["lines"])
            for key in self.info_keys:
                if key in info:
                    message[key] = _jsonable(info[key])
            self.broker.outbox.stage(Topic.EPISODE, message)
        if dones[0]:  # env 0, the one on the board, starts a new game: it is labelled once, here
            self._board_episode = state.episodes + 1

    def _episode_stats(self, i: int, info: dict[str, Any]) -> dict[str, Any]:
        """Reward, length and (Tetris) lines: the env's own stats, else Monitor's, else SB3's rewards.

        The env's other ``episode_stats`` numbers go along as they are (a placement env's board
        stats: ``holes``, ``max_height``, ``bumpiness``), so this module needs to know none of them.
        """
        stats = info.get("episode_stats")
        if stats is not None:
            more = {k: v for k, v in stats.items() if k not in TAKEN and isinstance(v, (int, float))}
            return {"reward": stats["reward"], "lines": stats["lines"], "length": stats["pieces"], **more}
        if self._returns.size:
            reward, length = float(self._returns[i]), int(self._lengths[i])
            self._returns[i] = self._lengths[i] = 0
            return {"reward": reward, "length": length}
        episode = info["episode"]
        return {"reward": float(episode["r"]), "length": int(episode["l"])}

    def _stage_board(self, now: float) -> None:
        self._next_board = now + self.board_period
        frame = self.training_env.env_method("board_frame", indices=0)[0]
        frame["episode"] = self._board_episode
        self.broker.outbox.stage(Topic.BOARD, frame)

    def _obey(self) -> bool:
        """Act on control flags set for the broker; False ends ``learn()``."""
        state = self.state
        if state.failure:
            raise OSError(state.failure)
        if state.save_requested:
            state.save_requested = False
            self.save()
        if state.paused and not state.stop_requested:
            self._wait_while_paused()
        return not state.stop_requested

    def _wait_while_paused(self) -> None:
        """Wait for ``resume``; a ``stop`` while paused goes straight to stopping, never via ``running``."""
        state = self.state
        self.set_state(State.PAUSED)
        while state.paused and not state.stop_requested and not state.failure:
            state.wake.wait(1.0)
            state.wake.clear()
            if state.save_requested:
                state.save_requested = False
                self.save()
        if not (state.stop_requested or state.failure):
            self.set_state(State.RUNNING, "resumed")


def _jsonable(value: Any) -> Any:
    """An info value as JSON can carry it: numpy scalars and arrays as numbers and lists, anything else as text."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)[:200]
