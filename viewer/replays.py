"""A run's recorded episodes, for the page's replay player: listed, and re-simulated as board frames.

The viewer needs no trainer to replay a game: a record (`tetriszmq.tetris.records`) holds an
episode's seed and placements, and re-simulating them on the record's `PlacementTetris` gives the
game again, board by board. So replays work alike for live and finished runs, and never touch a
live run's stream.

Routes (added to the app by `add_routes`):

- ``GET /api/runs/{id}/episodes``: the run's records, newest first (``best`` first of all), each
  ``name, episode, lines, score, pieces, seed, end, when``; a damaged file is listed with its
  ``error``. ``note`` says why a run has none (a raw-board run keeps no records, a remote trainer
  keeps them on its own machine, none written yet).
- ``GET /api/runs/{id}/episodes/{name}?from=K&count=N``: frames K .. K+N-1 of the episode
  ``name`` (``best``, ``last``, ``episode-<n>`` or ``<n>``): frame i is the board before the
  i-th placement (the falling piece at its spawn) and the placement made from it; the last frame,
  ``pieces``, is the board the game ended on. Boards are 200-character strings, row by row from
  the top, one digit per cell (``0`` empty, ``2``-``8`` the piece kinds), ~250 bytes a frame.

Scrubbing asks for any K in any order. Stepping a game from its start for each chunk would cost
O(K) per request (~0.25 ms a piece), so each game kept here also keeps copies of itself every
`KEYFRAME_EVERY` pieces (at most `MAX_KEYFRAMES`, ~0.3 ms and ~27 KB each: at most ~22 MB for the
`GAMES_KEPT` games) and resumes from the nearest one. Games are cached by file identity (path,
inode, size, mtime), so a ``best.rec`` replaced by a better game is a new game. The simulation runs
in worker threads, off the event loop, at most `SIMULATING` at once: a first scrub to the end of a
long game takes seconds, and the viewer's other file reads share those threads.
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from tetriszmq.tetris import records
from tetriszmq.tetris.records import EpisodeRecord, RecordError
from viewer.runs import Runs

if TYPE_CHECKING:
    from tetriszmq.tetris.placement_env import PlacementTetris

DEFAULT_COUNT = 200
MAX_COUNT = 1000  # frames per response: ~250 KB
KEYFRAME_EVERY = 200
MAX_KEYFRAMES = 100  # a longer game spaces its keyframes further apart
GAMES_KEPT = 8  # games cached, about one per browser replaying
SIMULATING = 2  # requests simulating at once (the VM's cores); the others wait their turn
RAW_NOTE = ("a raw-board run (env.kind = raw): tetris-gymnasium's key-press env keeps no episode records; "
            "only placement runs can be replayed")
REMOTE_NOTE = "a remote trainer: its episode records are in its own run directory, not under --runs"
NONE_YET = "no episode records yet (the trainer writes them every few seconds)"


class ReplayError(Exception):
    """A request the viewer cannot answer: an HTTP status and a message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Place:
    """Where a run's records are, or why it has none."""

    directory: Path | None
    note: str | None


# Listing ------------------------------------------------------------------------------

def list_records(directory: Path) -> list[dict[str, Any]]:
    """Every record in ``directory``: ``best`` first, then the newest episodes first."""
    names = [records.BEST] if (directory / records.BEST).exists() else []
    names += [records.episode_path(directory, n).name for n in reversed(records.numbered(directory))]
    return [_summary(directory / name) for name in names]


def _summary(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
    except OSError as exc:
        return {"name": path.stem, "error": f"{path}: {exc.strerror or exc}"}
    return _read_summary(path, (st.st_ino, st.st_size, st.st_mtime_ns))


@lru_cache(maxsize=1024)
def _read_summary(path: Path, identity: tuple[int, int, int]) -> dict[str, Any]:
    """A record's entry, read once per version of its file: pages list a live run's records every 5 s."""
    try:
        record = records.read(path)
    except RecordError as exc:
        return {"name": path.stem, "error": str(exc)}
    return {"name": path.stem, **record.summary(), "when": round(identity[2] / 1e9, 3)}


# Re-simulation ------------------------------------------------------------------------

class Game:
    """One record being re-simulated: its env where it stands now, and copies of it along the way."""

    def __init__(self, record: EpisodeRecord) -> None:
        self.record = record
        self.last = len(record.actions)  # the frame after the last placement
        self.every = max(KEYFRAME_EVERY, self.last // MAX_KEYFRAMES + 1)
        from tetriszmq.replay import start  # the game (numba's import, ~0.4 s of CPU) only when a replay asks

        self.env, _ = start(record)
        self.at = 0
        self.ended_at: int | None = None  # the game ended before its record did (a record that lies)
        self.keyframes: dict[int, PlacementTetris] = {0: _copy(self.env)}
        self.lock = threading.Lock()  # two requests for one game run in two worker threads

    def frames(self, first: int, count: int) -> list[dict[str, Any]]:
        """Frames ``first`` .. ``first + count - 1``, fewer at the game's end; `ReplayError` past it."""
        with self.lock:
            self._seek(first)
            if self.at < first:  # a record that lies: its game ended before this frame
                raise ReplayError(400, f"from {first}: the episode has frames 0..{self.end()}")
            out = []
            while len(out) < count:
                out.append(self._frame())
                if self.at >= self.end():
                    break
                self._step()
            return out

    def end(self) -> int:
        return self.last if self.ended_at is None else self.ended_at

    def _seek(self, target: int) -> None:
        if target < self.at or target - self.at > self.every:
            base = max(k for k in self.keyframes if k <= target)
            if target < self.at or base > self.at:
                self.env, self.at = _copy(self.keyframes[base]), base
        while self.at < target and self.at < self.end():
            self._step()

    def _step(self) -> None:
        _, _, terminated, truncated, _ = self.env.step(self.record.actions[self.at])
        self.at += 1
        if (terminated or truncated) and self.at < self.last:
            self.ended_at = self.at
        if self.at % self.every == 0 and self.at not in self.keyframes:
            self.keyframes[self.at] = _copy(self.env)

    def _frame(self) -> dict[str, Any]:
        frame = self.env.board_frame()
        out = {"step": frame["step"], "board": "".join(str(v) for row in frame["board"] for v in row),
               "next": frame["next"], "lines": frame["lines"], "score": frame["score"]}
        if self.at < self.end():
            out["action"] = self.record.actions[self.at]
        return out


def _copy(env: PlacementTetris) -> PlacementTetris:
    """A deep copy that shares the read-only piece tables."""
    from tetriszmq.tetris.placement_env import PIECES  # imported already: a Game made the env

    return copy.deepcopy(env, {id(piece): piece for piece in PIECES})


class Games:
    """The games being replayed, by file identity: the last `GAMES_KEPT` used."""

    def __init__(self) -> None:
        self._games: OrderedDict[tuple[str, int, int, int], Game] = OrderedDict()
        self._lock = threading.Lock()

    def chunk(self, directory: Path, which: str, first: int, count: int) -> dict[str, Any]:
        """Frames ``first`` .. ``first + count - 1`` of record ``which``, with the record's header."""
        game = self.game(directory, which)
        if first > game.end():
            raise ReplayError(400, f"from {first}: the episode has frames 0..{game.end()}")
        chunk = game.frames(first, count)
        header = {**game.record.summary(), "frames": game.end() + 1}  # after: a lying record's end is found there
        return {"record": header, "from": first, "frames": chunk}

    def game(self, directory: Path, which: str) -> Game:
        if not directory.is_dir():
            raise ReplayError(404, NONE_YET)
        try:
            path = records.locate(directory, which)
            st = os.stat(path)
        except RecordError as exc:
            raise ReplayError(404, str(exc)) from None
        except OSError as exc:
            raise ReplayError(404, f"{directory}: {exc.strerror or exc}") from None
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            game = self._games.get(key)
            if game is not None:
                self._games.move_to_end(key)
                return game
        try:
            game = Game(records.read(path))
        except RecordError as exc:
            raise ReplayError(422, str(exc)) from None
        with self._lock:
            self._games[key] = game
            while len(self._games) > GAMES_KEPT:
                self._games.popitem(last=False)
        return game


# Routes -------------------------------------------------------------------------------

RUNS = web.AppKey("replay-runs", Runs)
GAMES = web.AppKey("replay-games", Games)
TURNS = web.AppKey("replay-turns", asyncio.Semaphore)


def add_routes(app: web.Application, runs: Runs) -> None:
    """The replay routes, for the runs of ``runs`` (the app's)."""
    app[RUNS], app[GAMES], app[TURNS] = runs, Games(), asyncio.Semaphore(SIMULATING)
    app.router.add_routes([
        web.get("/api/runs/{id}/episodes", episodes),
        web.get("/api/runs/{id}/episodes/{name}", frames),
    ])


async def listing(app: web.Application, ident: str) -> dict[str, Any]:
    """``{"records": [...], "records_note": ...}`` of a run, for its ``/api/runs/{id}`` snapshot too."""
    place = _place(app, ident)
    kept = await asyncio.to_thread(list_records, place.directory) if place.directory is not None else []
    return {"records": kept, "records_note": place.note if not kept else None}


async def episodes(request: web.Request) -> web.Response:
    ident = request.match_info["id"]
    try:
        return _json({"ok": True, "run": ident, **await listing(request.app, ident)})
    except ReplayError as exc:
        return _json({"ok": False, "error": str(exc)}, exc.status)


async def frames(request: web.Request) -> web.Response:
    ident, name = request.match_info["id"], request.match_info["name"]
    try:
        first, count = _int_query(request, "from", 0), _int_query(request, "count", DEFAULT_COUNT)
        if not 1 <= count <= MAX_COUNT:
            raise ReplayError(400, f"count must be 1..{MAX_COUNT}, got {count}")
        place = _place(request.app, ident)
        if place.directory is None:
            raise ReplayError(409 if place.note == RAW_NOTE else 404, f"run {ident}: {place.note}")
        which = _which(name)
        async with request.app[TURNS]:
            body = await asyncio.to_thread(request.app[GAMES].chunk, place.directory, which, first, count)
    except ReplayError as exc:
        return _json({"ok": False, "error": str(exc)}, exc.status)
    return _json({"ok": True, "run": ident, "name": name, **body})


def _place(app: web.Application, ident: str) -> Place:
    runs = app[RUNS]
    entry = runs.catalogue.entries.get(ident)
    if entry is None:
        if ident in runs.known():
            return Place(None, REMOTE_NOTE)
        raise ReplayError(404, f"no run {ident[:80]}")
    if entry.config.get("env.kind", "placement") == "raw":
        return Place(None, RAW_NOTE)
    return Place(entry.dir / "episodes", NONE_YET)


def _which(name: str) -> str:
    """``best``, ``last`` or an episode number, from the route's ``{name}``."""
    which = name.removeprefix("episode-")
    if which in ("best", "last") or records.NUMBER.fullmatch(which):
        return which
    raise ReplayError(400, f"episode {name[:40]!r}: expected best, last, episode-<n> or <n>")


def _int_query(request: web.Request, key: str, default: int) -> int:
    value = request.query.get(key)
    if value is None:
        return default
    if not records.NUMBER.fullmatch(value):
        raise ReplayError(400, f"{key} must be a whole number, got {value[:20]!r}")
    return int(value)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
