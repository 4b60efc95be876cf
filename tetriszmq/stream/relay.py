"""The relay: trainers dial out to it, viewers and ``tetriszmq ctl`` dial in; it routes and keeps no run state.

Four bound sockets, two per side (ZeroMQ's proxy pattern, zguide chapter 2, "Dynamic Discovery"):

- stream: the trainers' PUB sockets connect to an XSUB, the viewers' SUB sockets to an XPUB, and
  `zmq.proxy_steerable` copies messages one way and subscriptions the other, in C, in its own
  thread. Messages pass byte for byte (the envelope already names its ``run``), so a viewer sees
  the trainers' own ``seq`` and fills any gap with ``snapshot`` as it would with a direct trainer.
- control: each trainer's DEALER connects to a ROUTER and says ``hello`` with its run, lineage and
  start time on every heartbeat (`Routes` says who may claim a run); clients' REQ (or DEALER)
  sockets connect to a second ROUTER and name the run in the request. The relay forwards the
  request to the trainer with the client's return address in front (the zguide's extended reply
  envelope) and the trainer sends it back with the reply. The relay notes which trainer owes which
  client a reply (`Owed`), and passes on only those: a trainer cannot answer a request it was not sent.

The state is the table of runs heard from in the last `expire` seconds, rebuilt from the
hellos within one heartbeat of a restart. Trainers and clients are let in by separate CURVE allow
folders (`RelayCurve`), so a client's key cannot register a run. Killing the relay loses no
training and no metrics (trainers journal their own), ZeroMQ reconnects both sides, and viewers
fill the gap with ``snapshot`` through the new relay.
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import zmq

from tetriszmq.stream import protocol
from tetriszmq.stream.protocol import ProtocolError
from tetriszmq.stream.security import ClientCurve, RelayCurve
from tetriszmq.stream.sockets import MAX_WIRE_REQUEST, bind, check_endpoints

HELLO = b"hello"  # first frame of a trainer's registration, [HELLO, {"run", "lineage", "started"}]
RUNS = "runs"  # the relay's own command: the runs it routes to
EXPIRE = 5.0  # s without a hello before a run is forgotten (trainers say hello every heartbeat, 0.5 s)
STREAM_HWM = 10_000  # messages per viewer: 10 s of 32 trainers' default streams (~1 KB each)
PING_MS, PING_TIMEOUT_MS = 1000, 3000  # ZMTP heartbeats: a peer gone without a FIN is noticed in 3 s
MAX_LISTED = 20  # runs named in an "unknown run" error
REPLY_WITHIN = 120.0  # s a trainer has to answer a request it was routed; a later reply is dropped
MAX_OWED = 100_000  # replies awaited at once; beyond, the oldest are forgotten (their clients time out)
# A run id's characters; longer, for the lineages of run names from before `RUN_NAME_MAX`
LINEAGE_PATTERN = re.compile(f"{protocol.RUN_ID_CHARS}{{1,120}}")


@dataclass(frozen=True)
class Side:
    """One side's two endpoints: stream (XSUB or XPUB) and control (ROUTER)."""

    stream: str
    control: str


def side(spec: str, what: str) -> Side:
    """``STREAM[,CONTROL]``; CONTROL defaults to STREAM's port + 1 (as the trainer pairs 5555 and 5556)."""
    stream, _, control = (part.strip() for part in spec.partition(","))
    if not control:
        parts = urlsplit(stream)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "tcp" or not port or port == 65535:  # port 0 would put CONTROL on port 1
            raise ValueError(f"{what} {spec!r}: give tcp://HOST:PORT (1 to 65534), or STREAM,CONTROL endpoints")
        control = f"tcp://{parts.netloc.rsplit(':', 1)[0]}:{port + 1}"
    try:
        check_endpoints(stream, control)
    except ValueError as exc:
        raise ValueError(f"{what} {spec!r}: {exc}") from None
    return Side(stream, control)


def encode_request(cmd: str, run: str | None) -> bytes:
    """A client's request through the relay: the trainer's request plus the ``run`` it is for."""
    return orjson.dumps({"cmd": cmd, "v": protocol.VERSION, **({"run": run} if run else {})})


@dataclass
class Route:
    """A trainer process the relay can reach through connection ``identity``; heard from at ``seen`` (monotonic).

    ``started``: the process's own start (wall clock, from its hello), which orders a lineage's processes.
    """

    run: str
    lineage: str
    identity: bytes
    started: float
    seen: float
    refused: bool = False  # another connection's claim on this run has been logged


class Routes:
    """Runs by process id and lineage, from the trainers' hellos; forgotten after `expire` s of silence.

    A run belongs to the connection whose hello named it first, for as long as that connection keeps
    saying hello: a second connection naming the same run (a copy of the run directory started twice,
    or a holder of a trainer key that wants the run's control) is ignored, and logged once. Identities
    are the relay's (ZeroMQ's per connection), so nobody can pose as another live connection.

    Every hello and request prunes the table, so routes are kept in the order they were last heard
    from: pruning pops silent ones from the old end and stops at the first live one, O(1) amortised
    instead of a scan of every run on each of a thousand trainers' two hellos a second.

    :param clock: monotonic seconds; tests pass their own.
    """

    def __init__(self, expire: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.expire = expire
        self.clock = clock
        self._by_run: OrderedDict[str, Route] = OrderedDict()  # least recently heard from first

    def hello(self, identity: bytes, raw: bytes) -> str | None:
        """Register (or refresh) the trainer behind ``identity``; a malformed hello is ignored.

        :return: why the hello was refused, the first time another connection claims a live run; else None.
        """
        try:
            hello = orjson.loads(raw)
            run, lineage, started = hello["run"], hello.get("lineage") or hello["run"], hello.get("started")
        except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
            return None
        if not (protocol.is_run_id(run) and isinstance(lineage, str) and LINEAGE_PATTERN.fullmatch(lineage)):
            return None
        self.prune()
        now = self.clock()
        route = self._by_run.get(run)
        if route is None:
            started = started if isinstance(started, (int, float)) and math.isfinite(started) else time.time()
            self._by_run[run] = Route(run, lineage, identity, float(started), now)
        elif route.identity == identity:
            route.seen = now
            self._by_run.move_to_end(run)
        elif not route.refused:
            route.refused = True
            return (f"ignoring hellos for run {protocol.quote(run)} from a second connection: the run is live on "
                    f"the connection that named it first, which keeps it until silent for {self.expire:g} s")
        return None

    def find(self, name: str) -> Route:
        """The route of a process run id, or of a lineage: its latest started live process.

        Not the last one heard from: an old process of the lineage still running says hello as often.
        Raises `ProtocolError` for a name it does not know.
        """
        self.prune()
        if name in self._by_run:
            return self._by_run[name]
        processes = [route for route in self._by_run.values() if route.lineage == name]
        if processes:
            return max(processes, key=lambda route: route.started)
        known = ", ".join(sorted(self._by_run)[:MAX_LISTED]) or "none"
        raise ProtocolError(f"unknown run {protocol.quote(name)}: the relay routes to {known} "
                            "(a process run id or a lineage)")

    def forget(self, route: Route) -> None:
        if self._by_run.get(route.run) is route:
            del self._by_run[route.run]

    def listing(self) -> list[dict[str, Any]]:
        self.prune()
        now = self.clock()
        return [{"run": r.run, "lineage": r.lineage, "seen": round(now - r.seen, 3)}
                for r in sorted(self._by_run.values(), key=lambda r: r.run)]

    def prune(self) -> None:
        cutoff = self.clock() - self.expire
        while self._by_run and next(iter(self._by_run.values())).seen < cutoff:
            self._by_run.popitem(last=False)


class Owed:
    """Which trainer connection owes which client a reply: only those replies are passed on.

    Client return addresses are the relay's ROUTER identities, which libzmq numbers in sequence: without
    this, a holder of a trainer key could send any client a reply it never asked that trainer for (a
    forged ``ok`` to a stop, a snapshot of junk). Entries expire after `REPLY_WITHIN` s, oldest first.

    :param clock: monotonic seconds; tests pass their own.
    """

    def __init__(self, within: float = REPLY_WITHIN, limit: int = MAX_OWED,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.within, self.limit, self.clock = within, limit, clock
        # (trainer, *address) -> [replies owed, deadline of the latest request]; least recently asked first
        self._due: OrderedDict[tuple[bytes, ...], list[float]] = OrderedDict()

    def expect(self, trainer: bytes, address: list[bytes]) -> None:
        """``trainer`` was sent a request from the client at ``address`` (its return frames, up to the empty one).

        A DEALER client may have several requests out to one trainer: each is owed its reply.
        """
        self._prune()
        key = (trainer, *address)
        due = self._due.setdefault(key, [0, 0.0])
        due[0] += 1
        due[1] = self.clock() + self.within
        self._due.move_to_end(key)
        while len(self._due) > self.limit:
            self._due.popitem(last=False)

    def settle(self, trainer: bytes, address: list[bytes]) -> bool:
        """True if ``trainer`` owes the client at ``address`` a reply (and one fewer from now on)."""
        self._prune()
        key = (trainer, *address)
        due = self._due.get(key)
        if due is None:
            return False
        due[0] -= 1
        if due[0] == 0:
            del self._due[key]
        return True

    def _prune(self) -> None:
        now = self.clock()
        while self._due and next(iter(self._due.values()))[1] < now:
            self._due.popitem(last=False)


class Relay:
    """Binds both sides and routes until `stop`; see the module docstring."""

    def __init__(self, trainers: Side, viewers: Side, *, curve: RelayCurve | None = None,
                 expire: float = EXPIRE) -> None:
        self.trainers, self.viewers = trainers, viewers
        self.curve = curve
        self.routes = Routes(expire)
        self.owed = Owed()
        self.ctx = zmq.Context()
        self._stopped = threading.Event()
        self._steer = f"inproc://tetriszmq-relay-steer-{id(self):x}"

    def serve(self, on_ready: Callable[[], None] = lambda: None) -> None:
        """Bind (then call ``on_ready``), relay until `stop` is called (from any thread), then close everything.

        Raises `OSError` if an endpoint cannot be bound, `SecurityError` for unusable keys.
        """
        sockets: list[zmq.Socket] = []
        auth = None
        try:
            auth = self.curve.start(self.ctx) if self.curve else None
            xsub, xpub, nodes, clients = self._bind(sockets)
            on_ready()
            proxy = threading.Thread(target=self._proxy, args=(xsub, xpub), name="tetriszmq-relay-stream",
                                     daemon=True)
            steer = self._socket(zmq.PAIR, sockets)
            steer.bind(self._steer)
            proxy.start()
            try:
                self._route(nodes, clients)
            finally:
                steer.send(b"TERMINATE")
                proxy.join()
        finally:
            for sock in sockets:
                sock.close(linger=0)
            if auth is not None:
                auth.stop()
            self.ctx.term()

    def stop(self) -> None:
        self._stopped.set()

    def _socket(self, kind: int, sockets: list[zmq.Socket]) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        return sock

    def _bind(self, sockets: list[zmq.Socket]) -> tuple[zmq.Socket, zmq.Socket, zmq.Socket, zmq.Socket]:
        xsub, xpub = self._socket(zmq.XSUB, sockets), self._socket(zmq.XPUB, sockets)
        nodes, clients = self._socket(zmq.ROUTER, sockets), self._socket(zmq.ROUTER, sockets)
        xsub.setsockopt(zmq.RCVHWM, STREAM_HWM)
        xpub.setsockopt(zmq.SNDHWM, STREAM_HWM)
        for router in (nodes, clients):
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unreachable trainer or client is an error, not silence
        clients.setsockopt(zmq.MAXMSGSIZE, MAX_WIRE_REQUEST)
        up, down = (self.curve.trainers, self.curve.viewers) if self.curve is not None else (None, None)
        pairs = ((xsub, self.trainers.stream, up), (nodes, self.trainers.control, up),
                 (xpub, self.viewers.stream, down), (clients, self.viewers.control, down))
        for sock, endpoint, keys in pairs:
            sock.setsockopt(zmq.HEARTBEAT_IVL, PING_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, PING_TIMEOUT_MS)
            if keys is not None:
                keys.apply(sock)
            bind(sock, endpoint)
        return xsub, xpub, nodes, clients

    def _proxy(self, xsub: zmq.Socket, xpub: zmq.Socket) -> None:
        steer = self.ctx.socket(zmq.PAIR)
        steer.connect(self._steer)
        try:
            zmq.proxy_steerable(xsub, xpub, None, steer)
        except zmq.ContextTerminated:
            pass
        finally:
            steer.close(linger=0)

    def _route(self, nodes: zmq.Socket, clients: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(nodes, zmq.POLLIN)
        poller.register(clients, zmq.POLLIN)
        while not self._stopped.is_set():
            events = dict(poller.poll(200))
            if nodes in events:
                self._from_trainer(nodes.recv_multipart(), clients)
            if clients in events:
                self._from_client(clients.recv_multipart(), nodes, clients)

    def _from_trainer(self, frames: list[bytes], clients: zmq.Socket) -> None:
        """A hello, or a reply to pass back: ``[identity, *return_address, b"", reply]``."""
        if len(frames) == 3 and frames[1] == HELLO:
            refused = self.routes.hello(frames[0], frames[2])
            if refused is not None:
                print(f"tetriszmq relay: {refused}", file=sys.stderr, flush=True)
        elif len(frames) >= 4 and b"" in frames[2:]:
            address = frames[1:frames.index(b"", 2) + 1]
            if self.owed.settle(frames[0], address):
                _send(clients, frames[1:])

    def _from_client(self, frames: list[bytes], nodes: zmq.Socket, clients: zmq.Socket) -> None:
        """``[*return_address, b"", request]``: answer it here, or forward it to the run it names."""
        if b"" not in frames:
            return  # no return address to answer to
        at = frames.index(b"")
        address, body = frames[:at + 1], frames[at + 1:]
        try:
            forward = self._forward(body)
        except ProtocolError as exc:
            _send(clients, [*address, protocol.error_reply(str(exc))])
            return
        if isinstance(forward, bytes):
            _send(clients, [*address, forward])
            return
        route, request = forward
        if _send(nodes, [route.identity, *address, request]):
            self.owed.expect(route.identity, address)
        else:
            self.routes.forget(route)
            _send(clients, [*address, protocol.error_reply(
                f"run {protocol.quote(route.run)} is not connected to the relay any more")])

    def _forward(self, body: list[bytes]) -> bytes | tuple[Route, bytes]:
        """The relay's own reply, or the route and the request to forward (without its ``run``)."""
        if len(body) != 1:
            raise ProtocolError(f"expected 1 frame, got {len(body)}")
        request = protocol.decode_request(body[0], {"cmd", "v", "run"})
        if request.get("cmd") == RUNS and "run" not in request:
            return protocol.ok_reply({"runs": self.routes.listing()})
        run = request.pop("run", None)
        if not isinstance(run, str):
            raise ProtocolError(f'a request through the relay names its "run" (a string), got '
                                f'{protocol.json_type(run) if run is not None else "none"}; '
                                f'{{"cmd": "{RUNS}"}} lists them')
        route = self.routes.find(run)
        try:
            return route, orjson.dumps(request)
        except orjson.JSONEncodeError as exc:  # an integer beyond 64 bits: the trainer could not take it either
            raise ProtocolError(f"request cannot be forwarded: {exc}") from None


def _send(sock: zmq.Socket, frames: Iterable[bytes]) -> bool:
    """Send without waiting; False if the peer is gone or full (ROUTER_MANDATORY says which, we need not)."""
    try:
        sock.send_multipart(list(frames), zmq.NOBLOCK)
    except zmq.ZMQError as exc:
        if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
            raise
        return False
    return True


@dataclass(frozen=True)
class Uplink:
    """A trainer's way out to a relay: the relay's trainers side, and CURVE client keys if it has them."""

    side: Side
    curve: ClientCurve | None = None

    def dial(self, sock: zmq.Socket, endpoint: str) -> None:
        """Connect ``sock`` as a CURVE client (or in the clear), whatever it was bound as before."""
        sock.setsockopt(zmq.HEARTBEAT_IVL, PING_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, PING_TIMEOUT_MS)
        if self.curve is not None:
            self.curve.apply(sock)
        else:
            sock.curve_server = False  # the mechanism of a later connect: NULL, even after a CURVE bind
        sock.connect(endpoint)

    def refusal(self, event: int) -> str:
        """What a failed handshake with the relay (a socket monitor's ``event``) tells the trainer's user."""
        where = f"the relay at {self.side.control}"
        if self.curve is None:
            return (f"{where} failed the handshake: a relay that uses CURVE needs --curve-server-key (its public "
                    "key) and --curve-secret-key (a key its --curve-allow-trainers folder lets in)")
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return f"{where} refused this trainer's CURVE key: is its public key in the relay's --curve-allow-trainers?"
        return f"the handshake with {where} failed: is --curve-server-key the relay's public key?"


HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
