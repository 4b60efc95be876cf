"""The Tetris side of a training run, as SB3 callbacks next to `StreamCallback`.

`StreamCallback` streams any SB3 run and knows nothing of Tetris; what only a
placement run has is added here, one job per callback:

- `EpisodeRecorder` keeps the run's best episode (most lines) and its last N
  as replayable records in ``<run_dir>/episodes/``, written by a `RecordWriter`
  thread so that training never waits on the disk;
- `BoardStats` logs each episode's mean holes, max height and bumpiness as SB3
  logger scalars (so they reach the stream's metrics like any other scalar);
- `ShowCandidates` lets env 0's board frames carry the agent's values of the
  current piece's placements ("what the agent is thinking");
- `PlacementCallbacks` calls the three only on the steps where they have work.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import DummyVecEnv

from tetriszmq.stream.atomic import fsync_dir
from tetriszmq.stream.state import TrainerState
from tetriszmq.tetris import records
from tetriszmq.tetris.placement_env import BOARD_STATS
from tetriszmq.tetris.records import EpisodeRecord, RecordError

KEEP = 20  # recent episodes kept per run
FLUSH_EVERY = 5.0  # seconds between writes: early episodes end dozens of times a second; a file costs ~3-6 ms
QUEUED_FLUSHES = 2  # flushes waiting for the writer thread at most; a slower disk defers the next one
Writes = list[tuple[Path, EpisodeRecord]]
Job = tuple[Writes, list[Path], Callable[[], None] | None]  # writes, deletes, then what to tell


class RecordWriter:
    """The thread that writes an `EpisodeRecorder`'s files: ~20 fsynced files per flush cost the training
    thread tens of milliseconds, every few seconds.

    Each flush is one job (records to write, files to delete, then one fsync of the folder), written as
    soon as it is handed over, so a kill -9 loses at most the last flush interval. The queue is bounded
    and a hand-off never blocks: when the disk falls behind, `submit` says so and the recorder keeps the
    work for its next flush. An I/O error is raised in the training thread at its next `submit` or at
    `close`, and ends training as it did when the writes were made there.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._jobs: queue.Queue[Job | None] = queue.Queue(QUEUED_FLUSHES)
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="tetriszmq-records", daemon=True)
        self._thread.start()

    def submit(self, writes: Writes, deletes: list[Path], *, then: Callable[[], None] | None = None,
               wait: bool = False) -> bool:
        """Hand one flush over, ``then`` called once it is on disk; False (without ``wait``) if the writer
        is still busy with earlier ones."""
        self._raise()
        try:
            self._jobs.put((writes, deletes, then), block=wait)
        except queue.Full:
            return False
        return True

    def close(self) -> None:
        """Write everything handed over, then end the thread."""
        self._jobs.put(None)
        self._thread.join()
        self._raise()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._error is None:
                    self._write(*job)
            except Exception as exc:  # kept for the training thread: this one must go on draining the queue
                self._error = exc
            finally:
                self._jobs.task_done()
        self._jobs.task_done()

    def _write(self, writes: Writes, deletes: list[Path], then: Callable[[], None] | None) -> None:
        for path, record in writes:
            records.write(path, record, sync_dir=False)
        for path in deletes:
            path.unlink(missing_ok=True)
        fsync_dir(self.directory)
        if then is not None:
            then()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


class EpisodeRecorder(BaseCallback):
    """Keep the best episode and the last ``keep`` episodes of a run as record files.

    Reads ``info["episode_record"]`` that the env hands over when an episode ends,
    numbers episodes as `StreamCallback` does (in env order, after ``first_episode``),
    and hands its writer thread, at most once per ``flush_every`` seconds, only the records
    still among the last ``keep`` by then, and ``best.rec`` when it changed. A damaged
    ``best.rec`` left by an earlier process is replaced, never fatal.

    :param directory: ``<run_dir>/episodes``.
    :param first_episode: episodes the run had before this ``learn()`` (a resumed run's count).
    :param state: the trainer's state, whose ``records`` (what its ``snapshot`` reply lists) this
        keeps up to date at each flush: ``best`` and the records this process wrote, newest first.
    """

    def __init__(self, directory: Path, keep: int = KEEP, first_episode: int = 0,
                 flush_every: float = FLUSH_EVERY, state: TrainerState | None = None) -> None:
        super().__init__()
        if keep < 1:
            raise ValueError("keep at least the last episode")
        self.directory = directory
        self.keep = keep
        self.episodes = first_episode
        self.flush_every = flush_every
        self.best: EpisodeRecord | None = None
        self._recent: deque[tuple[int, EpisodeRecord]] = deque(maxlen=keep)  # numbered when written
        self._files: set[int] = set()  # episode numbers with a file
        self._written: dict[str, float] = {}  # record name -> when its file was written
        self.state = state
        self._best_changed = self._unwritten = False
        self._next_flush = 0.0
        self._writer: RecordWriter | None = None  # one per learn()

    def _on_training_start(self) -> None:
        if self._writer is not None:  # the previous learn() raised: what it handed over is written first
            self._writer.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self.best = records.read(self.directory / records.BEST)
            self._written["best"] = (self.directory / records.BEST).stat().st_mtime
        except (RecordError, OSError):
            self.best = None  # none yet, or damaged: the next episode becomes the best
        for number in records.numbered(self.directory):
            if number > self.episodes:  # after a resumed checkpoint: this run numbers those episodes anew
                records.episode_path(self.directory, number).unlink()
            else:
                self._files.add(number)
        self._next_flush = time.monotonic() + self.flush_every
        self._writer = RecordWriter(self.directory)
        if self.state is not None:
            self.state.records = self._listing(self._files, self._written)

    def _on_step(self) -> bool:
        dones = self.locals.get("dones")
        if dones is not None and np.count_nonzero(dones):
            self._episodes_ended(dones, self.locals["infos"])
        if self.due():
            self.flush()
        return True

    def due(self) -> bool:
        """Whether records wait to be written and the flush interval has passed."""
        return self._unwritten and time.monotonic() >= self._next_flush

    def _on_training_end(self) -> None:
        try:
            self.flush(wait=True)
        finally:
            assert self._writer is not None
            writer, self._writer = self._writer, None
            writer.close()

    def _episodes_ended(self, dones: np.ndarray, infos: list[dict[str, Any]]) -> None:
        for i in np.flatnonzero(dones):
            self.episodes += 1
            record = infos[i].get("episode_record")
            if record is None:
                continue
            self._recent.append((self.episodes, record))  # numbered at a flush: early games end ~280 times a second
            self._unwritten = True
            if self.best is None or record.lines > self.best.lines:
                self.best, self._best_changed = replace(record, episode=self.episodes), True

    def flush(self, *, wait: bool = False) -> None:
        """Have the writer write what changed since the last flush and drop records older than the last
        ``keep`` (during ``learn()``); if it is still busy (and not ``wait``), all of it waits for the next."""
        assert self._writer is not None, "flush during learn()"
        self._next_flush = time.monotonic() + self.flush_every
        new = [replace(record, episode=number) for number, record in self._recent if number not in self._files]
        writes = [(records.episode_path(self.directory, record.episode), record) for record in new]
        if self._best_changed and self.best is not None:
            writes.append((self.directory / records.BEST, self.best))
        numbers = sorted(self._files.union(record.episode for record in new))
        dropped, files = numbers[:-self.keep], set(numbers[-self.keep:])
        written = self._written | {f"episode-{record.episode}": time.time() for record in new}
        if self._best_changed:
            written["best"] = time.time()
        for number in dropped:
            written.pop(f"episode-{number}", None)
        listing = self._listing(files, written)
        then = None if self.state is None else partial(setattr, self.state, "records", listing)
        deletes = [records.episode_path(self.directory, number) for number in dropped]
        if self._writer.submit(writes, deletes, then=then, wait=wait):
            self._files, self._written = files, written
            self._best_changed = self._unwritten = False

    def _listing(self, files: set[int], written: dict[str, float]) -> list[dict[str, Any]]:
        """What the trainer's ``snapshot`` lists once these files are on disk (a new list each time: the
        outbox hands the listing over only when it is another list): ``best``, then the kept records, newest first."""
        kept = [("best", self.best)] if self.best is not None and "best" in written else []
        kept += [(f"episode-{n}", replace(r, episode=n)) for n, r in reversed(self._recent) if n in files]
        return [{"name": name, **record.summary(), "when": round(written[name], 3)} for name, record in kept]


class BoardStats(BaseCallback):
    """Log the boards each episode left, as ``tetris/<stat>`` means over the episodes of a log interval."""

    def _on_step(self) -> bool:
        dones = self.locals.get("dones")
        if dones is not None and np.count_nonzero(dones):
            for i in np.flatnonzero(dones):
                stats = self.locals["infos"][i].get("episode_stats", {})
                for name in BOARD_STATS:
                    if name in stats:
                        self.logger.record_mean(f"tetris/{name}", stats[name])
        return True


class ShowCandidates(BaseCallback):
    """During ``learn()``, env 0's board frames carry the model's values of the current piece's placements.

    Only for an in-process env (`DummyVecEnv`): a subprocess env would get a copy of
    the network that never learns. Needs a policy with ``placement_values`` (afterstate-dqn).
    """

    def _on_training_start(self) -> None:
        scorer = model_scorer(self.model)
        if scorer is not None and isinstance(self.training_env, DummyVecEnv):
            self.training_env.env_method("set_scorer", scorer, indices=0)

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if isinstance(self.training_env, DummyVecEnv):
            self.training_env.env_method("set_scorer", None, indices=0)


def model_scorer(model: BaseAlgorithm):
    """``obs -> (40,) values`` from a model whose policy values placements (``placement_values``), else None.

    The numpy forward pass the policy acts with: torch's costs ~0.3 ms a board frame, 1 % of training at 30 fps.
    """
    policy = model.policy
    if not hasattr(policy, "placement_values"):
        return None

    def scores(obs: dict[str, np.ndarray]) -> np.ndarray:
        return policy.placement_values(np.asarray(obs["features"]), np.asarray(obs["mask"]))
    return scores


class PlacementCallbacks(CallbackList):
    """The callbacks above behind one test per step: theirs is work per episode, not per step.

    SB3 calls every callback at every step and copies its locals into each (about 0.5 us per callback
    and step, 0.6% of a 250 us training step for these three); here they are called, sharing this
    list's locals, only on steps where an episode ended or the recorder's flush is due.
    """

    def __init__(self, recorder: EpisodeRecorder, *others: BaseCallback) -> None:
        super().__init__([recorder, *others])
        self.recorder = recorder

    def update_locals(self, locals_: dict[str, Any]) -> None:
        """Kept, not copied (as `StreamCallback` does); the children get it on the steps that call them."""
        self.locals = locals_

    def _on_step(self) -> bool:
        dones = self.locals.get("dones")
        if (dones is None or not np.count_nonzero(dones)) and not self.recorder.due():
            return True
        for callback in self.callbacks:
            callback.locals = self.locals  # shared, not copied: they only read it
        return super()._on_step()


def placement_callbacks(run_dir: Path, first_episode: int, state: TrainerState | None = None) -> list[BaseCallback]:
    """What a placement run adds to the trainer's callbacks."""
    recorder = EpisodeRecorder(run_dir / "episodes", first_episode=first_episode, state=state)
    return [PlacementCallbacks(recorder, BoardStats(), ShowCandidates())]
