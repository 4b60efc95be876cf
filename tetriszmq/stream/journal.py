"""``metrics.jsonl``: every status, metrics and episode message of a run, one JSON object a line.

Lines are appended as they are published. A kill can cut the last line short;
`open_for_append` drops such a fragment before a resumed run appends to the
file, and `read` skips it, so one crash never costs more than that line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import orjson

_TAIL = 1 << 16  # longer than any journaled message


def open_for_append(path: Path) -> IO[bytes]:
    """Open for appending, first cutting off a trailing partial line left by a kill."""
    journal = open(path, "a+b")
    start = max(0, journal.seek(0, os.SEEK_END) - _TAIL)
    journal.seek(start)
    tail = journal.read()
    if tail and not tail.endswith(b"\n"):
        journal.truncate(start + tail.rfind(b"\n") + 1)
    return journal


def last(path: Path) -> dict[str, Any] | None:
    """The last complete message, read from the file's tail only (a long run's journal is large); None if none."""
    with open(path, "rb") as journal:
        journal.seek(max(0, journal.seek(0, os.SEEK_END) - _TAIL))
        tail = journal.read()
    for line in reversed(tail.split(b"\n")):
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:  # a torn last line, or the tail's first, cut mid-line
            continue
        if isinstance(message, dict):
            return message
    return None


def read(path: Path) -> list[dict[str, Any]]:
    """Every complete message; a torn last line (from a kill) is skipped, any other bad line raises."""
    lines = Path(path).read_bytes().split(b"\n")
    messages = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            messages.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: corrupt line") from None
    return messages
