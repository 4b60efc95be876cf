"""Files replaced atomically: a reader, or a process after a crash, sees the old file or the new one, never half.

One recipe for every file the project replaces (checkpoints, replay segments, episode records,
a sweep's ``trial.json``): write a temp file beside the target, flush it to disk, rename it over
the target (a rename is atomic), and fsync the directory when the rename itself must survive a
power cut. A caller that renames several files at once passes ``sync_dir=False`` and calls
`fsync_dir` once after them.

The temp file is named for the process writing it (``.<name>.<pid>.tmp``), so that a later
process can tell the leftover of a killed writer from another live process's file in
progress (`in_progress`), which it must not delete. Plain standard library: no torch, importable anywhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_TEMP = re.compile(r"\..+\.(\d+)\.tmp")


def temp_path(path: Path) -> Path:
    """Where this process writes ``path``'s next content before renaming it into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def replacing(path: Path, *, sync_dir: bool = True) -> Iterator[Path]:
    """Yield a temp path to write the new ``path`` to (by a library that wants a path); on success it
    becomes ``path``. On any error the temp file is removed: a full disk leaves no half file behind."""
    tmp = temp_path(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


@contextmanager
def atomic_writer(path: Path, *, sync_dir: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file to write the new ``path`` into; on success it becomes ``path``."""
    with replacing(path, sync_dir=sync_dir) as tmp, open(tmp, "wb") as f:
        yield f


def write_atomic(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Replace ``path`` by ``data`` atomically and durably."""
    with atomic_writer(path, sync_dir=sync_dir) as f:
        f.write(data)


def in_progress(path: Path) -> bool:
    """True for another live process's temp file: a write in progress, not a leftover to clean up.

    A temp file of this process, or of one that is gone (killed mid-write), is a leftover.
    """
    match = _TEMP.fullmatch(path.name)
    if match is None:
        return False
    pid = int(match.group(1))
    return pid != os.getpid() and _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(directory: Path) -> None:
    """Make the renames and deletions in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
