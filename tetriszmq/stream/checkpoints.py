"""Checkpoints that survive a kill at any moment, and that resume without forgetting.

Each save serialises the model once to a temp file, flushes it to disk, then
renames it over ``latest.zip`` (`tetriszmq.stream.atomic`), and links that file
as ``final.zip`` or a periodic ``step_*.zip``. A rename is atomic, so ``latest``
is always a complete, loadable file.

An off-policy model's replay buffer (SB3 keeps it out of the zip) goes beside
it, in ``replay/``, as append-only segments: each save writes only the rows
added since the previous one (a 1.5M-row buffer is 1.4 GB; 50,000 new rows are
a few tens of MB), each segment by temp file, fsync and rename. The zip then
records which segments make up its buffer (``tetriszmq_replay``), and is
renamed into place only after they are on disk: a kill between the two leaves
the previous zip naming the previous segments, never a new model with an old
buffer or the reverse. Segments no zip names any more are deleted after the
zip is in place. The zip also carries the process's RNG states
(``tetriszmq_rng``), so a resumed run does not replay its first random draws.
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

from tetriszmq.stream.atomic import atomic_writer, fsync_dir, in_progress, replacing, temp_path

COUNTERS_ATTR = "tetriszmq_counters"  # saved with the model by SB3, restored by load
REPLAY_ATTR = "tetriszmq_replay"  # {"rows": rows ever added, "segments": [[first, end], ...]}
RNG_ATTR = "tetriszmq_rng"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed as it claims (a segment missing, another buffer shape)."""


class Checkpoints:
    """The ``checkpoints/`` folder of a run."""

    def __init__(self, directory: Path, every: int, save_replay: bool = True) -> None:
        self.directory = directory
        self.every = every
        self.save_replay = save_replay  # False: checkpoints skip the replay buffer, a resume starts it empty
        self._next = 0
        self.replay = ReplaySegments(directory / "replay")
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob(".*"):  # temp files of a killed save; not another process's save
            if not in_progress(leftover):
                leftover.unlink(missing_ok=True)

    @property
    def latest(self) -> Path:
        return self.directory / "latest.zip"

    @property
    def final(self) -> Path:
        return self.directory / "final.zip"

    def start_at(self, timesteps: int) -> None:
        """Schedule the next periodic checkpoint after ``timesteps`` (0 = never)."""
        self._next = (timesteps // self.every + 1) * self.every if self.every else 0

    def due(self, timesteps: int) -> bool:
        return bool(self._next) and timesteps >= self._next

    def save(self, model: BaseAlgorithm, counters: dict[str, int], *, final: bool = False) -> Path:
        """Write ``latest``, plus ``final`` or the due periodic file; returns the main file written."""
        setattr(model, COUNTERS_ATTR, counters)
        setattr(model, RNG_ATTR, rng_states())
        buffer = getattr(model, "replay_buffer", None) if self.save_replay else None
        if buffer is not None:  # segments first: the zip may only name what is already on disk
            setattr(model, REPLAY_ATTR, self.replay.write(buffer, model.num_timesteps))
        elif getattr(model, REPLAY_ATTR, None):
            setattr(model, REPLAY_ATTR, None)  # not the segments of the checkpoint this run resumed from
        with replacing(self.latest, sync_dir=False) as tmp:
            model.save(tmp)
        if final:
            _link_over(self.latest, self.final)
        if self.due(model.num_timesteps):
            _link_over(self.latest, self.directory / f"step_{model.num_timesteps:09d}.zip")
            self.start_at(model.num_timesteps)
        fsync_dir(self.directory)
        if buffer is not None:
            self.replay.prune()
        return self.final if final else self.latest

    def restore(self, model: BaseAlgorithm) -> bool:
        """After loading ``latest``: refill its replay buffer and put back the RNG states it saved.

        :return: False if the model has a replay buffer that the checkpoint did not save
            (``train.save_replay`` off): it stays empty.
        """
        manifest = getattr(model, REPLAY_ATTR, None)
        buffer = getattr(model, "replay_buffer", None)
        if manifest and buffer is not None:
            self.replay.restore(buffer, manifest, model.num_timesteps)
        states = getattr(model, RNG_ATTR, None)
        if states:
            set_rng_states(states)
        return buffer is None or bool(manifest)


def counters_of(model: BaseAlgorithm) -> dict[str, int]:
    """The counters saved with a checkpoint (episodes, best lines); empty for a fresh model."""
    return dict(getattr(model, COUNTERS_ATTR, {}) or {})


def saved_counters(path: Path) -> dict[str, int]:
    """A checkpoint's ``timesteps``, ``episodes`` and ``best_lines``, read from its zip's ``data`` entry (SB3 keeps
    plain attributes as JSON there) without building the model: a resuming trainer's first status and heartbeats
    show them, before the model is loaded. Empty if the file cannot be read so: loading it says what is wrong."""
    try:
        with zipfile.ZipFile(path) as checkpoint:
            data = orjson.loads(checkpoint.read("data"))
        counters = {"timesteps": data["num_timesteps"], **data.get(COUNTERS_ATTR, {})}
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):  # JSONDecodeError is a ValueError
        return {}
    return {key: value for key in ("timesteps", "episodes", "best_lines")
            if type(value := counters.get(key)) is int}


def buffer_rows(model: BaseAlgorithm) -> int:
    """Replay rows (steps of all envs) a model's buffer holds now: 0 without one."""
    buffer = getattr(model, "replay_buffer", None)
    return 0 if buffer is None else buffer.size() * buffer.n_envs


# --- replay buffer segments ------------------------------------------------------------------


class ReplaySegments:
    """A replay buffer on disk as segments ``rows-<first>-<end>.npy``, in rows ever added.

    Row ``r`` (counted since the run began) lives at ring index ``r % buffer_size``;
    a segment holds rows ``first .. end - 1`` of every per-row array of the buffer
    (SB3's `ReplayBuffer`, `DictReplayBuffer` or any buffer whose arrays have
    ``buffer_size`` as their first axis).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.rows = 0  # rows ever added, as of the last write
        self.segments: list[list[int]] = []
        self._pos = 0  # the buffer's ring position and the model's timesteps at the last write
        self._timesteps = 0

    def write(self, buffer: Any, timesteps: int) -> dict[str, Any]:
        """Write the rows added since the last write; returns the manifest that names the whole buffer."""
        size = buffer.buffer_size
        added = (buffer.pos - self._pos) % size
        # the ring position cannot tell whole laps; the timesteps can, to within the one step SB3
        # counts before it stores it
        laps = round(((timesteps - self._timesteps) // buffer.n_envs - added) / size)
        end = self.rows + added + max(laps, 0) * size
        first = max(self.rows, end - size)
        self.directory.mkdir(parents=True, exist_ok=True)
        for start, stop in _contiguous(first, end, size):
            self._write_segment(buffer, start, stop)
            self.segments.append([start, stop])
        if end > self.rows:
            fsync_dir(self.directory)
        self.rows, self._pos, self._timesteps = end, buffer.pos, timesteps
        self.segments = [s for s in self.segments if s[1] > end - size]
        return {"rows": end, "segments": [list(s) for s in self.segments]}

    def restore(self, buffer: Any, manifest: dict[str, Any], timesteps: int) -> None:
        """Fill ``buffer`` with the rows the manifest names: the last ``buffer_size`` of them."""
        size, rows = buffer.buffer_size, int(manifest["rows"])
        arrays = ring_arrays(buffer)
        for first, end in manifest["segments"]:
            path = self._path(first, end)
            if not path.exists():
                raise CheckpointError(f"{path}: a replay segment the checkpoint names is missing")
            keep = max(first, rows - size)
            if keep >= end:
                continue
            for name, part in _read_segment(path).items():
                if name not in arrays:
                    raise CheckpointError(f"{path}: {name} rows, which this run's buffer has not: another algorithm?")
                array, part = arrays[name], part[keep - first:]
                if part.shape[1:] != array.shape[1:]:
                    raise CheckpointError(f"{path}: {name} rows are {part.shape[1:]}, this run's buffer "
                                          f"has {array.shape[1:]} (another env count or observation?)")
                start = keep % size
                if start + len(part) <= size:  # the usual case: one slice, no index array
                    array[start:start + len(part)] = part
                else:  # a buffer_size smaller than the run's: the rows wrap around it
                    array[np.arange(keep, end) % size] = part
        buffer.pos, buffer.full = rows % size, rows >= size
        self.rows, self.segments = rows, [list(s) for s in manifest["segments"]]
        self._pos, self._timesteps = buffer.pos, timesteps
        self.prune()

    def prune(self) -> None:
        """Delete segment files the manifest no longer names: overwritten rows, or orphans of a killed save
        (not another live process's segment being written)."""
        if not self.directory.is_dir():
            return
        named = {self._path(*s).name for s in self.segments}
        for path in self.directory.iterdir():
            if path.name not in named and not in_progress(path):
                path.unlink(missing_ok=True)

    def _write_segment(self, buffer: Any, first: int, end: int) -> None:
        size = buffer.buffer_size
        rows = slice(first % size, (end - 1) % size + 1)
        arrays = ring_arrays(buffer)
        # .npy records back to back: a names record, then one per array; `write` syncs the folder once
        with atomic_writer(self._path(first, end), sync_dir=False) as f:
            np.lib.format.write_array(f, np.array(sorted(arrays)))
            for name in sorted(arrays):
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name][rows]))

    def _path(self, first: int, end: int) -> Path:
        return self.directory / f"rows-{first:012d}-{end:012d}.npy"


def _read_segment(path: Path) -> dict[str, np.ndarray]:
    """A segment's arrays by name. Plain .npy records read straight into memory: no zip, no checksum pass."""
    with open(path, "rb") as f:
        names = np.lib.format.read_array(f, allow_pickle=False)
        return {str(name): np.lib.format.read_array(f, allow_pickle=False) for name in names}


def ring_arrays(buffer: Any) -> dict[str, np.ndarray]:
    """Every array of the buffer indexed by ring position first, by attribute name (``obs.key`` for dicts)."""
    found: dict[str, np.ndarray] = {}
    for name, value in vars(buffer).items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, array in items:
            if isinstance(array, np.ndarray) and array.ndim >= 1 and array.shape[0] == buffer.buffer_size:
                found[name if key is None else f"{name}.{key}"] = array
    return found


def _contiguous(first: int, end: int, size: int) -> list[tuple[int, int]]:
    """Split rows ``first .. end - 1`` where the ring wraps: each piece is one slice of the arrays."""
    pieces = []
    while first < end:
        stop = min(end, (first // size + 1) * size)
        pieces.append((first, stop))
        first = stop
    return pieces


# --- RNG states ------------------------------------------------------------------------------


def rng_states() -> dict[str, Any]:
    """The global generators SB3 and its exploration draw from (Python, NumPy, torch)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": th.get_rng_state()}


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    th.set_rng_state(states["torch"])


# --- files -----------------------------------------------------------------------------------


def _link_over(src: Path, dst: Path) -> None:
    """Make ``dst`` name the same complete file as ``src``, atomically."""
    staging = temp_path(dst)
    staging.unlink(missing_ok=True)
    os.link(src, staging)
    os.replace(staging, dst)
