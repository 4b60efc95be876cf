"""State shared between the training thread and the broker.

Plain attributes, each written by one side only; under the GIL a single attribute store is
atomic, so the hot path pays no lock. The broker process keeps a copy, updated by every hand-off
(`tetriszmq.stream.brokerd.RelayedState`); its requests are set here by the training process's
listener thread (`tetriszmq.stream.broker.Broker`).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from tetriszmq.stream.protocol import RUN_ID_MAX, State

LINEAGE_HEX = 8  # a new lineage is "<name>-<8 hex>" (`lineage_of`); a process run id, "<name>-<6 hex>"
RUN_NAME_MAX = RUN_ID_MAX - 1 - LINEAGE_HEX  # the longest run name whose run ids and lineage are run ids


@dataclass
class TrainerState:
    """Counters and requests that the training thread and the broker see.

    Written by the training thread: ``state``, ``reason``, ``timesteps``,
    ``episodes``, ``best_lines``, ``scalars`` (the SB3 logger's latest values), ``records`` (set by
    the game's side, listed by ``snapshot``). Written for
    the broker: ``endpoints`` once bound, ``sps`` (with each metrics message), and on control requests or I/O
    errors ``stop_requested``, ``stop_reason``, ``save_requested``, ``paused``, ``failure``.
    ``stop_reason`` says why training ends, whoever ends it; ``reason`` is the latest
    status's.
    """

    run: str
    lineage: str = ""  # the run this process continues (see `lineage_of`); empty: this process's own run id
    endpoints: dict[str, str] = field(default_factory=dict)
    can_save: bool = False
    state: State = State.STARTING
    reason: str = ""
    timesteps: int = 0
    episodes: int = 0
    best_lines: int = 0
    sps: float = 0.0
    scalars: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, object]] | None = None  # what the run keeps replayable (a new list each time); None: none
    started: float = field(default_factory=time.monotonic)
    stop_requested: bool = False
    stop_reason: str = ""
    save_requested: bool = False
    paused: bool = False
    failure: str = ""
    wake: threading.Event = field(default_factory=threading.Event)

    @property
    def attention(self) -> bool:
        """True when the training thread has a request to act on: one check per step."""
        return self.stop_requested or self.save_requested or self.paused or bool(self.failure)

    def uptime(self) -> float:
        return time.monotonic() - self.started

    def request(self, **flags: bool | str) -> None:
        """Set request flags (for the broker) and wake a paused training thread."""
        for name, value in flags.items():
            setattr(self, name, value)
        self.wake.set()

    def request_stop(self, reason: str) -> None:
        """Ask training to end at the next step, for ``reason`` (the first reason given wins)."""
        self.request(stop_requested=True, stop_reason=self.stop_reason or reason)

    def status(self, state: State, reason: str) -> dict[str, object]:
        """The fields of a ``status`` message announcing ``state``: the one builder, whichever thread announces."""
        return {"state": str(state), "reason": reason, "timesteps": self.timesteps, "episodes": self.episodes,
                "best_lines": self.best_lines}

    def summary(self) -> dict[str, object]:
        """The fields of a `status` reply and of a `heartbeat`."""
        return {
            "state": str(self.state),
            "reason": self.reason,
            "run": self.run,
            "lineage": self.lineage or self.run,
            "timesteps": self.timesteps,
            "episodes": self.episodes,
            "best_lines": self.best_lines,
            "sps": round(self.sps, 1),
            "uptime": round(self.uptime(), 3),
            "endpoints": self.endpoints,
        }


def write_run_file(run_dir: Path, state: TrainerState, **extra: object) -> None:
    """``run.json``: who is training here, which run it continues, and where to reach it."""
    (run_dir / "run.json").write_bytes(orjson.dumps(
        {"run": state.run, "lineage": state.lineage or state.run, "run_dir": str(run_dir.resolve()),
         "host": socket.gethostname(), "endpoints": state.endpoints, "pid": os.getpid(), "started": time.time(),
         **extra},
        option=orjson.OPT_INDENT_2))


def lineage_of(run_dir: Path | None, name: str) -> str:
    """The identity of the run in ``run_dir`` across processes, so a resumed run stays one run on every viewer.

    The lineage an earlier process wrote in ``run.json``; for a directory from before lineages, the run id
    of its first journaled message; else a new ``<name>-<8 hex>``.
    """
    if run_dir is not None:
        for found in (_json_field(run_dir / "run.json", "lineage"), _first_line_field(run_dir / "metrics.jsonl")):
            if isinstance(found, str) and found:
                return found
    return f"{name}-{secrets.token_hex(LINEAGE_HEX // 2)}"


def _json_field(path: Path, key: str) -> object:
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return value.get(key) if isinstance(value, dict) else None


def _first_line_field(path: Path) -> object:
    try:
        with open(path, "rb") as journal:
            first = journal.readline()
    except OSError:
        return None
    try:
        value = orjson.loads(first)
    except orjson.JSONDecodeError:
        return None
    return value.get("run") if isinstance(value, dict) else None
