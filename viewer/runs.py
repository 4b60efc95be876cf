"""Every run the viewer shows: run directories and live trainers, their histories and their feeds.

A *run* is a run directory found under ``--runs`` (`viewer.catalogue`: its id, its entry in
the run list, read from its files), or a remote ``--trainer`` that is not one of those. A
*feed* is one live trainer link: one `Hub` (the clone pattern, unchanged), started for each
live run whose ``run.json`` names its endpoints, and for each ``--trainer``. The feed is the
hub's sink: what the hub accepts goes into the run's history and to the fan-out under the
run's id. So a ``--resume`` (same directory, a new process on new ports) is one run whose
feed is replaced, and its history goes on.

A remote trainer (a ``--trainer``, or one behind the ``--relay``, `viewer.relaylink`) is
identified by what it says: the catalogue run whose ``run.json`` names its process or its
endpoints, else its lineage (``trainer~<lineage>``, from its snapshot or heartbeats), so a
remote ``--resume`` is one run whose history goes on. Until it is heard it is listed as
``trainer~<host_port>`` (behind a relay: ``trainer~<process run id>``), waiting. A run whose
trainer went away (another run's process took its endpoints, or the relay lost it) stays
listed, ended: ``crashed`` unless its last state was ``stopped`` or ``error``.

History (`viewer.series.RunSeries`, bounded, about 1 MB a run) is loaded only when a browser
watches the run or asks for it: the listing reads only the ends of each ``metrics.jsonl``,
and a load reads the whole file off the event loop (`viewer.series.load`: a worker process for a
long file, unless its cache file beside it is current). Then what the run's hub holds past the file's
end is added (the same message from the file and the stream counts once), so messages that
arrived during the load, or that the trainer had published but not yet written, are not lost.
A remote trainer's run has no file: its history is kept from the moment it is heard.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import zmq

from tetriszmq.stream.relay import Side
from viewer import series as history
from viewer.catalogue import TERMINAL, Catalogue, run_id
from viewer.fanout import LISTING, Fanout, Limits
from viewer.hub import Hub, HubSettings, Link
from viewer.relaylink import RelayLink

log = logging.getLogger("viewer.runs")

HISTORY_TOPICS = frozenset({"status", "episode", "metrics"})
OVERLAY = ("state", "reason", "episodes", "timesteps", "best_lines", "sps")  # what a feed knows better than the files
_ANY_ADDRESS = re.compile(r"^tcp://(\*|0\.0\.0\.0|\[::\]|\[\*\])(:\d+)$")


@dataclass(frozen=True)
class RunsSettings:
    """:param hub: the settings every feed's hub starts from (its endpoints replaced)."""

    roots: tuple[Path, ...] = (Path("runs"),)
    trainers: tuple[tuple[str, str], ...] = ()  # (pub, ctl) of each --trainer
    relay: Side | None = None  # --relay: every trainer behind it is a run
    hub: HubSettings = field(default_factory=lambda: HubSettings(trainer="", ctl=""))
    series: history.Limits = field(default_factory=history.Limits)
    every: float = 1.0  # seconds between rescans of the runs folders


class ControlError(Exception):
    """A control request the viewer refuses itself, with the HTTP status to say it with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Feed:
    """One live trainer link: a hub, and the run it feeds (the hub's sink).

    :param process: behind a relay (``pub``, ``ctl``: the relay's), the trainer process it carries.
    """

    def __init__(self, runs: Runs, pub: str, ctl: str, run: str, remote: bool, process: str | None = None) -> None:
        self.runs, self.pub, self.ctl, self.run, self.remote, self.process = runs, pub, ctl, run, remote, process
        self.placeholder = run  # the id it is listed under until its trainer says which run it is
        self.hub = Hub(replace(runs.settings.hub, trainer=pub, ctl=ctl, run=process))

    def publish(self, topic: str, payload: bytes) -> None:
        self.runs.on_message(self, topic, payload)

    def resync_all(self) -> None:
        self.runs.on_new_process(self)

    def overlay(self) -> dict[str, Any]:
        """The run list's live fields from the hub's newest status or heartbeat (fresher than the files)."""
        hub = self.hub
        newest: dict[str, Any] = {}
        for payload in (hub.history and hub.history.status, hub.heartbeat):
            message = orjson.loads(payload) if payload else {}
            if message.get("seq", -1) > newest.get("seq", -1):
                newest = message
        fields = {key: newest[key] for key in OVERLAY if key in newest}
        if "best_lines" in fields:
            fields["best_lines_exact"] = True
        return {**fields, "link": str(hub.link), "process": hub.run}


class Run:
    """What the viewer holds for one run besides its catalogue entry: its history and its feed."""

    def __init__(self, ident: str) -> None:
        self.id = ident
        self.series: history.RunSeries | None = None  # None until loaded
        self.loading: asyncio.Task[None] | None = None
        self.feed: Feed | None = None
        self.remote: dict[str, Any] | None = None  # the entry of a run known only from a remote trainer
        self.version = 0  # of the history, to reuse its encoding
        self._encoded: tuple[int, bytes] = (-1, b"")

    def take(self, message: dict[str, Any]) -> bool:
        """Add one history message; False if the history already had it (then browsers watching it have it).

        Before the history is loaded nobody watches the run, and the load catches up from the hub.
        """
        if self.series is None:
            return True
        if not self.series.add(message):
            return False
        self.version += 1
        return True

    def encoded(self) -> bytes:
        assert self.series is not None
        if self._encoded[0] != self.version:
            self._encoded = (self.version, self.series.encode())
        return self._encoded[1]


class Runs:
    """The set of runs, their feeds and histories; the fan-out's `Source`."""

    def __init__(self, settings: RunsSettings, limits: Limits) -> None:
        self.settings = settings
        self.catalogue = Catalogue(settings.roots)
        self.fanout = Fanout(limits, self)
        self.runs: dict[str, Run] = {}
        self.feeds: list[Feed] = []
        self._fed: frozenset[str] = frozenset()
        self._listed: dict[str, dict[str, Any]] = {}  # the run list as last broadcast
        self._task: asyncio.Task[None] | None = None
        self.relay = RelayLink(settings.relay, settings.hub, self) if settings.relay else None

    # Lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to every --trainer, read the runs folders once, then keep them watched."""
        for pub, ctl in self.settings.trainers:
            await self._start_feed(pub, ctl, _placeholder(pub), remote=True)
        if self.relay:
            await self.relay.start()
        await self.refresh()
        self._task = asyncio.create_task(self._watch(), name="runs-watch")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *(r.loading for r in self.runs.values())) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.relay:
            await self.relay.stop()
        for feed in list(self.feeds):
            await self._stop_feed(feed)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.every)
            try:
                await self.refresh()
            except Exception:  # one failed rescan must not end the watch
                log.exception("refreshing the runs failed")

    async def refresh(self) -> None:
        """Rescan the folders, start and stop feeds to match, and tell browsers what changed."""
        changes = await self.catalogue.refresh()
        for ident in changes.removed:
            await self._forget(ident)
        for entry in list(self.catalogue.entries.values()):
            await self._follow(entry.id, entry.live, _connectable(entry.endpoints))
        self._broadcast()

    # Feeds -------------------------------------------------------------------------

    async def _follow(self, ident: str, live: bool, endpoints: tuple[str, str] | None) -> None:
        """Keep one feed for a live catalogue run; let go of it once the run ended and its link went quiet."""
        run = self.runs.get(ident)
        feed = run.feed if run else None
        if live and endpoints is not None:
            if feed is not None and (feed.pub, feed.ctl) == endpoints:
                return
            if feed is not None and not feed.remote:
                await self._stop_feed(feed)  # a resumed run: the old process's ports are gone
            existing = next((f for f in self.feeds if (f.pub, f.ctl) == endpoints), None)
            if existing is not None:
                self._bind(existing, ident)  # a --trainer that is this run
            else:
                await self._start_feed(*endpoints, ident, remote=False)
        elif feed is not None and not feed.remote and feed.hub.link is not Link.ONLINE:
            await self._stop_feed(feed)

    async def _start_feed(self, pub: str, ctl: str, ident: str, remote: bool) -> None:
        feed = Feed(self, pub, ctl, ident, remote)
        try:
            await feed.hub.start(feed)
        except zmq.ZMQError as exc:
            log.warning("cannot follow the trainer at %s: %s", pub, exc)
            await feed.hub.stop()
            return
        self.feeds.append(feed)
        self._bind(feed, ident)

    def relayed(self, process: str) -> Hub:
        """A new trainer process behind the relay: a feed for it, listed as that process until it is identified."""
        assert self.settings.relay is not None
        side = self.settings.relay
        feed = Feed(self, side.stream, side.control, run_id(["trainer", process]), remote=True, process=process)
        feed.hub.attach(feed)
        self.feeds.append(feed)
        self._bind(feed, feed.run)
        return feed.hub

    async def vanished(self, process: str) -> None:
        """A process the relay lost: its run ends (crashed, unless it said it stopped)."""
        feed = next((f for f in self.feeds if f.process == process), None)
        if feed is not None:
            await self._stop_feed(feed)

    async def _stop_feed(self, feed: Feed) -> None:
        self.feeds.remove(feed)
        run = self.runs.get(feed.run)
        if run is not None and run.feed is feed:
            self._unfeed(run)
        self._fed = frozenset(f.run for f in self.feeds)
        await feed.hub.stop()

    def _unfeed(self, run: Run) -> None:
        """The run's trainer is gone: a remote run stays listed, ended, as it was last heard."""
        feed, run.feed = run.feed, None
        if run.remote is not None and feed is not None:
            heard = feed.overlay() if feed.hub.run == run.remote.get("process") else {}  # else: another process's
            ended = {**self._listed.get(run.id, run.remote), **heard, "live": False, "link": None,
                     "ended": feed.hub.last_heard or None}
            if ended["state"] not in TERMINAL:
                ended["state"] = "crashed"
            run.remote = ended

    def _bind(self, feed: Feed, ident: str) -> None:
        """Make ``feed`` feed the run ``ident`` (a remote trainer that said which run it is).

        The run it fed before stays listed, ended, if it was another process's; the placeholder of
        a trainer not heard yet, or the same process under a better name, goes.
        """
        old = self.runs.get(feed.run)
        if old is not None and old.feed is feed and old.id != ident:
            if old.remote is not None and (old.id == feed.placeholder or old.remote.get("process") == feed.hub.run):
                del self.runs[old.id]
            else:
                self._unfeed(old)
        feed.run = ident
        run = self.runs.setdefault(ident, Run(ident))
        run.feed = feed
        if feed.remote and ident not in self.catalogue.entries:
            run.remote = _remote_entry(ident, feed)
        if ident in self.catalogue.entries or (run.remote is not None and feed.hub.run is not None):
            # Live runs are what a page opens on: their history is read now, not when the first browser
            # asks. A remote run has no file to read later: its history is kept from now on.
            self.load(ident)
        self._fed = frozenset(f.run for f in self.feeds)
        self.fanout.resync(ident)

    def _identify(self, feed: Feed) -> str:
        """The run a remote trainer's process belongs to: a catalogue run naming it, else its lineage's."""
        hub = feed.hub
        for entry in self.catalogue.entries.values():
            named = hub.run is not None and entry.process == hub.run
            if named or (feed.process is None and _connectable(entry.endpoints) == (feed.pub, feed.ctl)):
                return entry.id
        lineage = hub.lineage or hub.run
        return feed.placeholder if lineage is None else run_id(["trainer", lineage])

    def on_message(self, feed: Feed, topic: str, payload: bytes) -> None:
        """A message the hub accepted: into the run's history, then to browsers (runs mode only if it is new)."""
        new = True
        if topic in HISTORY_TOPICS:
            new = self.runs[feed.run].take(orjson.loads(payload))
        spliced = b'{"id":"%s",%s' % (feed.run.encode(), payload[1:]) if new else None
        self.fanout.publish(feed.run, topic, payload, spliced)

    def on_new_process(self, feed: Feed) -> None:
        """The hub merged a new trainer process's snapshot: (re)identify, catch the history up, resync browsers."""
        if feed.remote:
            ident = self._identify(feed)
            if ident != feed.run:
                self._bind(feed, ident)
        run = self.runs[feed.run]
        _catch_up(run, feed.hub)
        self.fanout.resync(feed.run)

    # Histories ---------------------------------------------------------------------

    def load(self, ident: str) -> asyncio.Task[None] | None:
        """Start loading a run's history unless it is loaded or loading; the task, or None when done."""
        run = self.runs.get(ident)
        if run is None:
            if ident not in self.catalogue.entries:
                raise KeyError(ident)
            run = self.runs[ident] = Run(ident)
        if run.series is None and run.loading is None:
            entry = self.catalogue.entries.get(ident)
            run.loading = asyncio.create_task(self._load(run, entry and entry.dir / "metrics.jsonl"),
                                              name=f"load-{ident}")
        return run.loading

    async def _load(self, run: Run, path: Path | None) -> None:
        limits = self.settings.series
        try:
            series = await history.load(path, limits) if path is not None and _regular(path) else None
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
            series = None
        run.series, run.loading = series or history.RunSeries(limits), None
        run.version += 1
        if run.feed is not None:
            _catch_up(run, run.feed.hub)
        self.fanout.ready(run.id)

    async def opened(self, ident: str) -> bytes:
        """The run's snapshot as the WebSocket sends it, loading its history first (KeyError: no such run)."""
        if not self._exists(ident):
            raise KeyError(ident)
        loading = self.load(ident)
        if loading is not None:
            await asyncio.shield(loading)
        return b"".join(self._snapshot(ident) or ())

    # The fan-out's source ------------------------------------------------------------

    def fed(self) -> frozenset[str]:
        return self._fed

    def known(self) -> list[str]:
        return [*self.catalogue.entries, *(i for i, r in self.runs.items() if r.remote is not None)]

    def _exists(self, ident: str) -> bool:
        run = self.runs.get(ident)
        return ident in self.catalogue.entries or (run is not None and run.remote is not None)

    def snapshot(self, ident: str, legacy: bool) -> tuple[bytes, ...] | None:
        if ident == LISTING:
            return (orjson.dumps({"topic": "runs", "full": True, "runs": list(self._listed.values()),
                                  "removed": []}),)
        run = self.runs.get(ident)
        if legacy:
            if run is None or run.feed is None:
                return None
            head, *rest = run.feed.hub.snapshot_parts()
            return (b'{"id":"%s",%s' % (ident.encode(), head[1:]), *rest)
        if not self._exists(ident):
            return None
        if run is None or run.series is None:
            self.load(ident)
            return None
        return self._snapshot(ident)

    def _snapshot(self, ident: str) -> tuple[bytes, ...] | None:
        """A run's snapshot in runs mode: its entry, latest state, and whole (decimated) history."""
        run = self.runs.get(ident)
        entry = self._listed.get(ident) or self.listing_entries().get(ident)
        if run is None or run.series is None or entry is None:
            return None
        hub = run.feed.hub if run.feed else None
        process = run.series.process or (hub and hub.run)
        head = orjson.dumps({
            "topic": "snapshot", "id": ident, "run": process, "seq": run.series.seen.get(process or "", -1),
            "entry": entry,
            "link": hub and orjson.Fragment(b'{"id":"%s",%s' % (ident.encode(), hub.link_message()[1:])),
            "status": _fragment(hub and hub.history and hub.history.status),
            "board": _fragment(hub and hub.history and hub.history.board),
            "heartbeat": _fragment(hub and hub.heartbeat),
        })
        return head[:-1] + b',"history":', run.encoded(), b"}"

    # The run list ----------------------------------------------------------------------

    def listing_entries(self) -> dict[str, dict[str, Any]]:
        """Every run's entry: the catalogue's from files, with its feed's live fields; remote runs after."""
        entries = {}
        for ident, entry in self.catalogue.entries.items():
            data = entry.to_json()
            run = self.runs.get(ident)
            data["link"] = None
            if run is not None and run.feed is not None:
                data.update(run.feed.overlay())
            entries[ident] = data
        for ident, run in self.runs.items():
            if ident not in entries and run.remote is not None:
                entries[ident] = {**run.remote, **(run.feed.overlay() if run.feed else {})}
        return entries

    def _broadcast(self) -> None:
        """Tell browsers what changed in the run list since the last time, field by field."""
        listed = self.listing_entries()
        old = self._listed
        patch = [{"id": ident, **{k: v for k, v in entry.items() if old.get(ident, {}).get(k, ...) != v}}
                 for ident, entry in listed.items() if entry != old.get(ident)]
        removed = [ident for ident in old if ident not in listed]
        self._listed = listed
        if patch or removed:
            payload = orjson.dumps({"topic": "runs", "full": False, "runs": patch, "removed": removed})
            self.fanout.publish(LISTING, "runs", payload, payload)
        for ident in listed.keys() - old.keys():
            self.fanout.resync(ident, legacy=False)  # to browsers watching every run, or this one by name

    async def _forget(self, ident: str) -> None:
        """A run directory that was removed: its feed stops (a remote trainer's feeds its own run), its history goes."""
        run = self.runs.get(ident)
        if run is None or run.remote is not None:
            return
        if run.feed is not None and run.feed.remote:
            self._bind(run.feed, self._identify(run.feed))
        elif run.feed is not None:
            await self._stop_feed(run.feed)
        if run.loading is not None:
            run.loading.cancel()
        del self.runs[ident]

    # Control ---------------------------------------------------------------------------

    def feed_for(self, ident: str | None) -> Feed:
        """The feed a control request acts on: the named run's, or the only live one's."""
        if ident is None:
            if len(self.feeds) != 1:
                raise ControlError(400, 'several trainers are live: say which run with "run"') if self.feeds else \
                    ControlError(409, "no trainer is live")
            return self.feeds[0]
        run = self.runs.get(ident)
        if not self._exists(ident):
            raise ControlError(404, f"no run {ident[:80]}")
        if run is None or run.feed is None:
            raise ControlError(409, f"run {ident} has no live trainer")
        return run.feed

    def primary(self) -> Feed | None:
        """The feed ``/api/status`` reports as ``trainer``: the first --trainer, else the first live run."""
        return next((f for f in self.feeds if f.remote), self.feeds[0] if self.feeds else None)


def _catch_up(run: Run, hub: Hub) -> None:
    """Add what the hub holds past what the run's history has (a new process; messages the file lacked)."""
    if run.series is None:
        return
    after = run.series.seen.get(hub.run or "", -1)
    for payload in hub.history_after(after):
        run.take(orjson.loads(payload))


def _remote_entry(ident: str, feed: Feed) -> dict[str, Any]:
    hub = feed.hub
    where = f"behind the relay {feed.pub}" if feed.process else f"--trainer {feed.pub}"
    return {"id": ident, "name": hub.lineage or hub.run or feed.process or feed.pub, "dir": None, "live": True,
            "state": "waiting",
            "reason": "", "algo": None, "seed": None, "episodes": 0, "timesteps": 0, "best_lines": None,
            "best_lines_exact": True, "mean_lines": None, "sps": None, "started": None, "ended": None,
            "process": feed.hub.run, "endpoints": {"pub": feed.pub, "ctl": feed.ctl}, "config": {},
            "note": None, "about": f"a remote trainer ({where}): its files are not under --runs", "link": None}


def _placeholder(pub: str) -> str:
    """The id of a remote trainer not heard yet."""
    return "trainer~" + re.sub(r"[^A-Za-z0-9._-]", "_", pub.split("://", 1)[-1])


def _connectable(endpoints: dict[str, str]) -> tuple[str, str] | None:
    """(pub, ctl) to connect to, from the endpoints a trainer bound (``tcp://0.0.0.0:P`` is reached on loopback)."""
    pub, ctl = endpoints.get("pub"), endpoints.get("ctl")
    if not pub or not ctl:
        return None
    return tuple(_ANY_ADDRESS.sub(lambda m: f"tcp://{'[::1]' if ':' in m[1] else '127.0.0.1'}{m[2]}", e)
                 for e in (pub, ctl))  # type: ignore[return-value]


def _regular(path: Path) -> bool:
    """A FIFO or device in place of metrics.jsonl would block the loading thread for ever."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _fragment(payload: bytes | None) -> orjson.Fragment | None:
    return None if payload is None else orjson.Fragment(payload)
