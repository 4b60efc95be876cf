"""Broadcasting every run's stream to many WebSocket clients from one event loop.

Each message is framed once per form (an unmasked, uncompressed WebSocket text
frame around the trainer's payload bytes, or around the same bytes with the
run's catalogue ``id`` spliced in) and the same ``bytes`` goes to every client
of that form. A healthy client is written to directly on its transport from the
broadcast loop: no task wake-up, no copy, no per-client encoding. A client
whose transport buffer is over `Limits.slow_bytes` is *slow*: it is served
by its own writer task from a latest-wins slot per board/heartbeat and a
bounded ordered queue for everything else. When that queue overflows the
client is resynchronised with a fresh snapshot; after `Limits.max_resyncs`
resyncs in a row, or a write that waits longer than `Limits.send_timeout`,
it is disconnected. So a slow browser gets fewer frames, never a backlog,
and costs at most about ``slow_bytes`` plus a queue of references.

What a client receives is per run: a client in *runs mode* (it sent a
``watch``, see `Watch`) gets the runs it watches and the boards it draws; a
*legacy* client (today's one-run page and scripts) gets every live run as the
viewer of one trainer did. Either way a run's messages reach a client only
after that run's snapshot: while a run is in `Client.due`, its messages are
skipped for that client, because the snapshot, taken when it is written,
includes them. Clients that want the same thing share one joined write per burst.

Snapshots carry a run's whole history (hundreds of KB to megabytes), so
they share one byte budget (`SnapshotBudget`): a crowd of browsers
reconnecting at once is served one after another at `Limits.snapshot_rate`,
not all at once. A client waiting for its turn stays on the fast path for the
runs it already has; its writer task takes the transport only to write a snapshot.

Writing to the transport next to aiohttp's own `WebSocketWriter` is safe
because, without compression, aiohttp writes every frame (including ping,
pong and close) with synchronous ``transport.write`` calls and no await in
between, so frames never interleave; and we stop writing once ``ws.closed``
is set, which aiohttp does before it sends its close frame.
"""

from __future__ import annotations

import asyncio
import functools
import math
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

TEXT, CONTINUATION = 0x1, 0x0
FIN = 0x80
LATEST_WINS = frozenset({"board", "heartbeat"})  # state, not history: only the newest matters
INTERNED = 4096  # distinct watches kept for sharing: more browsers than that share less, correctly
LISTING = ""  # the run id of the viewer's own ``runs`` messages: due first for a client in runs mode
_LEN1, _LEN2, _LEN3 = struct.Struct("!BB"), struct.Struct("!BBH"), struct.Struct("!BBQ")


class Source(Protocol):
    """The runs the fan-out serves (`viewer.runs.Runs`)."""

    def fed(self) -> frozenset[str]:
        """Ids of the runs a live trainer feeds: what a legacy client gets."""
        ...

    def known(self) -> Iterable[str]:
        """Every run id there is."""
        ...

    def snapshot(self, run: str, legacy: bool) -> tuple[bytes, ...] | None:
        """The run's snapshot message in parts; None while its history is still loading, or if it is gone."""
        ...


def ws_frame(payload: bytes | memoryview, opcode: int = TEXT, fin: bool = True) -> bytes:
    """One unmasked server-to-client WebSocket frame (RFC 6455 section 5.2)."""
    first = (FIN if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        header = _LEN1.pack(first, size)
    elif size < 1 << 16:
        header = _LEN2.pack(first, 126, size)
    else:
        header = _LEN3.pack(first, 127, size)
    return header + payload


@dataclass(frozen=True)
class Limits:
    """How much a slow client may cost before it is resynced or dropped."""

    slow_bytes: int = 64 * 1024  # transport buffer above which a client is served by its writer task
    socket_bytes: int = 128 * 1024  # kernel send buffer: fixed, so a stalled client is noticed early
    max_queue: int = 512  # ordered messages kept for a slow client before it is resynced
    max_resyncs: int = 3  # resyncs in a row, without catching up, before it is disconnected
    send_timeout: float = 10.0  # seconds one write may wait for the client to read
    chunk: int = 32 * 1024  # snapshot fragment size: a slow client buffers one at a time
    snapshot_rate: float = 8e6  # snapshot bytes per second, all clients together (bench/resync.py)
    flush_period: float = 0.02  # seconds from one broadcast to the next at least: messages meanwhile go together


class SnapshotBudget:
    """Snapshot bytes per second shared by every client: a resync storm is spread out, not multiplied.

    A token bucket that may go into debt: a snapshot goes out at once while the
    bucket is not empty, and the next one waits until the debt is repaid at
    ``rate`` bytes/s. Waiters take turns in order (an `asyncio.Lock` is fair);
    one that leaves while waiting costs nothing, and one that stalls while
    writing holds nobody up. The bucket holds one second of budget, so any
    second sees at most twice the rate plus one snapshot.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.level = rate
        self.refilled = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, snapshot: Callable[[], tuple[bytes, ...] | None]) -> tuple[bytes, ...] | None:
        """Wait for this client's turn, then take a fresh snapshot and charge its size."""
        async with self.lock:
            self._refill()
            if self.level <= 0:
                await asyncio.sleep(-self.level / self.rate)
                self._refill()
            parts = snapshot()
            self.level -= sum(map(len, parts or ()))
            return parts

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.rate, self.level + (now - self.refilled) * self.rate)
        self.refilled = now


@dataclass(frozen=True)
class Watch:
    """What a client in runs mode asked for (its ``watch`` message): whose history, whose boards.

    :param runs: the runs whose snapshot, status, episodes, metrics and heartbeats it gets; None: all.
    :param boards: the runs whose board frames it gets (the ones it draws); None: all. Watching a board
        watches its run.
    """

    runs: frozenset[str] | None
    boards: frozenset[str] | None = frozenset()

    def wants(self, run: str) -> bool:
        return self.runs is None or self.boards is None or run in self.runs or run in self.boards

    def draws(self, run: str) -> bool:
        return self.boards is None or run in self.boards

    def wanted(self, known: Iterable[str]) -> set[str]:
        return {run for run in known if self.wants(run)}


class Message:
    """One message for every client, framed once per form when first needed.

    ``spliced`` is the payload with the run's ``id`` added (runs mode); None when clients in
    runs mode already have it (a history message their run's snapshot included).
    """

    __slots__ = ("run", "topic", "raw", "spliced", "_frames")

    def __init__(self, run: str, topic: str, raw: bytes, spliced: bytes | None) -> None:
        self.run, self.topic, self.raw, self.spliced = run, topic, raw, spliced
        self._frames: list[bytes | None] = [None, None]

    def frame(self, legacy: bool) -> bytes:
        frame = self._frames[legacy]
        if frame is None:
            payload = self.raw if legacy else self.spliced
            assert payload is not None
            frame = self._frames[legacy] = ws_frame(payload)
        return frame


class Client:
    """One browser: its transport, what it watches, its slow-path state and its counters."""

    def __init__(self, ident: int, ws: web.WebSocketResponse, writer: AbstractStreamWriter,
                 transport: asyncio.Transport, remote: str | None, fanout: Fanout) -> None:
        self.ident, self.ws, self.writer, self.transport, self.remote = ident, ws, writer, transport, remote
        self.fanout = fanout
        self.watch: Watch | None = None  # None: a legacy client (no ``watch`` sent)
        self.fast = False  # True: the broadcast writes directly; False: the writer task owns the transport
        self.due: set[str] = set(fanout.source.fed())  # runs whose snapshot is due (always first)
        self.queue: deque[Message] = deque()
        self.latest: dict[tuple[str, str], Message] = {}
        self.wake = asyncio.Event()
        self.wake.set()
        self.failure: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.sent = self.dropped = self.resyncs = self.resyncs_in_a_row = self.ignored = 0

    @property
    def legacy(self) -> bool:
        return self.watch is None

    def wants(self, run: str) -> bool:
        """Whether this client follows ``run`` at all (a snapshot of it is, or will be, due)."""
        if self.watch is None:
            return run in self.fanout.source.fed()
        return run == LISTING or self.watch.wants(run)

    def takes(self, message: Message) -> bool:
        """Whether ``message`` goes to this client now."""
        run = message.run
        if run in self.due:
            return False  # the run's snapshot, taken when it is written, will include it
        if self.watch is None:
            return run in self.fanout.source.fed()
        if message.spliced is None:
            return False
        if run == LISTING:
            return True
        return self.watch.draws(run) if message.topic == "board" else self.watch.wants(run)

    def key(self) -> int | tuple[int, frozenset[str]]:
        """Clients with the same key take the same messages: one joined write serves them all.

        Equal watches are one object (`Fanout.interned`), so with no snapshot due the key is an
        identity: no hashing of run sets per client per broadcast. Clients waiting for the same
        snapshots (a crowd connecting at once, all on the fast path meanwhile) share one too.
        """
        watch = id(self.watch)
        return (watch, frozenset(self.due)) if self.due else watch

    def set_watch(self, watch: Watch) -> None:
        """Take a ``watch`` message: runs newly watched get a snapshot; the first one switches to runs mode."""
        known = self.fanout.source.known()
        watch = self.fanout.interned(watch)
        if self.watch is None:
            self.due = {LISTING}
            self.queue.clear()
            self.latest.clear()
            added = watch.wanted(known)
        else:
            added = watch.wanted(known) - self.watch.wanted(known)
        self.watch = watch
        self.due = {run for run in self.due if self.wants(run)} | added
        if self.due:
            self.fast = False
            self.wake.set()

    def resync(self, run: str) -> None:
        """A fresh snapshot of ``run`` is due (a new trainer process, a run that appeared, its history loaded)."""
        if not self.wants(run):
            return
        self.due.add(run)
        self.queue = deque(m for m in self.queue if m.run != run)
        self.latest = {key: m for key, m in self.latest.items() if key[0] != run}
        self.fast = False
        self.wake.set()

    def push(self, message: Message) -> None:
        """Slow path: keep a message for the writer task (latest-wins or bounded queue)."""
        if message.topic in LATEST_WINS:
            key = (message.run, message.topic)
            if message.topic == "board" and key in self.latest:
                self.dropped += 1
            self.latest[key] = message
        elif len(self.queue) < self.fanout.limits.max_queue:
            self.queue.append(message)
        else:
            self.request_resync()
            return
        self.fast = False
        self.wake.set()

    def request_resync(self) -> None:
        """Replace whatever is queued by fresh snapshots of every run it follows; too many in a row disconnect."""
        self.resyncs += 1
        self.resyncs_in_a_row += 1
        if self.resyncs_in_a_row > self.fanout.limits.max_resyncs:
            self.fail(f"too slow: resynchronised {self.resyncs_in_a_row - 1} times without catching up")
            return
        self.due = {run for run in [LISTING, *self.fanout.source.known()] if self.wants(run)}
        self.fast = False
        self.queue.clear()
        self.latest.clear()
        self.wake.set()

    def fail(self, reason: str) -> None:
        """Stop serving this client now; its handler closes the connection with ``reason``."""
        if self.failure is None:
            self.failure = reason
            self.fanout.detach(self)
            if self.task is not None:
                self.task.cancel()

    async def write_loop(self) -> None:
        """The writer task: drain whatever the broadcast left, then hand back to the fast path."""
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                await self._write_pending()
                if not self.wake.is_set():
                    self.fast = True
                    self.resyncs_in_a_row = 0
        except TimeoutError:
            self.fail(f"send timeout: the client read nothing for {self.fanout.limits.send_timeout:g}s")
        except ConnectionError:
            self.fail("connection lost")

    async def _write_pending(self) -> None:
        """What was kept for the runs the client has, then the snapshots due, until nothing is left.

        While a snapshot waits for its turn in the byte budget (a crowd connecting at once waits
        seconds), the client is on the fast path: the runs it already has stay live, and the due
        one's messages are skipped (`takes`). A snapshot whose history is still loading waits
        without holding up other runs.
        """
        unready: set[str] = set()
        while True:
            if self.queue or self.latest:
                await self._write_kept()
                continue
            due = next(iter(self.due - unready), None)
            if due is None:
                return
            self.fast = True  # nothing kept: the broadcast may write, until the snapshot is taken
            parts = await self.fanout.budget.take(functools.partial(self._take_snapshot, due))
            if parts is None:
                unready.add(due)
            elif parts:
                await self._write_message(parts)

    async def _write_kept(self) -> None:
        """Everything kept (the queue in order, then the newest board and heartbeat of each run) in one write.

        One ``send`` per wake-up, as on the fast path, rather than one per message: a slow client
        costs no more system calls than a fast one.
        """
        frames = [m.frame(self.legacy) for m in self.queue]
        frames += [m.frame(self.legacy) for m in self.latest.values()]
        self.queue.clear()
        self.latest.clear()
        await self._write(b"".join(frames), count=len(frames))

    def _take_snapshot(self, run: str) -> tuple[bytes, ...] | None:
        """The snapshot of ``run`` now; from now on its messages go to this client again."""
        if run not in self.due:
            return ()  # no longer wanted (a new watch) while this client waited for its turn
        self.fanout.flush()  # messages published before this snapshot must not reach this client after it
        parts = self.fanout.source.snapshot(run, self.legacy)
        if parts is not None or run not in self.fanout.source.known():
            self.due.discard(run)
        if parts:
            self.fast = False  # the writer owns the transport until the snapshot's last fragment is out
        return parts

    async def _write_message(self, parts: tuple[bytes, ...]) -> None:
        """Write one large message as fragments, waiting for the client between them."""
        chunk = self.fanout.limits.chunk
        pieces = [memoryview(part)[i:i + chunk] for part in parts if part for i in range(0, len(part), chunk)]
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            await self._write(ws_frame(piece, TEXT if i == 0 else CONTINUATION, i == last), count=int(i == last))

    async def _write(self, frame: bytes, count: int = 1) -> None:
        """Write ``frame`` (``count`` messages), then wait until the client has read enough of what is buffered."""
        if self.ws.closed or self.transport.is_closing():
            raise ConnectionResetError("closed")
        self.transport.write(frame)
        self.sent += count
        async with asyncio.timeout(self.fanout.limits.send_timeout):
            await self.writer.drain()

    def stats(self) -> dict[str, Any]:
        return {"id": self.ident, "remote": self.remote, "fast": self.fast, "sent": self.sent,
                "dropped": self.dropped, "resyncs": self.resyncs, "ignored": self.ignored, "queued": len(self.queue),
                "buffered": self.transport.get_write_buffer_size(), "mode": "legacy" if self.legacy else "runs",
                "due": sorted(self.due)}


class Fanout:
    """Every connected client, and the broadcast that frames a message once for all of them."""

    def __init__(self, limits: Limits, source: Source) -> None:
        self.limits = limits
        self.source = source
        self.budget = SnapshotBudget(limits.snapshot_rate)
        self._clients: dict[int, Client] = {}
        self._all: tuple[Client, ...] = ()  # iteration order, rebuilt on attach/detach (rare)
        self._next_id = 0
        self._batch: list[Message] = []
        self._watches: dict[Watch, Watch] = {}
        self._flushed = -math.inf  # loop time of the last broadcast
        self.published = 0
        self.departed = {"sent": 0, "dropped": 0}  # counters of clients gone: /api/status totals are cumulative
        self.disconnected: dict[str, int] = {}

    def attach(self, ws: web.WebSocketResponse, writer: AbstractStreamWriter, request: web.Request) -> Client:
        """Register a prepared WebSocket; its first messages will be snapshots."""
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away during the handshake")
        transport.set_write_buffer_limits(high=self.limits.slow_bytes)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # without this, Linux lets a stalled reader absorb megabytes in the kernel
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.socket_bytes)
        self._next_id += 1
        client = Client(self._next_id, ws, writer, transport, request.remote, self)
        self._clients[client.ident] = client
        self._all = tuple(self._clients.values())
        return client

    def detach(self, client: Client) -> None:
        """Forget a client, keeping its counters and why it went (``left``: the browser closed or dropped it)."""
        if self._clients.pop(client.ident, None) is not None:
            self._all = tuple(self._clients.values())
            self.departed["sent"] += client.sent
            self.departed["dropped"] += client.dropped
            kind = "left" if client.failure is None else client.failure.split(":", 1)[0]
            self.disconnected[kind] = self.disconnected.get(kind, 0) + 1

    def interned(self, watch: Watch) -> Watch:
        """The one object of every watch equal to ``watch`` (the table is forgotten when it grows past `INTERNED`)."""
        if len(self._watches) >= INTERNED:
            self._watches.clear()  # only sharing is lost until clients send their next watch
        return self._watches.setdefault(watch, watch)

    def publish(self, run: str, topic: str, raw: bytes, spliced: bytes | None) -> None:
        """Queue one message of ``run`` for every client that takes it; it goes out with the next broadcast.

        Messages of one burst (a hub drains its socket without yielding), and every
        message within `Limits.flush_period` of the last broadcast, are written with
        one ``transport.write`` per client: the cost of a broadcast is a write per
        client, whatever it carries, so eight trainers' streams cost about what
        one does. A message that finds the fan-out idle goes out at once.
        """
        self._batch.append(Message(run, topic, raw, spliced))
        if len(self._batch) == 1:
            loop = asyncio.get_running_loop()
            due = self._flushed + self.limits.flush_period
            if due > loop.time():
                loop.call_at(due, self._flush)
            else:
                loop.call_soon(self._flush)

    def flush(self) -> None:
        """Broadcast what waits for the next broadcast now (a snapshot about to be taken already holds it)."""
        if self._batch:
            self._flush()

    def _flush(self) -> None:
        """Write the burst straight to every fast client; never awaits, never encodes per client."""
        self._flushed = asyncio.get_running_loop().time()
        batch, self._batch = self._batch, []
        if not batch:
            return  # `flush` sent it ahead of this scheduled broadcast
        limit = self.limits.slow_bytes
        self.published += len(batch)
        joined: dict[int, tuple[bytes, int]] = {}
        for client in self._all:
            transport = client.transport
            if client.fast and transport.get_write_buffer_size() <= limit and not (
                    client.ws.closed or transport.is_closing()):
                key = client.key()
                if key not in joined:
                    frames = [m.frame(client.legacy) for m in batch if client.takes(m)]
                    joined[key] = (b"".join(frames), len(frames))
                data, count = joined[key]
                if count:
                    transport.write(data)
                    client.sent += count
            else:
                for message in batch:
                    if client.takes(message):
                        client.push(message)

    def resync(self, run: str, legacy: bool = True) -> None:
        """Send a fresh snapshot of ``run`` to every client that follows it (a new trainer process, a new run).

        :param legacy: legacy clients too (not for a run that just appeared in the run list: they
            follow live trainers, and get a snapshot when one starts feeding a run).
        """
        for client in self._all:
            if legacy or not client.legacy:
                client.resyncs_in_a_row = 0
                client.resync(run)

    def ready(self, run: str) -> None:
        """``run``'s history has loaded: wake the clients whose snapshot of it waited.

        They stay on the fast path meanwhile: the writer task takes the transport only to write a snapshot.
        """
        for client in self._all:
            if run in client.due:
                client.wake.set()

    def clients(self) -> tuple[Client, ...]:
        return self._all

    def status(self, per_client: bool) -> dict[str, Any]:
        clients = self._all
        slow = sum(not c.fast for c in clients)
        status: dict[str, Any] = {
            "clients": len(clients), "slow": slow, "syncing": sum(bool(c.due) for c in clients),
            "published": self.published,
            "sent": self.departed["sent"] + sum(c.sent for c in clients),
            "dropped": self.departed["dropped"] + sum(c.dropped for c in clients),
            "buffered": sum(c.transport.get_write_buffer_size() for c in clients),
            "queued": sum(len(c.queue) for c in clients), "disconnected": self.disconnected,
        }
        if per_client:
            status["per_client"] = [c.stats() for c in clients]
        return status
