"""The run catalogue: every run directory under the viewer's ``--runs`` folders, live or finished.

A run is a directory holding ``run.json``, ``metrics.jsonl`` or ``config.toml``: a runs folder
itself, a folder in it (``runs/exp1``) or one level deeper (``runs/<study>/trial-3``). Its
identity is the directory, not the trainer process: a ``--resume`` writes a new process run id
into the same directory and stays the same run. Its id is its path relative to the runs folder
(prefixed with the folder's name when there are several), with ``~`` between the parts and any
character outside ``[A-Za-z0-9._-]`` replaced plus a hash of the real path, so ids are URL-safe,
unique and the same on every start.

Listing is cheap, whatever the runs' length: ``run.json`` and ``config.toml`` are small, and of
``metrics.jsonl`` only its first line (when the run started) and its last `TAIL` bytes (latest
counters and status) are read. A rescan re-reads only the files whose size, mtime or inode
changed, so `Catalogue.refresh` (a thread, off the event loop) can run every second.

State: a run whose last journaled message is a ``stopped`` or ``error`` status is that. Otherwise
it is live while the process named by ``run.json`` (pid, on this host) is alive, and ``crashed``
once it is gone; without a usable ``run.json`` it is ``unknown``. A live run's state is its last
status (``starting``, ``running``, ``paused``, ``saving``, ``stopping``). Anything wrong with a
run's files becomes a ``note`` on its entry; the listing itself never fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
import stat
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import orjson

log = logging.getLogger("viewer.catalogue")

TAIL = 1 << 16  # bytes of metrics.jsonl read from its end: hundreds of messages, however long the run
MARKERS = ("run.json", "metrics.jsonl", "config.toml")
SKIPPED = frozenset({"checkpoints"})  # folders inside a run that are never runs themselves
TERMINAL = frozenset({"stopped", "error"})
MEAN_OVER = 100  # episodes in "mean_lines"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_T = TypeVar("_T")


class Unreadable(OSError):
    """A run file that cannot be read as such (not a regular file, not UTF-8, ...)."""


@dataclass
class RunEntry:
    """One run as the run list shows it (`to_json` is the ``GET /api/runs`` entry)."""

    id: str
    name: str
    dir: Path
    live: bool = False
    state: str = "unknown"
    reason: str = ""
    algo: str | None = None
    seed: int | None = None
    episodes: int = 0
    timesteps: int = 0
    best_lines: int | None = None
    best_lines_exact: bool = True  # False: the best of the episodes in the journal's tail only
    mean_lines: float | None = None
    sps: float | None = None
    started: float | None = None
    ended: float | None = None
    process: str | None = None  # the run id of the latest trainer process
    pid: int | None = None
    endpoints: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "dir": str(self.dir), "live": self.live, "state": self.state,
            "reason": self.reason, "algo": self.algo, "seed": self.seed, "episodes": self.episodes,
            "timesteps": self.timesteps, "best_lines": self.best_lines, "best_lines_exact": self.best_lines_exact,
            "mean_lines": self.mean_lines, "sps": self.sps, "started": self.started, "ended": self.ended,
            "process": self.process, "endpoints": self.endpoints, "config": self.config,
            "note": "; ".join(self.notes) or None, "about": None,
        }


@dataclass(frozen=True)
class Changes:
    """What a refresh changed, by run id."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass(frozen=True)
class RunFile:
    """``run.json``: which process trains here and where to reach it."""

    process: str | None
    pid: int | None
    started: float | None
    host: str | None
    endpoints: dict[str, str]


@dataclass(frozen=True)
class Journal:
    """What the head and tail of ``metrics.jsonl`` say."""

    first_t: float | None = None
    last_t: float | None = None
    process: str | None = None
    state: str | None = None  # of the last status message
    reason: str = ""
    terminal: bool = False  # the last message is a stopped or error status
    episodes: int = 0
    timesteps: int = 0
    best_lines: int | None = None
    best_lines_exact: bool = True
    mean_lines: float | None = None
    sps: float | None = None
    corrupt: int = 0  # lines in the tail that are not JSON objects
    torn: bool = False  # the last line is incomplete (a kill mid-write, or a write in progress)


class Catalogue:
    """The runs under some folders, refreshed by `refresh` (one refresh at a time)."""

    def __init__(self, roots: Sequence[Path | str], *, tail: int = TAIL) -> None:
        self.roots = [Path(root) for root in roots]
        self.tail = tail
        self.entries: dict[str, RunEntry] = {}
        self._labels = _root_labels(self.roots)
        self._parsed: dict[Path, tuple[tuple[int, int, int], Any]] = {}
        self._host = socket.gethostname()

    async def refresh(self) -> Changes:
        """Rescan in a thread, then swap the entries in on the event loop."""
        entries = await asyncio.to_thread(self.scan)
        changes = _diff(self.entries, entries)
        self.entries = entries
        return changes

    def scan(self) -> dict[str, RunEntry]:
        """Find and read every run now (blocking file I/O: call it in a thread)."""
        entries = {}
        for parts, directory, problem in self._discover():
            name = "/".join(parts)
            entry = RunEntry(id=run_id(parts), name=name, dir=directory.absolute())
            if problem:
                entry.notes.append(problem)
            else:
                self._read_run(entry)
            entries[entry.id] = entry
        seen = {entry.dir for entry in entries.values()}
        self._parsed = {path: parsed for path, parsed in self._parsed.items() if path.parent in seen}
        return dict(sorted(entries.items()))

    # Discovery ---------------------------------------------------------------

    def _discover(self) -> Iterator[tuple[list[str], Path, str]]:
        """``(name parts, directory, problem)`` of every run directory under the roots."""
        for root in self.roots:
            label = [self._labels[root]] if self._labels[root] else []
            if _is_run(root):
                yield label or [_label(root)], root, ""
                continue
            for child, problem in _subdirs(root):
                if problem or _is_run(child):
                    yield [*label, child.name], child, problem
                    continue
                for grandchild, problem in _subdirs(child):
                    if problem or _is_run(grandchild):
                        yield [*label, child.name, grandchild.name], grandchild, problem

    # One run -------------------------------------------------------------------

    def _read_run(self, entry: RunEntry) -> None:
        run_file = self._parse(entry, "run.json", read_run_file)
        config = self._parse(entry, "config.toml", read_config)
        journal = self._parse(entry, "metrics.jsonl", lambda path: read_journal(path, self.tail))
        if config is not None:
            entry.config = config
            entry.algo = _typed(config.get("agent.algo"), str)
            entry.seed = _typed(config.get("run.seed"), int)
        if run_file is not None:
            entry.pid, entry.endpoints, entry.process = run_file.pid, run_file.endpoints, run_file.process
        if journal is not None:
            _take_journal(entry, journal)
        entry.started = _earliest(journal and journal.first_t, run_file and run_file.started)
        entry.live, entry.state, why = self._state(run_file, journal)
        if why:
            entry.notes.append(why)
        if journal is not None and not entry.live:
            entry.ended = journal.last_t
            if journal.torn:
                entry.notes.append("metrics.jsonl: its last line is cut short (the trainer was killed mid-write)")

    def _state(self, run_file: RunFile | None, journal: Journal | None) -> tuple[bool, str, str]:
        """``(live, state, note)`` from the journal's last status and the trainer process."""
        if journal is not None and journal.terminal:
            return False, journal.state or "stopped", ""
        if run_file is None or run_file.pid is None:
            return False, "unknown", "" if run_file is None else "run.json names no pid"
        if run_file.host is not None and run_file.host != self._host:
            return False, "unknown", f"trained on host {run_file.host}: its process cannot be checked from here"
        if process_alive(run_file.pid, run_file.started):
            return True, (journal and journal.state) or "starting", ""
        return False, "crashed", ""

    def _parse(self, entry: RunEntry, name: str, reader: Callable[[Path], _T]) -> _T | None:
        """Read one run file through the cache; a missing or unreadable one becomes a note."""
        path = entry.dir / name
        try:
            info = os.stat(path)
        except FileNotFoundError:
            entry.notes.append(_MISSING[name])
            return None
        except OSError as exc:
            entry.notes.append(f"{name}: cannot read: {exc.strerror or exc}")
            return None
        signature = (info.st_mtime_ns, info.st_size, info.st_ino)
        cached = self._parsed.get(path)
        if cached is None or cached[0] != signature:
            try:
                cached = (signature, reader(path))
            except (OSError, ValueError) as exc:  # tomllib's and orjson's errors are ValueErrors
                cached = (signature, exc)
            self._parsed[path] = cached
        if isinstance(cached[1], Exception):
            entry.notes.append(f"{name}: {_describe(cached[1])}")
            return None
        return cached[1]


_MISSING = {
    "run.json": "no run.json: whether a trainer is running here cannot be told",
    "config.toml": "no config.toml",
    "metrics.jsonl": "no metrics.jsonl yet",
}


def _describe(error: Exception) -> str:
    if isinstance(error, Unreadable):
        return str(error)
    if isinstance(error, OSError):
        return f"cannot read: {error.strerror or error}"
    return f"unreadable: {error}"


def _take_journal(entry: RunEntry, journal: Journal) -> None:
    entry.process = entry.process or journal.process
    entry.reason = journal.reason
    entry.episodes, entry.timesteps = journal.episodes, journal.timesteps
    entry.best_lines, entry.best_lines_exact = journal.best_lines, journal.best_lines_exact
    entry.mean_lines, entry.sps = journal.mean_lines, journal.sps
    if journal.corrupt:
        entry.notes.append(f"metrics.jsonl: {journal.corrupt} corrupt line(s) near its end, skipped")


# Files -------------------------------------------------------------------------


def _read_regular(path: Path, size: int, offset: int = 0) -> bytes:
    """Up to ``size`` bytes of a regular file; a FIFO or device would block or never end, so it is refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unreadable("not a regular file")
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def read_run_file(path: Path) -> RunFile:
    data = orjson.loads(_read_regular(path, 1 << 20))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    endpoints = data.get("endpoints")
    endpoints = {k: v for k, v in endpoints.items() if isinstance(v, str)} if isinstance(endpoints, dict) else {}
    return RunFile(process=_typed(data.get("run"), str), pid=_typed(data.get("pid"), int),
                   started=_number(data.get("started")), host=_typed(data.get("host"), str), endpoints=endpoints)


def read_config(path: Path) -> dict[str, Any]:
    """The config flattened to dotted keys (``{"agent.algo": "ppo", ...}``): a sweep's runs compare key by key."""
    try:
        text = _read_regular(path, 1 << 20).decode()
    except UnicodeDecodeError:
        raise Unreadable("not UTF-8 text") from None
    return _flatten(tomllib.loads(text))


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_journal(path: Path, tail: int = TAIL) -> Journal:
    """The head line and the last ``tail`` bytes of ``metrics.jsonl``, summarised (never the whole file)."""
    size = os.stat(path).st_size
    head = _read_regular(path, min(size, tail))
    offset = max(0, size - tail)
    data = head if offset == 0 else _read_regular(path, tail, offset)
    lines = data.split(b"\n")
    torn = lines.pop() != b""  # the part after the last newline: empty unless a line is cut short
    if offset:
        lines = lines[1:]  # starts mid-line
    messages, corrupt = _decode(lines)
    first = _decode(head.split(b"\n", 1)[:1] if b"\n" in head else [])[0]
    return _summarise(messages, corrupt, torn, exact=offset == 0,
                      first_t=_number(first[0].get("t")) if first else None)


def _decode(lines: list[bytes]) -> tuple[list[dict[str, Any]], int]:
    messages, corrupt = [], 0
    for line in lines:
        if not line:
            continue
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            corrupt += 1
            continue
        if isinstance(message, dict):
            messages.append(message)
        else:
            corrupt += 1
    return messages, corrupt


def _summarise(messages: list[dict[str, Any]], corrupt: int, torn: bool, *, exact: bool,
               first_t: float | None) -> Journal:
    if not messages:
        return Journal(first_t=first_t, corrupt=corrupt, torn=torn)
    last = messages[-1]
    statuses = [m for m in messages if m.get("topic") == "status"]
    status = statuses[-1] if statuses else {}
    lines = [m["lines"] for m in messages if m.get("topic") == "episode" and type(m.get("lines")) is int]
    reported = [m["best_lines"] for m in messages if type(m.get("best_lines")) is int]  # a trainer that reports it
    best = max(lines + reported, default=None)
    recent = lines[-MEAN_OVER:]
    return Journal(
        first_t=first_t, last_t=_number(last.get("t")), process=_typed(last.get("run"), str),
        state=_typed(status.get("state"), str), reason=_typed(status.get("reason"), str) or "",
        terminal=last is status and status.get("state") in TERMINAL,
        episodes=_counter(last, "episode" if last.get("topic") == "episode" else "episodes"),
        timesteps=_counter(last, "timesteps"), best_lines=best, best_lines_exact=exact or bool(reported),
        mean_lines=round(sum(recent) / len(recent), 3) if recent else None,
        sps=next((_number(m.get("sps")) for m in reversed(messages) if m.get("topic") == "metrics"), None),
        corrupt=corrupt, torn=torn,
    )


# Processes ---------------------------------------------------------------------


def process_alive(pid: int, started: float | None) -> bool:
    """Whether ``pid`` is a running process that could have written a run.json at ``started``.

    A zombie has exited; a process that began after ``started`` reuses the pid of one that has.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return True  # no /proc (not Linux): the signal check is all there is
    if fields[0] == b"Z":
        return False
    boot = _boot_time()
    if started is None or boot is None:
        return True
    began = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return began <= started + 2.0  # /proc's clock ticks and boot second round; run.json comes after the start


@cache
def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


# Names ---------------------------------------------------------------------------


def run_id(parts: Sequence[str]) -> str:
    """A URL-safe id for a run directory's name parts; unsafe characters cost a hash of the real name."""
    safe = [_UNSAFE.sub("_", part) for part in parts]
    slug = "~".join(safe)
    if safe != list(parts):
        slug += "-" + hashlib.sha1("/".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return slug


def _label(root: Path) -> str:
    return root.absolute().name or "runs"


def _root_labels(roots: Sequence[Path]) -> dict[Path, str]:
    """Name prefixes for runs when there are several roots (none for one); equal names get a hash."""
    if len(roots) < 2:
        return {root: "" for root in roots}
    names = [_label(root) for root in roots]
    return {root: name if names.count(name) == 1 else
            f"{name}-{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:6]}"
            for root, name in zip(roots, names, strict=True)}


def _is_run(directory: Path) -> bool:
    return any(os.path.lexists(directory / marker) for marker in MARKERS)


def _subdirs(directory: Path) -> Iterator[tuple[Path, str]]:
    """Sub-folders that may be runs, sorted; one that cannot be listed comes with the reason."""
    try:
        with os.scandir(directory) as scan:
            found = sorted(e.name for e in scan if e.is_dir() and not e.name.startswith(".") and e.name not in SKIPPED)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot list %s: %s", directory, exc)
        return
    for name in found:
        child = directory / name
        if not os.access(child, os.R_OK | os.X_OK):
            yield child, "cannot read this directory: permission denied"
        else:
            yield child, ""


def _diff(old: dict[str, RunEntry], new: dict[str, RunEntry]) -> Changes:
    return Changes(
        added=tuple(k for k in new if k not in old),
        removed=tuple(k for k in old if k not in new),
        changed=tuple(k for k in new if k in old and new[k].to_json() != old[k].to_json()),
    )


def _typed(value: Any, kind: type[_T]) -> _T | None:
    return value if type(value) is kind else None


def _number(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) else None


def _counter(message: dict[str, Any], key: str) -> int:
    return _typed(message.get(key), int) or 0


def _earliest(*times: float | None) -> float | None:
    return min((t for t in times if t is not None), default=None)
