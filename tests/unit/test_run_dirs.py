"""A new run's folder: trainers started together (seeds in a shell loop) each get their own."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import TINY

from tetriszmq import config as cfg
from tetriszmq.trainer import RunOptions, resolve_run_dir


def test_runs_started_at_once_never_share_a_folder(tmp_path: Path):
    config = cfg.load(TINY, [f"run.dir={str(tmp_path / 'runs')!r}"])
    (tmp_path / "runs" / "tiny").mkdir(parents=True)  # an earlier run
    start = threading.Barrier(16)

    def start_a_run(_: int) -> tuple[Path, bool]:
        start.wait()
        return resolve_run_dir(config, RunOptions())

    with ThreadPoolExecutor(16) as pool:
        claimed = list(pool.map(start_a_run, range(16)))
    folders = sorted(path.name for path, _ in claimed)
    assert len(set(folders)) == 16, folders
    assert set(folders) == {f"tiny-{n}" for n in range(2, 18)}
    assert all(fresh and path.is_dir() for path, fresh in claimed)
