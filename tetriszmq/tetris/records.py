"""Episode records: a whole game of `PlacementTetris` in a few hundred bytes.

A placement game is fully determined by the episode's seed (tetris-gymnasium's
7-bag randomizer draws every piece from it), the environment's piece cap, and
the placements chosen, one byte each (action id ``col * 4 + rotation`` < 40).
Features and reward shaping change what the agent sees and learns from, never
the game, but are kept so that a replay can rebuild the exact environment.

File format (version 1), little-endian::

    b"TZEP"  u8 version  u32 header length H  header (H bytes of UTF-8 JSON)
    actions (one byte per placement)  u32 CRC-32 of every byte before it

The header holds ``seed, lines, score, pieces, end, episode, env {kind,
features, max_pieces, reward}, stats``. ``lines``, ``score`` and ``pieces`` are
the game's counters after the recorded actions, so re-simulating the actions
must reproduce them exactly (``tetriszmq replay --check``). ``end`` says how
the recorded actions end: ``game over``, ``piece cap`` (the environment's
``max_pieces``), or ``cut``: the episode went on past `MAX_ACTIONS`, which
bounds a record at about 1 MB, and only its beginning is kept.

Files are written atomically (temp file, fsync, rename), so a reader sees a
whole record or none; a damaged file raises `RecordError` with a clear message.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tetriszmq.stream.atomic import write_atomic

MAGIC = b"TZEP"
VERSION = 1
MAX_ACTIONS = 1 << 20  # placements kept per record: ~1 MB, hours of play at training speed
MAX_HEADER = 1 << 16
ENDS = ("game over", "piece cap", "cut")
_PREFIX = struct.Struct("<4sBI")
_CRC = struct.Struct("<I")
N_ACTIONS = 40


class RecordError(ValueError):
    """A record that cannot be read: the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class EpisodeRecord:
    """One recorded episode: how to replay it and what it must come to."""

    seed: int
    actions: bytes
    lines: int
    score: float
    pieces: int
    end: str
    features: tuple[str, ...]
    max_pieces: int
    reward: str = "score"
    episode: int = 0  # the run's episode number (1-based), or the evaluation's game number
    stats: dict[str, float] = field(default_factory=dict)  # board stats of the episode (mean holes, ...)

    def summary(self) -> dict[str, Any]:
        """What a list of records shows of this one (the trainer's ``snapshot``, the viewer's run API)."""
        return {"episode": self.episode, "lines": self.lines, "score": self.score, "pieces": self.pieces,
                "seed": self.seed, "end": self.end, "stats": self.stats}

    def header(self) -> dict[str, Any]:
        fields = asdict(self)
        del fields["actions"], fields["features"], fields["max_pieces"], fields["reward"]
        fields["env"] = {"kind": "placement", "features": list(self.features), "max_pieces": self.max_pieces,
                         "reward": self.reward}
        return fields


def encode(record: EpisodeRecord) -> bytes:
    header = orjson.dumps(record.header())
    body = _PREFIX.pack(MAGIC, VERSION, len(header)) + header + record.actions
    return body + _CRC.pack(zlib.crc32(body))


def decode(data: bytes, name: str = "record") -> EpisodeRecord:
    """Parse and validate one record; `RecordError` says what is wrong."""
    if len(data) < _PREFIX.size + _CRC.size:
        raise RecordError(f"{name}: truncated ({len(data)} bytes), not a whole episode record")
    magic, version, size = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise RecordError(f"{name}: not an episode record")
    if version != VERSION:
        raise RecordError(f"{name}: episode record format {version}; this tetriszmq reads format {VERSION}")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if size > MAX_HEADER or _PREFIX.size + size > len(data) - _CRC.size or crc != zlib.crc32(data[:-_CRC.size]):
        raise RecordError(f"{name}: corrupt or truncated episode record (checksum mismatch)")
    actions = data[_PREFIX.size + size:-_CRC.size]
    try:
        return _from_header(orjson.loads(data[_PREFIX.size:_PREFIX.size + size]), actions)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"{name}: bad episode record header: {exc}") from None


def _from_header(header: dict[str, Any], actions: bytes) -> EpisodeRecord:
    env = header["env"]
    if env["kind"] != "placement":
        raise ValueError(f"env.kind {env['kind']!r}: only placement episodes are recorded")
    record = EpisodeRecord(
        seed=_int(header["seed"]), actions=actions, lines=_int(header["lines"]), score=float(header["score"]),
        pieces=_int(header["pieces"]), end=str(header["end"]), features=tuple(map(str, env["features"])),
        max_pieces=_int(env["max_pieces"]), reward=str(env["reward"]), episode=_int(header["episode"]),
        stats={str(k): float(v) for k, v in dict(header.get("stats", {})).items()},
    )
    if record.end not in ENDS or record.seed < 1 or record.pieces < 0 or record.lines < 0:
        raise ValueError(f"end {record.end!r}, seed {record.seed}, pieces {record.pieces}, lines {record.lines}")
    if len(actions) > MAX_ACTIONS or (actions and max(actions) >= N_ACTIONS):
        raise ValueError("actions out of range")
    return record


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def write(path: Path, record: EpisodeRecord, *, sync_dir: bool = True) -> None:
    """Write ``path`` atomically: a reader, or a later run after a crash, sees the old file or the new one.

    ``sync_dir=False`` for a writer of several records that syncs their folder once after them.
    """
    write_atomic(path, encode(record), sync_dir=sync_dir)


def read(path: Path) -> EpisodeRecord:
    """Read one record file; a missing, oversized or damaged file is a `RecordError`.

    A FIFO or device in a record's place would block the reader (a viewer's worker thread) for ever.
    """
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise RecordError(f"{path}: not a regular file")
        size = st.st_size
        if size > MAX_ACTIONS + MAX_HEADER + _PREFIX.size + _CRC.size:
            raise RecordError(f"{path}: {size} bytes, too large for an episode record")
        return decode(path.read_bytes(), str(path))
    except OSError as exc:
        raise RecordError(f"{path}: {exc.strerror or exc}") from None


# --- a folder of records: <run_dir>/episodes/, or an evaluation's --record DIR ---------------

BEST = "best.rec"
NUMBER = re.compile(r"[0-9]{1,9}")  # ASCII only: str.isdigit() and "\d" take "²" or "٣", which int() refuses or reads
_NUMBERED = re.compile(r"episode-([0-9]+)\.rec")


def episode_path(directory: Path, number: int) -> Path:
    return directory / f"episode-{number}.rec"


def numbered(directory: Path) -> list[int]:
    """Episode numbers of the folder's numbered records, ascending."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for name in names if (m := _NUMBERED.fullmatch(name)))


def locate(path: Path, which: str = "best") -> Path:
    """The record file ``which`` (``best``, ``last`` or an episode number) of a run directory, a folder
    of records, or ``path`` itself when it is a record file; `RecordError` says what is missing."""
    if path.is_file():
        return path
    directory = path / "episodes" if (path / "episodes").is_dir() else path
    if not directory.is_dir():
        raise RecordError(f"{path}: no such run directory or record folder")
    if which == "best" and (directory / BEST).exists():
        return directory / BEST
    numbers = numbered(directory)
    if which in ("best", "last"):
        if not numbers:
            raise RecordError(f"{directory}: no episode records")
        return episode_path(directory, numbers[-1]) if which == "last" else _best_numbered(directory, numbers)
    if not NUMBER.fullmatch(which) or int(which) not in numbers:
        shown = f"{numbers[0]}..{numbers[-1]}" if numbers else "none"
        raise RecordError(f"{directory}: no episode {which!r} (best, last, or one of the kept numbers: {shown})")
    return episode_path(directory, int(which))


def _best_numbered(directory: Path, numbers: list[int]) -> Path:
    """Without a ``best.rec`` (an evaluation's folder): the numbered record with the most lines."""
    return max((episode_path(directory, n) for n in numbers), key=lambda p: read(p).lines)
