"""A run's whole history for the charts, in bounded memory: recent rows exact, older ones min/max per bucket.

A run of a million episodes must open with its whole curve from episode 1, yet the viewer holds
many runs and sends each to every browser. So each `Table` (one per source: episodes, metrics)
keeps:

- the most recent ``Limits.recent`` rows at full resolution, and
- everything before that as at most ``Limits.buckets`` buckets of ``bucket`` consecutive rows
  each. A bucket keeps, per column, the minimum and the maximum and which came first, and is
  drawn as two rows (at the bucket's first and last x), so a one-episode spike stays visible
  however long the run. When the buckets are full, neighbours merge pairwise and ``bucket``
  doubles; with ``bucket == 2`` a bucket is still exact.

Rows share their x columns (episodes, timesteps, wall time ``t``) with every value column, as
uPlot wants (``[xs, ys...]``), so a table is one columnar structure. Memory is bounded by
``recent + buckets`` rows whatever the run's length: `Table.nbytes` measures it.

Rows arrive one at a time (live messages, `RunSeries.add`) or in bulk (`load_journal`, meant
for a thread: it reads ``metrics.jsonl`` in chunks and builds a series the event loop has not
seen yet). A resumed run is one run: when a new trainer process (run id) continues the
directory from a checkpoint, rows past the checkpoint's timesteps, written by the crashed
process after its last save, are dropped, as TensorBoard drops orphaned steps.
"""

from __future__ import annotations

import asyncio
import math
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

X_COLUMNS = ("episodes", "timesteps", "t")
_NX = len(X_COLUMNS)
EPISODE_COLUMNS = ("lines", "reward", "length")
METRIC_COLUMNS = ("sps",)  # besides every SB3 scalar, under its own name (``rollout/ep_rew_mean``, ...)
CHUNK = 1 << 20  # bytes of metrics.jsonl parsed per step of a bulk load


@dataclass(frozen=True)
class Limits:
    """How many rows a table keeps: ``recent`` exact ones plus two per bucket, ``buckets`` buckets."""

    recent: int = 2000
    buckets: int = 500
    evict: int = 256  # rows folded into buckets at once: a vectorised fold instead of one per row

    def __post_init__(self) -> None:
        if self.recent < 1 or self.evict < 1 or self.buckets < 2 or self.buckets % 2:
            raise ValueError("recent and evict must be >= 1, buckets an even number >= 2")


class _Buckets:
    """Bucket summaries in arrays, one row per bucket; a partial bucket may be the last one."""

    def __init__(self, capacity: int, columns: int) -> None:
        self.n = 0
        self.first = np.zeros((capacity, _NX))  # x of the bucket's first row
        self.last = np.zeros((capacity, _NX))
        self.low = np.full((capacity, columns), np.nan)
        self.high = np.full((capacity, columns), np.nan)
        self.low_first = np.ones((capacity, columns), dtype=bool)  # does the minimum come before the maximum?
        self.count = np.zeros(capacity, dtype=np.int64)  # rows summarised

    def add_column(self) -> None:
        self.low = np.hstack([self.low, np.full((len(self.low), 1), np.nan)])
        self.high = np.hstack([self.high, np.full((len(self.high), 1), np.nan)])
        self.low_first = np.hstack([self.low_first, np.ones((len(self.low_first), 1), dtype=bool)])

    def put(self, i: int, first: np.ndarray, last: np.ndarray, low: np.ndarray, high: np.ndarray,
            low_first: np.ndarray, count: np.ndarray) -> None:
        """Write summaries into rows ``i..``."""
        j = i + len(count)
        self.first[i:j], self.last[i:j], self.low[i:j], self.high[i:j] = first, last, low, high
        self.low_first[i:j], self.count[i:j] = low_first, count

    def halve(self) -> None:
        """Merge neighbouring buckets pairwise (the count is even and every bucket full)."""
        half = self.n // 2
        a, b = slice(0, self.n, 2), slice(1, self.n, 2)
        low, low_from_a = _pick(self.low[a], self.low[b], np.fmin)
        high, high_from_a = _pick(self.high[a], self.high[b], np.fmax)
        # The extreme taken from the earlier bucket comes first; both from one bucket: its own order.
        low_first = np.where(low_from_a == high_from_a, np.where(low_from_a, self.low_first[a], self.low_first[b]),
                             low_from_a)
        self.put(0, self.first[a], self.last[b], low, high, low_first, self.count[a] + self.count[b])
        self.low[half:] = self.high[half:] = np.nan
        self.n = half

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Two drawn rows per bucket, in time order: x ``(2n, 3)`` and values ``(2n, columns)``."""
        n = self.n
        xs = np.empty((2 * n, _NX))
        xs[0::2], xs[1::2] = self.first[:n], self.last[:n]
        low, high, low_first = self.low[:n], self.high[:n], self.low_first[:n]
        ys = np.empty((2 * n, low.shape[1]))
        ys[0::2] = np.where(low_first, low, high)
        ys[1::2] = np.where(low_first, high, low)
        return xs, ys


def _pick(a: np.ndarray, b: np.ndarray, extreme: Any) -> tuple[np.ndarray, np.ndarray]:
    """The NaN-ignoring extreme of ``a`` and ``b``, and whether it came from ``a``."""
    value = extreme(a, b)
    return value, (value == a) | np.isnan(b)


def _summarise(xs: np.ndarray, ys: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """Summaries of consecutive groups of ``size`` rows (the last group may be shorter)."""
    n, columns = ys.shape
    groups = -(-n // size)
    pad = groups * size - n
    padded = np.vstack([ys, np.full((pad, columns), np.nan)]).reshape(groups, size, columns)
    blank = np.isnan(padded)
    low_at = np.where(blank, np.inf, padded).argmin(axis=1)
    high_at = np.where(blank, -np.inf, padded).argmax(axis=1)
    low = np.take_along_axis(padded, low_at[:, None, :], axis=1)[:, 0]
    high = np.take_along_axis(padded, high_at[:, None, :], axis=1)[:, 0]
    starts = np.arange(groups) * size
    ends = np.minimum(starts + size, n) - 1
    return xs[starts], xs[ends], low, high, low_at <= high_at, ends - starts + 1


class Table:
    """Rows of x columns and value columns: recent ones exact, older ones in min/max buckets."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.columns: list[str] = []
        self.bucket = 2  # rows per full bucket
        self.raw = 0  # rows ever added (less those a resume dropped)
        self._x = [array("d") for _ in X_COLUMNS]
        self._y: list[array[float]] = []
        self._index: dict[str, int] = {}
        self._old = _Buckets(limits.buckets, 0)

    def append(self, x: tuple[float, float, float], values: dict[str, Any]) -> None:
        """Add one row; a column seen for the first time is blank (NaN) in every earlier row, as is a non-number."""
        if not self._index.keys() >= values.keys():
            for name in [name for name in values if name not in self._index]:
                self._add_column(name)
        for column, value in zip(self._x, x, strict=True):
            column.append(value)
        for name, column in zip(self.columns, self._y, strict=True):
            try:
                column.append(values.get(name, math.nan))
            except (TypeError, OverflowError):  # None, a string, 10**400: whatever a logger put there
                column.append(math.nan)
        self.raw += 1
        if len(self._x[0]) >= self.limits.recent + self.limits.evict:
            self._evict(len(self._x[0]) - self.limits.recent)

    def _add_column(self, name: str) -> None:
        self._index[name] = len(self.columns)
        self.columns.append(name)
        self._y.append(array("d", [math.nan]) * len(self._x[0]))
        self._old.add_column()

    def _evict(self, n: int) -> None:
        """Fold the oldest ``n`` exact rows into buckets."""
        # column_stack copies, so no view pins the arrays that `del` then shrinks.
        xs = np.column_stack([np.frombuffer(c, count=n) for c in self._x])
        ys = np.column_stack([np.frombuffer(c, count=n) for c in self._y]) if self._y else np.empty((n, 0))
        for column in (*self._x, *self._y):
            del column[:n]
        old = self._old
        while len(xs):
            if old.n and old.count[old.n - 1] < self.bucket:  # only the last bucket can be partial: top it up
                take = self.bucket - int(old.count[old.n - 1])
                self._extend_last(xs[:take], ys[:take])
            elif old.n == len(old.count):
                old.halve()
                self.bucket *= 2
                continue
            else:
                take = (len(old.count) - old.n) * self.bucket
                summaries = _summarise(xs[:take], ys[:take], self.bucket)
                old.put(old.n, *summaries)
                old.n += len(summaries[-1])
            xs, ys = xs[take:], ys[take:]

    def _extend_last(self, xs: np.ndarray, ys: np.ndarray) -> None:
        old, i = self._old, self._old.n - 1
        first, last, low, high, low_first, count = _summarise(xs, ys, len(xs))
        merged_low, low_from_old = _pick(old.low[i], low[0], np.fmin)
        merged_high, high_from_old = _pick(old.high[i], high[0], np.fmax)
        order = np.where(low_from_old == high_from_old, np.where(low_from_old, old.low_first[i], low_first[0]),
                         low_from_old)
        old.put(i, old.first[i:i + 1], last, merged_low[None], merged_high[None], order[None],
                old.count[i:i + 1] + count)

    def cut(self, timesteps: float) -> None:
        """Drop rows past ``timesteps`` (a resume from an earlier checkpoint); buckets go whole or not at all."""
        steps = self._x[1]
        keep = len(steps)
        while keep and steps[keep - 1] > timesteps:
            keep -= 1
        self.raw -= len(steps) - keep
        for column in (*self._x, *self._y):
            del column[keep:]
        old = self._old
        while keep == 0 and old.n and old.first[old.n - 1, 1] > timesteps:
            old.n -= 1
            self.raw -= int(old.count[old.n])
            old.low[old.n] = old.high[old.n] = np.nan

    def __len__(self) -> int:
        """Rows a browser receives."""
        return 2 * self._old.n + len(self._x[0])

    def nbytes(self) -> int:
        """Memory held by this table's data (arrays), in bytes."""
        old = self._old
        arrays = (old.first, old.last, old.low, old.high, old.low_first, old.count)
        return sum(a.nbytes for a in arrays) + sum(c.buffer_info()[1] * c.itemsize for c in (*self._x, *self._y))

    def to_json(self) -> dict[str, Any]:
        """Columnar, uPlot-ready: ``data[i]`` is the column ``columns[i]``; rows before ``decimated`` are buckets.

        Whole numbers are sent as integers and other values as float32, which print in half the characters.
        """
        old_x, old_y = self._old.rows()
        recent = len(self._x[0])
        xs = np.vstack([old_x, np.column_stack([np.frombuffer(c) for c in self._x]) if recent else np.empty((0, _NX))])
        ys = np.vstack([old_y, np.column_stack([np.frombuffer(c) for c in self._y]) if recent else
                        np.empty((0, len(self._y)))])
        data = [_compact(xs[:, 0], np.float64), _compact(xs[:, 1], np.float64), np.round(xs[:, 2], 3)]
        data += [_compact(ys[:, i], np.float32) for i in range(ys.shape[1])]
        return {"columns": [*X_COLUMNS, *self.columns], "data": data, "decimated": 2 * self._old.n,
                "bucket": self.bucket, "raw": self.raw}


def _compact(values: np.ndarray, floats: type[np.floating]) -> np.ndarray:
    """Integers when every value is one (counts, lines, lengths), else ``floats``; NaN is sent as null."""
    if np.all(np.isfinite(values)) and np.all(values == np.round(values)) and np.all(np.abs(values) < 2**53):
        return values.astype(np.int64)
    return values.astype(floats)


class RunSeries:
    """Every chart series of one run: the episodes table and the metrics table.

    Messages of each trainer process are taken once, in ``seq`` order, so the same message
    from ``metrics.jsonl`` and from the live stream counts once.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.episodes = Table(self.limits)
        self.metrics = Table(self.limits)
        self.seen: dict[str, int] = {}  # trainer process run id -> last seq taken
        self.process: str | None = None  # the run id of the latest process
        self._continues = False  # the latest process continues an earlier one and has not said where yet
        self.corrupt = 0  # lines of metrics.jsonl that were not JSON objects

    def add(self, message: dict[str, Any]) -> bool:
        """Take one decoded status, episode or metrics message; False if it was already taken or is not one."""
        run, seq = message.get("run"), message.get("seq")
        if not isinstance(run, str) or type(seq) is not int or seq <= self.seen.get(run, -1):
            return False
        self.seen[run] = seq
        topic = message.get("topic")
        if run != self.process:
            self.process, self._continues = run, self.process is not None
        if self._continues and not (topic == "status" and message.get("state") == "starting"):
            # A resumed trainer announces "starting" before it loads the checkpoint: its counters
            # are only right from its next message on ("running", at the checkpoint's timesteps).
            self._continues = False
            if isinstance(message.get("timesteps"), int):
                self._resumed_at(message["timesteps"])
        if topic == "episode":
            self.episodes.append(_x(message, "episode"), {k: message.get(k) for k in EPISODE_COLUMNS})
        elif topic == "metrics":
            scalars = message.get("scalars")
            values = dict(scalars) if isinstance(scalars, dict) else {}
            values["sps"] = message.get("sps")
            self.metrics.append(_x(message, "episodes"), values)
        return True

    def _resumed_at(self, timesteps: int) -> None:
        """A new process continues the run from a checkpoint: what came after it is orphaned."""
        self.episodes.cut(timesteps)
        self.metrics.cut(timesteps)

    def add_lines(self, chunk: bytes) -> None:
        """Take complete JSON lines (bulk load); lines that are not JSON objects are counted in ``corrupt``."""
        for line in chunk.split(b"\n"):
            if not line:
                continue
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                self.corrupt += 1
                continue
            if isinstance(message, dict):
                self.add(message)
            else:
                self.corrupt += 1

    def nbytes(self) -> int:
        return self.episodes.nbytes() + self.metrics.nbytes()

    def to_json(self) -> dict[str, Any]:
        return {"episodes": self.episodes.to_json(), "metrics": self.metrics.to_json(), "corrupt": self.corrupt}

    def encode(self) -> bytes:
        return orjson.dumps(self.to_json(), option=orjson.OPT_SERIALIZE_NUMPY)


def _x(message: dict[str, Any], episodes_key: str) -> tuple[float, float, float]:
    def number(key: str) -> float:
        value = message.get(key)
        return value if isinstance(value, (int, float)) else math.nan
    return number(episodes_key), number("timesteps"), number("t")


def load_journal(path: Path, limits: Limits | None = None, chunk: int = CHUNK) -> RunSeries:
    """Build a run's series from its ``metrics.jsonl``, a chunk at a time (call it in a thread).

    A torn last line (a kill mid-write) is not counted as corrupt; an unreadable file raises OSError.
    """
    series = RunSeries(limits)
    rest = b""
    with open(path, "rb") as journal:
        while block := journal.read(chunk):
            block = rest + block
            end = block.rfind(b"\n") + 1
            series.add_lines(block[:end])
            rest = block[end:]
    return series


async def load(path: Path, limits: Limits | None = None) -> RunSeries:
    """`load_journal` off the event loop."""
    return await asyncio.to_thread(load_journal, path, limits)
