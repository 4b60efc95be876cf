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

Rows arrive one at a time (live messages, `RunSeries.add`) or in bulk (`load_journal`: it reads
``metrics.jsonl`` in chunks and builds a series the event loop has not seen yet). Opening a run
must be quick for fifty runs at once, so the bulk path does no Python work per row that numpy
can do (orjson per line, then whole columns; `RunSeries.extend` gives the table `add` would),
runs in worker processes (`load`), and leaves its result in a sidecar file beside the journal
that is used while the journal is unchanged (`sidecar`).

A resumed run is one run: when a new trainer process (run id) continues the directory from a
checkpoint, rows past the checkpoint's timesteps, written by the crashed process after its last
save, are dropped, as TensorBoard drops orphaned steps.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import threading
import time
import zipfile
from array import array
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import astuple, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tetriszmq.stream.atomic import atomic_writer

X_COLUMNS = ("episodes", "timesteps", "t")
_NX = len(X_COLUMNS)
EPISODE_COLUMNS = ("lines", "reward", "length")
METRIC_COLUMNS = ("sps",)  # besides every SB3 scalar, under its own name (``rollout/ep_rew_mean``, ...)
CHUNK = 1 << 20  # bytes of metrics.jsonl parsed per step of a bulk load
LOADERS = 4  # worker processes that load journals at most (no more than the CPUs)
QUICK_BYTES = 2 << 20  # a journal shorter than this (about 10,000 episodes, 40 ms) loads in a thread
SIDECAR_FORMAT = 1  # of the sidecar cache: a sidecar of another format is ignored and rewritten

log = logging.getLogger("viewer.series")


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

    def extend(self, xs: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Add rows in bulk (a journal load): the table `append` would build, without Python work per row.

        :param xs: ``(n, 3)`` x values; ``values``: a column of ``n`` floats per name (NaN: blank).
        """
        for name in values:
            if name not in self._index:
                self._add_column(name)
        blank = np.full(len(xs), math.nan)
        for column, new in zip((*self._x, *self._y), (*xs.T, *(values.get(n, blank) for n in self.columns)),
                               strict=True):
            column.frombytes(np.ascontiguousarray(new, dtype=np.float64).tobytes())
        self.raw += len(xs)
        excess = len(self._x[0]) - self.limits.recent
        if excess >= self.limits.evict:  # where one-by-one appends would have left it, so both give one table
            self._evict(excess - excess % self.limits.evict)

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

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything this table holds, as a header and arrays (for the sidecar cache)."""
        old = self._old
        header = {"columns": self.columns, "bucket": self.bucket, "raw": self.raw, "n": old.n}
        arrays = {"x": np.array([np.frombuffer(c) for c in self._x]),
                  "y": np.array([np.frombuffer(c) for c in self._y]).reshape(len(self._y), len(self._x[0])),
                  "first": old.first, "last": old.last, "low": old.low, "high": old.high, "low_first": old.low_first,
                  "count": old.count}
        return header, arrays

    @classmethod
    def restore(cls, limits: Limits, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Table:
        """The table `state` described; ValueError if it does not fit ``limits`` (another viewer's file)."""
        table = cls(limits)
        columns, n = list(header["columns"]), int(header["n"])
        x, y, old = arrays["x"], arrays["y"], table._old
        rows, width = x.shape[1], len(columns)
        expected = {"x": (_NX, rows), "y": (width, rows), "first": old.first.shape, "last": old.last.shape,
                    "low": (limits.buckets, width), "high": (limits.buckets, width),
                    "low_first": (limits.buckets, width), "count": old.count.shape}
        if any(arrays[k].shape != shape for k, shape in expected.items()) or not 0 <= n <= limits.buckets or \
                rows >= limits.recent + limits.evict or len(set(columns)) != width:
            raise ValueError("a sidecar for other limits")
        for name in columns:
            table._add_column(name)
        table._x = [array("d", row.astype(np.float64).tobytes()) for row in x]
        table._y = [array("d", row.astype(np.float64).tobytes()) for row in y]
        old.put(0, *(arrays[k] for k in ("first", "last", "low", "high", "low_first", "count")))
        old.n, table.bucket, table.raw = n, int(header["bucket"]), int(header["raw"])
        return table

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
        if not self._admit(message):
            return False
        topic = message.get("topic")
        if topic == "episode":
            self.episodes.append(_x(message, "episode"), {k: message.get(k) for k in EPISODE_COLUMNS})
        elif topic == "metrics":
            self.metrics.append(_x(message, "episodes"), _metric_values(message))
        return True

    def extend(self, messages: list[Any]) -> None:
        """Take decoded messages in bulk, as `add` would one by one, with each table's rows added at once.

        Anything that is not a JSON object counts as ``corrupt``.
        """
        if self._admit_all(messages):
            return
        episodes: list[dict[str, Any]] = []
        metrics: list[dict[str, Any]] = []
        for message in messages:
            if not isinstance(message, dict):
                self.corrupt += 1
                continue
            if self._continues or message.get("run") != self.process:
                self._add_rows(episodes, metrics)  # a new process may cut rows before its checkpoint: add them first
                episodes, metrics = [], []
            if self._admit(message):
                topic = message.get("topic")
                if topic == "episode":
                    episodes.append(message)
                elif topic == "metrics":
                    metrics.append(message)
        self._add_rows(episodes, metrics)

    def _add_rows(self, episodes: list[dict[str, Any]], metrics: list[dict[str, Any]]) -> None:
        if episodes:
            self.episodes.extend(_xs(episodes, "episode"),
                                 {k: _numbers([m.get(k) for m in episodes]) for k in EPISODE_COLUMNS})
        if metrics:
            rows = [_metric_values(m) for m in metrics]
            names = dict.fromkeys(name for row in rows for name in row)  # in order of first appearance, as `append`
            self.metrics.extend(_xs(metrics, "episodes"),
                                {name: _numbers([row.get(name, math.nan) for row in rows]) for name in names})

    def _admit_all(self, messages: list[Any]) -> bool:
        """Take every message at once if they are the next ones of the latest process, in order: a journal's
        usual chunk, checked without a Python step per message; False (nothing taken) otherwise."""
        if not messages or self._continues or set(map(type, messages)) != {dict}:
            return False
        runs = {m.get("run") for m in messages}
        seqs = [m.get("seq") for m in messages]
        run = runs.pop()
        if runs or not isinstance(run, str) or self.process not in (None, run) or set(map(type, seqs)) != {int}:
            return False
        if seqs[0] <= self.seen.get(run, -1) or (len(seqs) > 1 and np.diff(seqs).min() <= 0):
            return False
        self.process, self.seen[run] = run, seqs[-1]
        topics = [m.get("topic") for m in messages]
        self._add_rows([m for m, topic in zip(messages, topics, strict=True) if topic == "episode"],
                       [m for m, topic in zip(messages, topics, strict=True) if topic == "metrics"])
        return True

    def _admit(self, message: dict[str, Any]) -> bool:
        """Whether the message is next of its process (and not taken before); a resumed process cuts the tables."""
        run, seq = message.get("run"), message.get("seq")
        if not isinstance(run, str) or type(seq) is not int or seq <= self.seen.get(run, -1):
            return False
        self.seen[run] = seq
        if run != self.process:
            self.process, self._continues = run, self.process is not None
        if self._continues and not (message.get("topic") == "status" and message.get("state") == "starting"):
            # A resumed trainer announces "starting" before it loads the checkpoint: its counters
            # are only right from its next message on ("running", at the checkpoint's timesteps).
            self._continues = False
            if isinstance(message.get("timesteps"), int):
                self._resumed_at(message["timesteps"])
        return True

    def _resumed_at(self, timesteps: int) -> None:
        """A new process continues the run from a checkpoint: what came after it is orphaned."""
        self.episodes.cut(timesteps)
        self.metrics.cut(timesteps)

    def add_lines(self, chunk: bytes) -> None:
        """Take complete JSON lines (bulk load); lines that are not JSON objects are counted in ``corrupt``."""
        self.extend([_decode(line) for line in chunk.split(b"\n") if line])

    def nbytes(self) -> int:
        return self.episodes.nbytes() + self.metrics.nbytes()

    def to_json(self) -> dict[str, Any]:
        return {"episodes": self.episodes.to_json(), "metrics": self.metrics.to_json(), "corrupt": self.corrupt}

    def encode(self) -> bytes:
        return orjson.dumps(self.to_json(), option=orjson.OPT_SERIALIZE_NUMPY)


def _decode(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # counted as corrupt


def _metric_values(message: dict[str, Any]) -> dict[str, Any]:
    scalars = message.get("scalars")
    values = dict(scalars) if isinstance(scalars, dict) else {}
    values["sps"] = message.get("sps")
    return values


def _x(message: dict[str, Any], episodes_key: str) -> tuple[float, float, float]:
    def number(key: str) -> float:
        value = message.get(key)
        return value if isinstance(value, (int, float)) else math.nan
    return number(episodes_key), number("timesteps"), number("t")


def _xs(messages: list[dict[str, Any]], episodes_key: str) -> np.ndarray:
    """`_x` of many messages, as an ``(n, 3)`` array."""
    return np.column_stack([_numbers([m.get(k) for m in messages]) for k in (episodes_key, "timesteps", "t")])


def _numbers(values: list[Any]) -> np.ndarray:
    """JSON values as floats: numbers as they are, anything else (None, a string, 10**400) NaN.

    numpy converts a list of numbers at C speed; only a list holding something else is
    converted value by value.
    """
    try:
        array = np.array(values)
        if array.ndim == 1 and array.dtype.kind in "biuf":
            return array.astype(np.float64)
    except (ValueError, OverflowError):  # lists of unequal lengths among the values
        pass
    return np.array([_number(v) for v in values], dtype=np.float64)


def _number(value: Any) -> float:
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return math.nan
    return math.nan


def load_journal(path: Path, limits: Limits | None = None, chunk: int = CHUNK, cache: bool = True) -> RunSeries:
    """Build a run's series from its ``metrics.jsonl``, a chunk at a time (call it in a thread).

    With ``cache``, the series is kept in a sidecar file beside the journal (`sidecar`) and read
    from there while the journal is unchanged; only the bytes the journal had when it was opened
    are read, so the sidecar describes exactly them. A torn last line (a kill mid-write) is not
    counted as corrupt; an unreadable journal raises OSError.
    """
    limits = limits or Limits()
    with open(path, "rb") as journal:
        info = os.fstat(journal.fileno())
        key = [SIDECAR_FORMAT, info.st_size, info.st_mtime_ns, info.st_ino, *astuple(limits)]
        cached = _read_sidecar(sidecar(path), key, limits) if cache else None
        if cached is not None:
            return cached
        series = RunSeries(limits)
        rest, left = b"", info.st_size
        while left and (block := journal.read(min(chunk, left))):
            left -= len(block)
            block = rest + block
            end = block.rfind(b"\n") + 1
            series.add_lines(block[:end])
            rest = block[end:]
    if cache:
        _write_sidecar(sidecar(path), key, series)
    return series


def sidecar(journal: Path) -> Path:
    """Where a journal's decimated series is cached: beside it, hidden; safe to delete at any time."""
    return journal.with_name(f".{journal.name}.viewer.npz")


def _read_sidecar(path: Path, key: list[int], limits: Limits) -> RunSeries | None:
    """The cached series if the sidecar is for this very journal (size, mtime, inode) and these limits."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
        header = orjson.loads(arrays.pop("header").tobytes())
        if header["key"] != key:
            return None
        series = RunSeries(limits)
        for name in ("episodes", "metrics"):
            part = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(name + ".")}
            setattr(series, name, Table.restore(limits, header[name], part))
        series.seen, series.process, series.corrupt = dict(header["seen"]), header["process"], int(header["corrupt"])
        series._continues = bool(header["continues"])
        return series
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        log.info("ignoring the sidecar %s: %s", path, exc)  # rewritten after the journal is read
        return None


def _write_sidecar(path: Path, key: list[int], series: RunSeries) -> None:
    """Write atomically (a reader sees the old file or the new one); a read-only run folder just goes uncached."""
    header: dict[str, Any] = {"key": key, "seen": series.seen, "process": series.process, "corrupt": series.corrupt,
                              "continues": series._continues}
    arrays: dict[str, np.ndarray] = {}
    for name in ("episodes", "metrics"):
        header[name], part = getattr(series, name).state()
        arrays.update({f"{name}.{k}": v for k, v in part.items()})
    arrays["header"] = np.frombuffer(orjson.dumps(header), dtype=np.uint8)
    try:
        with atomic_writer(path, sync_dir=False) as out:  # a cache: a lost rename costs a re-read
            np.savez(out, **arrays)
    except OSError as exc:
        log.info("cannot cache the series in %s: %s", path, exc)


async def load(path: Path, limits: Limits | None = None) -> RunSeries:
    """`load_journal` in a worker process: off the event loop, off its GIL, and several runs at once.

    Parsing a journal is Python work; in a thread of the viewer it would hold the GIL the
    event loop needs to serve browsers. A quick load (a short journal, or one whose sidecar is
    newer) runs in a thread: starting the workers takes longer than it does, and the first chart
    of a page that opens on live runs should not wait for them. If the workers cannot run, it
    loads in a thread.
    """
    if _quick(path):
        return await asyncio.to_thread(load_journal, path, limits)
    try:
        return await asyncio.get_running_loop().run_in_executor(_workers(), load_journal, path, limits)
    except BrokenProcessPool:
        _workers.cache_clear()  # started afresh on the next load
        return await asyncio.to_thread(load_journal, path, limits)


def _quick(journal: Path) -> bool:
    """Whether a load is quick enough for a thread: a short journal, or one its sidecar is newer than."""
    try:
        info = os.stat(journal)
    except OSError:
        return True  # load_journal raises the error at once
    if info.st_size < QUICK_BYTES:
        return True
    try:
        return os.stat(sidecar(journal)).st_mtime_ns >= info.st_mtime_ns
    except OSError:
        return False


@functools.cache
def _workers() -> ProcessPoolExecutor:
    """The journal loaders, started on first use (spawned: the viewer has threads and ZeroMQ contexts)."""
    return ProcessPoolExecutor(max(1, min(LOADERS, os.cpu_count() or 1)), mp_context=get_context("spawn"),
                               initializer=_end_with, initargs=(os.getpid(),))


def _end_with(viewer: int) -> None:
    """In a worker: exit once the viewer is gone. A viewer killed with SIGKILL cannot tell its workers,
    and they hold both ends of their task pipe, so they would wait on it for ever."""
    def watch() -> None:
        while os.getppid() == viewer:
            time.sleep(1)
        os._exit(0)
    threading.Thread(target=watch, name="end-with-viewer", daemon=True).start()
