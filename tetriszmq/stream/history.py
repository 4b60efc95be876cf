"""What a late joiner needs to catch up with a run: the clone pattern's state.

Both the trainer's broker and the viewer's hub keep one `RunHistory` per run.
Messages are stored as the exact payload bytes that went over the wire, so a
snapshot is assembled with `orjson.Fragment` and nothing is re-encoded.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import orjson

from tetriszmq.stream.protocol import Topic


class RunHistory:
    """Last status, last board and recent episodes and metrics of one run, up to ``seq``."""

    def __init__(self, run: str, max_items: int) -> None:
        self.run = run
        self.seq = -1
        self.status: bytes | None = None
        self.board: bytes | None = None
        self.episodes: deque[bytes] = deque(maxlen=max_items)
        self.metrics: deque[bytes] = deque(maxlen=max_items)

    def record(self, topic: Topic, seq: int, payload: bytes) -> None:
        """Take one message into the history; heartbeats only advance ``seq``."""
        self.seq = seq
        if topic is Topic.BOARD:
            self.board = payload
        elif topic is Topic.EPISODE:
            self.episodes.append(payload)
        elif topic is Topic.METRICS:
            self.metrics.append(payload)
        elif topic is Topic.STATUS:
            self.status = payload

    def snapshot(self) -> dict[str, Any]:
        """The history as one JSON-ready object; ``seq`` is the last message it covers."""
        return {
            "run": self.run,
            "seq": self.seq,
            "status": _fragment(self.status),
            "board": _fragment(self.board),
            "episodes": [orjson.Fragment(p) for p in self.episodes],
            "metrics": [orjson.Fragment(p) for p in self.metrics],
        }


def _fragment(payload: bytes | None) -> orjson.Fragment | None:
    return None if payload is None else orjson.Fragment(payload)
