"""The viewer's ZeroMQ side: one hub per live trainer, owning that trainer's link.

The hub subscribes to a trainer's PUB stream and keeps what a late-joining
browser needs (`RunHistory`: last status and board, episodes, metrics). When
it sees a new run id, or a ``seq`` gap it cannot fill from the stream, it asks
the trainer's REP for a ``snapshot`` (the clone pattern) and merges it with
the live stream by ``seq``: messages that arrive meanwhile are held, then
released in order, so the history has no gaps and no duplicates.

Accepted messages go to a `Sink` (the fan-out) as the trainer's payload bytes;
the hub parses only the envelope's ``run`` and ``seq`` from them. Messages of
topics this viewer does not know (a newer trainer's) are counted and relayed
in their place in ``seq``, never treated as malformed: the protocol may add topics.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import orjson
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from tetriszmq.stream import protocol, relay
from tetriszmq.stream.control import NoReply, decode_reply, no_reply, req_socket
from tetriszmq.stream.history import RunHistory
from tetriszmq.stream.protocol import Command, ProtocolError, Topic
from tetriszmq.stream.security import ClientCurve

log = logging.getLogger("viewer.hub")

# The head `protocol.envelope_prefix` + `seal` give every payload; anything
# else takes the slow path through `protocol.decode_message`.
_ENVELOPE = re.compile(rb'\{"v":%d,"topic":"[a-z]+","run":"(%s)","seq":(\d+),'
                       % (protocol.VERSION, protocol.RUN_ID_PATTERN.pattern.encode()))
_TOPICS = frozenset(Topic)
_TOPIC_FRAME = re.compile(rb"([a-z][a-z0-9_]{0,39}):")  # any well-formed topic frame, known or not
_HISTORY_TOPICS = frozenset({Topic.STATUS, Topic.EPISODE, Topic.METRICS})
LATEST_WINS = frozenset({Topic.BOARD, Topic.HEARTBEAT})  # state, not history: only the newest matters
MAX_HELD = 20_000  # live messages held while a snapshot is in flight
RELAY_RELEARNS = 1.0  # s for a restarted relay to hear every trainer's hello again (they say it every 0.5 s)
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class Link(StrEnum):
    """What the viewer knows about its trainer, as the page shows it."""

    WAITING = "waiting"  # never heard from it since the viewer started
    ONLINE = "online"
    OFFLINE = "offline"  # heard before, but no message for `HubSettings.offline_after`


class Sink(Protocol):
    """Where accepted messages go (the fan-out)."""

    def publish(self, topic: str, payload: bytes) -> None: ...

    def resync_all(self) -> None: ...


@dataclass(frozen=True)
class HubSettings:
    trainer: str
    ctl: str
    history: int = 20_000
    offline_after: float = 3.0
    request_timeout: float = 2.0
    request_retries: int = 2
    curve: ClientCurve | None = None  # the trainer's public key and ours, for its SUB and REQ sockets
    run: str | None = None  # behind a relay (`trainer`, `ctl`: the relay's): the process run id requests name


def subscriber(ctx: zmq.asyncio.Context, settings: HubSettings) -> zmq.asyncio.Socket:
    """A SUB socket on every message of ``settings.trainer`` (a trainer's PUB or a relay's XPUB), not yet connected.

    ZMTP heartbeats notice a vanished peer (a killed relay, a trainer's host gone) so that it reconnects.
    """
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 10_000)
    sub.setsockopt(zmq.HEARTBEAT_IVL, 2000)
    sub.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    if settings.curve is not None:
        settings.curve.apply(sub)
    return sub


async def request(ctx: zmq.asyncio.Context, endpoint: str, cmd: Command | str, *, timeout: float,
                  retries: int, curve: ClientCurve | None = None, run: str | None = None) -> dict[str, Any]:
    """Send one control command with the lazy-pirate pattern and return the decoded reply.

    A REQ socket that lost its reply cannot send again, so every attempt uses a
    fresh socket that is closed without lingering. ``run``: the run it is for, through a relay.
    """
    payload = protocol.encode_request(cmd) if run is None else relay.encode_request(str(cmd), run)
    for _ in range(retries + 1):
        with req_socket(ctx, endpoint, curve) as sock:
            await sock.send(payload)
            if await sock.poll(int(timeout * 1000), zmq.POLLIN):
                return decode_reply(await sock.recv())
    raise no_reply(endpoint, retries, timeout)


@dataclass
class _Held:
    topic: Topic | str
    seq: int
    payload: bytes
    shown: bool = False


class Hub:
    """Latest status and board, the run's history, and the trainer link's health."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.sink: Sink
        self.ctx = zmq.asyncio.Context()
        self.history: RunHistory | None = None
        self.lineage: str | None = None  # the run the current process continues, once its snapshot or heartbeat said
        self.heartbeat: bytes | None = None
        self.link = Link.WAITING
        self.last_heard = 0.0
        self.handshake: str | None = None  # why the trainer's side refused our connection, if it did
        self.held: list[_Held] | None = None  # not None while a snapshot is in flight
        self.counters = {"messages": 0, "malformed": 0, "unknown_topics": 0, "gaps": 0, "snapshots": 0,
                         "snapshot_failures": 0}
        self._history_version = 0
        self._blobs: tuple[int, bytes, bytes] = (-1, b"[]", b"[]")
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshot_task: asyncio.Task[None] | None = None

    # Lifecycle -----------------------------------------------------------------

    async def start(self, sink: Sink) -> None:
        """Subscribe to the trainer; accepted messages go to ``sink`` from now on."""
        self.attach(sink)
        sub = subscriber(self.ctx, self.settings)
        monitor = sub.get_monitor_socket(HANDSHAKE_EVENTS)
        sub.connect(self.settings.trainer)
        curve = self.settings.curve is not None
        watching = watch_handshakes(monitor, self, "trainer", self.settings.trainer, curve=curve)
        self._tasks += [asyncio.create_task(self._receive(sub), name="hub-receive"),
                        asyncio.create_task(watching, name="hub-watch-handshakes")]

    def attach(self, sink: Sink) -> None:
        """Take the messages someone else receives (`on_frames`: a relay's one SUB for every trainer behind it)."""
        self.sink = sink
        self._tasks = [asyncio.create_task(self._watch_link(), name="hub-watch-link")]

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._snapshot_task] if self._snapshot_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.ctx.destroy(linger=0)

    async def control(self, cmd: Command) -> dict[str, Any]:
        """Forward one command to the trainer's REP and return its reply."""
        s = self.settings
        return await request(self.ctx, s.ctl, cmd, timeout=s.request_timeout, retries=s.request_retries,
                             curve=s.curve, run=s.run)

    # What late joiners need ----------------------------------------------------

    @property
    def run(self) -> str | None:
        return None if self.history is None else self.history.run

    def snapshot_parts(self) -> tuple[bytes, ...]:
        """The browser's ``snapshot`` message, in parts that are written as fragments.

        The episode and metric arrays are joined once per history version and
        shared by every client that joins meanwhile; nothing is re-encoded.
        """
        history = self.history
        head = orjson.dumps({
            "topic": "snapshot", "run": self.run, "seq": -1 if history is None else history.seq,
            "link": orjson.Fragment(self.link_message()),
            "status": _fragment(history and history.status), "board": _fragment(history and history.board),
            "heartbeat": _fragment(self.heartbeat),
        })
        episodes, metrics = self._history_blobs()
        return head[:-1] + b',"episodes":', episodes, b',"metrics":', metrics, b"}"

    def _history_blobs(self) -> tuple[bytes, bytes]:
        version, episodes, metrics = self._blobs
        if version != self._history_version:
            history = self.history
            episodes = b"[%s]" % b",".join(history.episodes) if history else b"[]"
            metrics = b"[%s]" % b",".join(history.metrics) if history else b"[]"
            self._blobs = (self._history_version, episodes, metrics)
        return episodes, metrics

    def history_after(self, seq: int) -> list[bytes]:
        """The history messages (status, episodes, metrics) past ``seq``, in seq order: what a run's series lacks."""
        history = self.history
        if history is None or history.seq <= seq:
            return []
        newer = [p for p in (history.status,) if p is not None and _seq_of(p) > seq]
        for items in (history.episodes, history.metrics):
            for payload in reversed(items):  # newest first: stop at the first one already had
                if _seq_of(payload) <= seq:
                    break
                newer.append(payload)
        return sorted(newer, key=_seq_of)

    def link_message(self) -> bytes:
        """The viewer's own ``link`` message: the trainer link's state, as browsers see it."""
        return orjson.dumps({"topic": "link", "state": str(self.link), "trainer": self.settings.trainer,
                             "run": self.run, "heard": self.last_heard or None})

    def status(self) -> dict[str, Any]:
        history = self.history
        return {
            "trainer": self.settings.trainer, "ctl": self.settings.ctl, "link": str(self.link),
            "last_heard": self.last_heard or None, "handshake": self.handshake, "run": self.run,
            "lineage": self.lineage,
            "seq": -1 if history is None else history.seq,  # as in the browsers' snapshot
            "episodes": 0 if history is None else len(history.episodes),
            "metrics": 0 if history is None else len(history.metrics),
            "syncing": self.held is not None, **self.counters,
        }

    # The stream ----------------------------------------------------------------

    async def _receive(self, sub: zmq.asyncio.Socket) -> None:
        try:
            while True:
                # A queued message completes the future at once: no loop turn per message.
                frames = await sub.recv_multipart()
                try:
                    self.on_frames(frames)
                except Exception:  # a bug with one message must not stop the relay
                    log.exception("failed to handle a %r message", frames[0][:40])
        finally:
            sub.close(linger=0)

    def on_frames(self, frames: list[bytes]) -> None:
        """Take one stream message; malformed ones are counted and dropped."""
        try:
            topic, run, seq = _envelope(frames)
        except ProtocolError as exc:
            self.counters["malformed"] += 1
            log.warning("dropped a malformed message: %s", exc)
            return
        self.counters["messages"] += 1
        if topic not in _TOPICS:
            self.counters["unknown_topics"] += 1
        self.last_heard = time.time()
        if run != self.run:
            self._start_run(run)
        if self.link is not Link.ONLINE:
            self._set_link(Link.ONLINE)
        if self.lineage is None and topic is Topic.HEARTBEAT:
            self._learn_lineage(frames[1])
        self._offer(topic, seq, frames[1])

    def _learn_lineage(self, heartbeat: bytes) -> None:
        """The lineage from a heartbeat, when the snapshot that would have said it failed (or is in flight).

        Known after the snapshot merged, it is news to the sink: the run may be another one than it took.
        """
        try:
            lineage = orjson.loads(heartbeat).get("lineage")
        except (orjson.JSONDecodeError, AttributeError):
            return  # a garbled heartbeat says nothing; the next one may
        self.lineage = lineage if isinstance(lineage, str) and lineage else self.run
        if self.held is None:
            self.sink.resync_all()

    def _offer(self, topic: Topic | str, seq: int, payload: bytes, shown: bool = False) -> None:
        """Accept the next message in ``seq`` order; hold it while a snapshot is due.

        ``shown``: a held board or heartbeat, already sent to browsers while it was held
        (only while a known run refills a gap: a new run's messages wait for its snapshot,
        so that no browser sees a run before that run's snapshot).
        """
        history = self.history
        assert history is not None
        if self.held is None and seq > history.seq + 1:
            self.counters["gaps"] += 1
            self._request_snapshot()
        if self.held is not None:
            if topic in LATEST_WINS and not shown and history.seq >= 0:
                self._show(topic, payload)  # boards stay live while the history syncs
            self._hold(topic, seq, payload)
        elif seq == history.seq + 1:
            self._accept(topic, seq, payload, shown)
        # else: already covered by a snapshot

    def _accept(self, topic: Topic | str, seq: int, payload: bytes, shown: bool) -> None:
        assert self.history is not None
        self.history.record(topic, seq, payload)
        if topic not in LATEST_WINS:
            self._history_version += 1  # the key of the cached snapshot arrays
        if not shown:
            self._show(topic, payload)

    def _show(self, topic: Topic | str, payload: bytes) -> None:
        if topic is Topic.HEARTBEAT:
            self.heartbeat = payload
        self.sink.publish(topic, payload)

    def _hold(self, topic: Topic | str, seq: int, payload: bytes) -> None:
        """Keep a live message until the snapshot lands; past the bound it is lost (a gap, refilled later)."""
        assert self.held is not None and self.history is not None
        if len(self.held) < MAX_HELD:
            self.held.append(_Held(topic, seq, payload, shown=topic in LATEST_WINS and self.history.seq >= 0))

    # Snapshots -----------------------------------------------------------------

    def _start_run(self, run: str) -> None:
        log.info("run %s: asking the trainer for its history", run)
        self.history = RunHistory(run, self.settings.history)
        self.lineage = self.heartbeat = None
        self._history_version += 1
        self._request_snapshot()

    def _request_snapshot(self) -> None:
        self.held = []
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
        self._snapshot_task = asyncio.create_task(self._snapshot(), name="hub-snapshot")

    async def _snapshot(self) -> None:
        reply = await self._ask_snapshot()
        self._snapshot_task = None
        history = self.history
        assert history is not None and self.held is not None
        new_run = history.seq < 0
        if reply.get("ok") and reply.get("run") == history.run and type(reply.get("seq")) is int:
            self.counters["snapshots"] += 1
            lineage = reply.get("lineage")
            self.lineage = lineage if isinstance(lineage, str) and lineage else history.run
            missed = self._merge(reply)
        else:
            self.counters["snapshot_failures"] += 1
            log.warning("no snapshot of run %s (%s); going on from the live stream", history.run,
                        reply.get("error") or "reply for another run")
            missed = []
            if self.held:  # accept the gap: the history resumes at the first held message
                history.seq = max(history.seq, self.held[0].seq - 1)
        self._release(missed, new_run)

    async def _ask_snapshot(self) -> dict[str, Any]:
        """The trainer's snapshot reply, or an ``ok: false`` one saying why there is none.

        Through a relay, asked again once if the relay does not know the run yet: a relay that
        restarted relearns its routes from the trainers' next hellos, and the stream comes back first.
        """
        reply = await self._try_snapshot()
        if self.settings.run and str(reply.get("error", "")).startswith("unknown run"):
            await asyncio.sleep(RELAY_RELEARNS)
            reply = await self._try_snapshot()
        return reply

    async def _try_snapshot(self) -> dict[str, Any]:
        try:
            return await self.control(Command.SNAPSHOT)
        except Exception as exc:  # noqa: BLE001  whatever failed, the held messages must go on
            return {"ok": False, "error": str(exc) if isinstance(exc, NoReply) else repr(exc)}

    def _merge(self, reply: dict[str, Any]) -> list[_Held]:
        """Fold a snapshot into the history; return what browsers have not seen, in seq order.

        After a gap in a known run, that is the snapshot's episodes, metrics and
        status past the history's ``seq``: the messages the stream lost.
        """
        assert self.history is not None
        old = self.history
        fresh = RunHistory(old.run, self.settings.history)
        items = sorted(_items(reply), key=lambda item: item.seq)
        for item in items:
            fresh.record(item.topic, item.seq, item.payload)
        fresh.seq = max(old.seq, reply["seq"])
        self.history = fresh
        self._history_version += 1
        return [item for item in items if item.seq > old.seq >= 0 and item.topic in _HISTORY_TOPICS]

    def _release(self, missed: list[_Held], new_run: bool) -> None:
        """Give browsers the merged history (a new run) or what the stream lost, then the held messages."""
        held, self.held = self.held or [], None
        if new_run:
            self.sink.resync_all()
        for item in missed:
            self.sink.publish(item.topic, item.payload)
        for item in held:
            self._offer(item.topic, item.seq, item.payload, item.shown)

    # Link health ---------------------------------------------------------------

    async def _watch_link(self) -> None:
        period = min(0.5, self.settings.offline_after / 3)
        while True:
            await asyncio.sleep(period)
            if self.link is Link.ONLINE and time.time() - self.last_heard > self.settings.offline_after:
                self._set_link(Link.OFFLINE)

    def _set_link(self, link: Link) -> None:
        self.link = link
        log.info("trainer %s is %s", self.settings.trainer, link)
        self.sink.publish("link", self.link_message())


def check_endpoints(*endpoints: str) -> None:
    """Refuse an endpoint ZeroMQ cannot connect to at start-up (ValueError), not at the first request."""
    ctx = zmq.Context()
    try:
        for endpoint in endpoints:
            with ctx.socket(zmq.REQ) as sock:
                sock.setsockopt(zmq.LINGER, 0)
                try:
                    sock.connect(endpoint)
                except zmq.ZMQError as exc:
                    raise ValueError(f"{endpoint!r} is not a ZeroMQ endpoint ({exc}); "
                                     "expected e.g. tcp://127.0.0.1:5555") from None
    finally:
        ctx.term()


def run_of(frames: list[bytes]) -> str | None:
    """The process run id a stream message names; None if it is malformed (how a relay's stream is told apart)."""
    try:
        return _envelope(frames)[1]
    except ProtocolError:
        return None


def _envelope(frames: list[bytes]) -> tuple[Topic | str, str, int]:
    """Topic, run and seq of a stream message, reading only the payload's head when it can."""
    if len(frames) != 2:
        raise ProtocolError(f"expected 2 frames, got {len(frames)}")
    topic = _topic(frames[0])
    head = _ENVELOPE.match(frames[1])
    if head is not None:
        return topic, head[1].decode(), int(head[2])
    payload = protocol.decode_payload(frames[1])
    run, seq = payload.get("run"), payload.get("seq")
    if not protocol.is_run_id(run) or type(seq) is not int:
        raise ProtocolError("payload lacks a valid run and seq")
    return topic, run, seq


def _seq_of(payload: bytes) -> int:
    head = _ENVELOPE.match(payload)
    return int(head[2]) if head is not None else protocol.decode_payload(payload)["seq"]


def _topic(frame: bytes) -> Topic | str:
    """The topic of a frame: a known `Topic`, or the name of one this viewer does not know."""
    try:
        return protocol.topic_of(frame)
    except ProtocolError:
        pass
    name = _TOPIC_FRAME.fullmatch(frame)
    if name is None:
        raise ProtocolError(f"malformed topic frame {frame[:40]!r}")
    return name[1].decode()


class Handshaking(Protocol):
    """Whoever keeps why its SUB's peer refused it: a `Hub`, or a relay's link."""

    handshake: str | None


async def watch_handshakes(monitor: zmq.asyncio.Socket, owner: Handshaking, whom: str, where: str, *,
                           curve: bool) -> None:
    """Keep in ``owner.handshake`` why the ``whom`` at ``where`` refused us (wrong or missing CURVE keys), logged
    once per change: otherwise that looks like silence. ``monitor``: the SUB's, for `HANDSHAKE_EVENTS`."""
    try:
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            problem = handshake_problem(event["event"], event["value"], curve=curve, whom=whom)
            if problem is not None and problem != owner.handshake:
                log.warning("%s %s: %s", whom, where, problem)
            owner.handshake = problem
    finally:
        monitor.close(linger=0)


def handshake_problem(event: int, value: int, *, curve: bool, whom: str = "trainer") -> str | None:
    """What a ZMTP handshake event means for the user; None when the handshake succeeded.

    :param curve: whether this viewer uses CURVE. Without it, a handshake that fails without
        detail (the trainer hung up first, as it may on a busy machine) is the mismatch too.
    :param whom: what the viewer connects to: ``trainer`` or ``relay``.
    """
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return None
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"the {whom} refused this viewer's CURVE key (ZAP status {value}: not on its --curve-allow list?)"
    mismatch = event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    if mismatch or (not curve and event != zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
        return (f"security mismatch: the {whom} uses CURVE and this viewer does not, or the reverse "
                "(--curve-server-key, --curve-secret-key); restart the viewer with matching options")
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return f"handshake protocol error {value:#x}"
    return f"the CURVE handshake failed: is --curve-server-key the {whom}'s public key?"


def _fragment(payload: bytes | None) -> orjson.Fragment | None:
    return None if payload is None else orjson.Fragment(payload)


def _items(reply: dict[str, Any]) -> Iterable[_Held]:
    """The snapshot's messages as payload bytes (re-encoded once; orjson keeps key order)."""
    singles = [reply.get("status"), reply.get("board")]
    for item in [*filter(None, singles), *reply.get("episodes", ()), *reply.get("metrics", ())]:
        if isinstance(item, dict) and isinstance(item.get("seq"), int) and item.get("topic") in _TOPICS:
            yield _Held(Topic(item["topic"]), item["seq"], orjson.dumps(item))

