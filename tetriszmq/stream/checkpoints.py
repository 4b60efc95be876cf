"""Checkpoints that survive a kill at any moment.

Each save serialises the model once to a temp file, flushes it to disk, then
renames it over ``latest.zip`` (and links it as a periodic ``step_*.zip``).
A rename is atomic, so ``latest`` is always a complete, loadable file.
"""

from __future__ import annotations

import os
from pathlib import Path

from stable_baselines3.common.base_class import BaseAlgorithm

COUNTERS_ATTR = "tetriszmq_counters"  # saved with the model by SB3, restored by load


class Checkpoints:
    """The ``checkpoints/`` folder of a run."""

    def __init__(self, directory: Path, every: int) -> None:
        self.directory = directory
        self.every = every
        self._next = 0
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob(".*"):  # temp files of a save that was killed
            leftover.unlink()

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
        tmp = self.directory / f".saving-{os.getpid()}.zip"
        try:
            model.save(tmp)
            _fsync(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk must not keep half a checkpoint around
            raise
        if final:
            _link_over(tmp, self.final)
        if self.due(model.num_timesteps):
            _link_over(tmp, self.directory / f"step_{model.num_timesteps:09d}.zip")
            self.start_at(model.num_timesteps)
        os.replace(tmp, self.latest)
        _fsync_dir(self.directory)
        return self.final if final else self.latest


def counters_of(model: BaseAlgorithm) -> dict[str, int]:
    """The counters saved with a checkpoint (episodes, best lines); empty for a fresh model."""
    return dict(getattr(model, COUNTERS_ATTR, {}) or {})


def _link_over(src: Path, dst: Path) -> None:
    """Make ``dst`` name the same complete file as ``src``, atomically."""
    staging = dst.with_name(f".{dst.name}.link")
    staging.unlink(missing_ok=True)
    os.link(src, staging)
    os.replace(staging, dst)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
