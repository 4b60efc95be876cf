"""The trainer's I/O thread: it owns the PUB and REP sockets.

The training thread never touches the network. It stages ``(topic, body)``
pairs (`Outbox.stage`, an orjson encode and a list append) and hands them over
as one frame on an inproc PUSH socket (`Outbox.flush`, a few microseconds,
never blocking). Each hand-off wakes the broker thread, and every ZMQ call it
then makes releases and retakes the GIL, taking it back from the training
thread each time. So the callback flushes on a fixed cadence (30 per second)
rather than per message, and a batch travels as a single frame. The broker
thread, fed by the matching PULL socket:

- stamps each message with the envelope and the run's next ``seq`` (one
  thread assigns ``seq``, so it is gap-free and ordered across topics),
- publishes it on PUB (non-blocking; slow subscribers lose messages at the
  high-water mark, the trainer never waits),
- appends episodes, metrics and status to ``metrics.jsonl``,
- keeps the `RunHistory` that answers ``snapshot`` consistently with ``seq``,
- answers control requests on REP, even during a long SB3 update,
- given a ``relay``, also connects that PUB out to the relay's XSUB (one more pipe on the same
  socket: the cost per message does not change) and answers requests routed through the relay on a
  DEALER, saying hello with the run's ids at every heartbeat (`tetriszmq.stream.relay`),
- publishes a heartbeat every ``heartbeat_every`` seconds and a metrics
  message every ``metrics_every`` seconds (the latest counters and SB3
  scalars from `TrainerState`), also while the training thread is busy in a
  long update, saving or paused,
- and, given a ``watch``, notices a training thread that left ``learn()``
  without ending the run (an exception): it publishes ``error`` and closes its
  sockets, so a dead run never looks live and its ports are free again.
"""

from __future__ import annotations

import math
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import zmq
from zmq.utils.monitor import recv_monitor_message

from tetriszmq.stream import protocol
from tetriszmq.stream.history import RunHistory
from tetriszmq.stream.journal import open_for_append
from tetriszmq.stream.protocol import Command, ProtocolError, State, Topic
from tetriszmq.stream.relay import HANDSHAKE_FAILED, HELLO, Uplink
from tetriszmq.stream.sockets import MAX_WIRE_REQUEST, bind
from tetriszmq.stream.state import TrainerState

_CLOSE = b""  # a flush never sends an empty batch
_METRICS_NOW = b""  # a metrics record without a body: the broker builds one now (`Outbox.stage_metrics`)
_TOPICS = tuple(Topic)
_CODES = {topic: code for code, topic in enumerate(_TOPICS)}
_RECORD = struct.Struct("<BI")  # one staged message: topic code, body length; then the body
_BATCH = 256  # hand-offs drained per wake-up before the REP socket gets a turn
# No periodic metrics before training starts (a resumed run's counters are not loaded yet) or after it
# ended (`stopped` or `error` is a run's last journaled word).
_NOT_TRAINING = frozenset({State.STARTING, State.STOPPED, State.ERROR})
_JOURNALED = frozenset({Topic.STATUS, Topic.METRICS, Topic.EPISODE})
SWITCH_INTERVAL = 0.001  # s; with CPython's 5 ms a real trainer's board p99 was 19.8 ms on a busy 2-core box, now 9.5
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)  # plain ints: send_multipart's flag-enum arithmetic was 1/3 of a send
_NOW = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)  # `EVENTS & zmq.POLLIN` built an enum member at every hand-off

SocketSetup = Callable[[zmq.Socket, str], None]
Watch = Callable[[], "str | None"]  # None while training goes on; else why the run is over


class Outbox:
    """The training thread's end of the pipe to the broker; one per thread."""

    def __init__(self, ctx: zmq.Context, address: str, hwm: int) -> None:
        self._sock = ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.LINGER, 2000)
        self._sock.connect(address)
        self._staged: list[bytes] = []  # record header, body, record header, body, ...
        self.dropped = 0

    def stage(self, topic: Topic, fields: dict[str, Any]) -> None:
        """Encode one message, stamped now, for the next `flush`."""
        fields["t"] = time.time()
        body = protocol.encode_body(fields)
        self._staged += (_RECORD.pack(_CODES[topic], len(body)), body)

    def flush(self) -> None:
        """Hand everything staged to the broker at once; drops (and counts) instead of blocking."""
        if not self._staged:
            return
        try:
            self._sock.send(b"".join(self._staged), zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += len(self._staged) // 2
        self._staged = []

    def stage_metrics(self) -> None:
        """Ask for a metrics message now, in order with what is staged (the broker builds it)."""
        self._staged += (_RECORD.pack(_CODES[Topic.METRICS], 0), _METRICS_NOW)

    def post(self, topic: Topic, fields: dict[str, Any]) -> None:
        """Stage one message and flush now, with whatever was staged before it."""
        self.stage(topic, fields)
        self.flush()

    def close_broker(self, timeout: float) -> bool:
        """Ask the broker to finish, after everything staged or posted before this; False if it could not be told.

        Waits at most ``timeout`` seconds for room in the pipe: a broker thread that has died
        reads nothing, and a blocking send would hang the caller's shutdown forever.
        """
        self.flush()
        told = False
        if self._sock.poll(int(timeout * 1000), zmq.POLLOUT):
            try:
                self._sock.send(_CLOSE, zmq.NOBLOCK)
                told = True
            except zmq.Again:
                pass
        self._sock.close(linger=int(timeout * 1000) if told else 0)
        return told


class Broker:
    """Runs the I/O thread; see the module docstring."""

    def __init__(
        self,
        state: TrainerState,
        pub: str,
        ctl: str,
        *,
        hwm: int = 1000,
        history: int = 20000,
        journal: Path | None = None,
        heartbeat_every: float = 0.5,
        metrics_every: float = 1.0,
        setup_socket: SocketSetup | None = None,
        relay: Uplink | None = None,
    ) -> None:
        self.state = state
        self.pub_endpoint, self.ctl_endpoint = pub, ctl
        self.hwm = hwm
        self.history = RunHistory(state.run, history)
        self.journal_path = journal
        self.heartbeat_every = heartbeat_every
        self.metrics_every = metrics_every
        self.setup_socket = setup_socket
        self.relay = relay
        self._uplink: zmq.Socket | None = None  # the DEALER to the relay's control side (broker thread)
        self._uplink_monitor: zmq.Socket | None = None  # its failed handshakes, said once on stderr
        self._refused = False
        self._hello = orjson.dumps({"run": state.run, "lineage": state.lineage or state.run, "started": time.time()})
        self.watch: Watch | None = None  # set by the owner of the training thread, read at heartbeats
        self.ctx = zmq.Context.instance()
        self.address = f"inproc://tetriszmq-broker-{id(self):x}"
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tetriszmq-broker", daemon=True)
        self._prefixes = {topic: protocol.envelope_prefix(topic, state.run) for topic in Topic}
        self._seq = 0
        self._sps_mark = (0, 0.0)  # timesteps and time that the next metrics' `sps` counts from
        self._switch_interval = 0.0  # the interpreter's, to restore at close; 0: not changed
        self.outbox: Outbox

    def start(self) -> None:
        """Bind the sockets and start the thread; raises if an endpoint cannot be bound.

        The calling thread gets ``self.outbox``, its end of the pipe. Also lowers the
        interpreter's switch interval to `SWITCH_INTERVAL` until `close` (it is process-wide):
        a training thread never waits, so each time the broker thread wants the GIL it waits
        out a whole interval, several times per board.
        """
        self.outbox = Outbox(self.ctx, self.address, self.hwm * 10)  # inproc: connecting before the bind is fine
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self.outbox.close_broker(0)
            raise self._error
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(SWITCH_INTERVAL)

    def set_state(self, new: State, reason: str = "") -> None:
        """Change the trainer's state and announce it (from the thread that started the broker)."""
        self.state.state, self.state.reason = new, reason
        self.outbox.post(Topic.STATUS, self.state.status(new, reason))

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        """Publish everything posted so far, then stop the thread (from the starting thread).

        Bounded by ``timeout`` even if the thread has died; restores the switch interval.
        """
        if self.outbox.close_broker(timeout if self.running else 0):
            self._thread.join(timeout)
        if self._switch_interval and sys.getswitchinterval() == SWITCH_INTERVAL:
            sys.setswitchinterval(self._switch_interval)
        self._switch_interval = 0.0

    def _run(self) -> None:
        try:
            sockets = self._bind()
        except BaseException as exc:  # reported to start() in the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        pull, pub, rep, journal = sockets
        try:
            self._loop(pull, pub, rep, journal)
        finally:
            pub.setsockopt(zmq.LINGER, 1000)
            for sock in (pull, rep, pub, self._uplink, self._uplink_monitor):
                if sock is not None:
                    sock.close()
            if journal is not None:
                journal.close()

    def _bind(self) -> tuple[zmq.Socket, zmq.Socket, zmq.Socket, IO[bytes] | None]:
        pull = self.ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, self.hwm * 10)
        pull.bind(self.address)
        pub = self.ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, self.hwm)
        pub.setsockopt(zmq.LINGER, 0)
        rep = self.ctx.socket(zmq.REP)
        rep.setsockopt(zmq.MAXMSGSIZE, MAX_WIRE_REQUEST)
        rep.setsockopt(zmq.LINGER, 0)
        try:
            for sock, endpoint in ((pub, self.pub_endpoint), (rep, self.ctl_endpoint)):
                if self.setup_socket is not None:
                    self.setup_socket(sock, endpoint)
                bind(sock, endpoint)
            self.state.endpoints = {
                "pub": pub.getsockopt_string(zmq.LAST_ENDPOINT),
                "ctl": rep.getsockopt_string(zmq.LAST_ENDPOINT),
            }
            if self.relay is not None:
                self._uplink = self._dial(self.relay, pub)
                self.state.endpoints["relay"] = self.relay.side.stream
            journal = None if self.journal_path is None else open_for_append(self.journal_path)
        except BaseException:
            for sock in (pull, pub, rep, self._uplink, self._uplink_monitor):
                if sock is not None:
                    sock.close(linger=0)
            raise
        return pull, pub, rep, journal

    def _dial(self, relay: Uplink, pub: zmq.Socket) -> zmq.Socket:
        """Connect out to a relay: the same PUB (one more pipe, no cost per message) and a DEALER for control.

        After the binds, since connecting may change the socket's CURVE role from server to client.
        """
        dealer = self._uplink = self.ctx.socket(zmq.DEALER)  # closed by the caller if what follows fails
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.IMMEDIATE, 1)  # nothing queues for an absent relay: the next heartbeat says hello
        dealer.setsockopt(zmq.MAXMSGSIZE, MAX_WIRE_REQUEST)
        self._uplink_monitor = dealer.get_monitor_socket(HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        relay.dial(pub, relay.side.stream)
        relay.dial(dealer, relay.side.control)
        return dealer

    def _loop(self, pull: zmq.Socket, pub: zmq.Socket, rep: zmq.Socket, journal: IO[bytes] | None) -> None:
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(rep, zmq.POLLIN)
        if self._uplink is not None:
            poller.register(self._uplink, zmq.POLLIN)
            poller.register(self._uplink_monitor, zmq.POLLIN)
        next_beat = time.monotonic()
        next_metrics = next_beat + self.metrics_every
        self._sps_mark = (self.state.timesteps, next_beat)
        while True:
            now = time.monotonic()
            if now >= next_beat:
                if self._abandoned(pub, journal):
                    return
                self._publish(pub, journal, Topic.HEARTBEAT, self._heartbeat())
                self._say_hello()
                next_beat = now + self.heartbeat_every
            if now >= next_metrics:
                if self.state.state not in _NOT_TRAINING:
                    self._publish(pub, journal, Topic.METRICS, self._metrics(periodic=True))
                next_metrics = now + self.metrics_every
            events = dict(poller.poll(_poll_ms(min(next_beat, next_metrics) - now)))
            if pull in events and not self._drain(pull, pub, journal):
                return
            if rep in events:
                self._answer(rep)
            if self._uplink is not None and self._uplink in events:
                self._answer_relayed(self._uplink)
            if self._uplink_monitor is not None and self._uplink_monitor in events:
                self._handshake(self._uplink_monitor)

    def _handshake(self, monitor: zmq.Socket) -> None:
        """Say on stderr, once until a handshake succeeds again, that the relay refused this trainer: it trains
        on, journaling, but no viewer of the relay sees it (ZeroMQ retries the handshake by itself)."""
        event = recv_monitor_message(monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._refused = False
        elif not self._refused:
            self._refused = True
            print(f"tetriszmq: {self.relay.refusal(event)}", file=sys.stderr, flush=True)

    def _drain(self, pull: zmq.Socket, pub: zmq.Socket, journal: IO[bytes] | None) -> bool:
        """Forward up to `_BATCH` hand-offs of staged messages; False once the close sentinel arrives."""
        try:
            for _ in range(_BATCH):
                batch = pull.recv(zmq.NOBLOCK)
                if batch == _CLOSE:
                    return False
                self._publish_all(pub, journal, _records(batch))
                if not pull.get(zmq.EVENTS) & _POLLIN:  # holds the GIL, unlike a recv ending in Again
                    break
        except zmq.Again:
            pass
        finally:
            if journal is not None:
                self._flush(journal)
        return True

    def _abandoned(self, pub: zmq.Socket, journal: IO[bytes] | None) -> bool:
        """True (after publishing ``error``) if the watch says training ended without closing the run.

        ``state.state`` is the training thread's to write (`TrainerState`); this run sends nothing after this.
        """
        reason = self.watch() if self.watch is not None else None
        if reason is None:
            return False
        self._publish(pub, journal, Topic.STATUS,
                      protocol.encode_body({**self.state.status(State.ERROR, reason), "t": time.time()}))
        if journal is not None:
            self._flush(journal)
        return True

    def _publish(self, pub: zmq.Socket, journal: IO[bytes] | None, topic: Topic, body: bytes) -> None:
        self._publish_all(pub, journal, [(topic, body)])

    def _publish_all(self, pub: zmq.Socket, journal: IO[bytes] | None, messages: Iterable[tuple[Topic, bytes]]) -> None:
        """Stamp a hand-off's messages, keep them in the history, journal them in one write, then send them.

        The sends come back to back, with no Python work between them: each message that finds libzmq's
        I/O thread asleep wakes it (a system call, and a wake-up on a CPU that may be training's).
        """
        stamped = [self._stamp(topic, body) for topic, body in messages]
        if journal is not None:
            lines = [payload for topic, payload in stamped if topic in _JOURNALED]
            if lines:
                self._write(journal, b"\n".join(lines) + b"\n")
        for topic, payload in stamped:
            try:
                pub.send(protocol.TOPIC_FRAMES[topic], _MORE)
                pub.send(payload, _NOW)
            except zmq.Again:
                pass  # PUB drops for slow subscribers by design

    def _stamp(self, topic: Topic, body: bytes) -> tuple[Topic, bytes]:
        """One message with its envelope and the next ``seq``, kept in the history."""
        if topic is Topic.METRICS and body == _METRICS_NOW:
            body = self._metrics(periodic=False)
        elif topic is Topic.STATUS:  # `sps` counts from a state change: paused time is not training speed
            self._sps_mark = (self.state.timesteps, time.monotonic())
        self._seq += 1
        payload = protocol.seal(self._prefixes[topic], self._seq, body)
        self.history.record(topic, self._seq, payload)
        return topic, payload

    def _write(self, journal: IO[bytes], line: bytes) -> None:
        self._journal_io(journal.write, line)

    def _flush(self, journal: IO[bytes]) -> None:
        self._journal_io(journal.flush)

    def _journal_io(self, operation: Callable[..., object], *args: bytes) -> None:
        """A journal write or flush; a failure ends training instead of silently losing metrics."""
        try:
            operation(*args)
        except OSError as exc:
            self.state.request(failure=f"cannot write {self.journal_path}: {exc}")

    def _metrics(self, *, periodic: bool) -> bytes:
        """The latest counters and SB3 scalars; `sps` since the previous metrics message or state change.

        One asked for out of turn (at the end of training) keeps the previous `sps` if little
        time has passed: a few steps over a few milliseconds say nothing about speed.
        """
        state = self.state
        now, steps = time.monotonic(), state.timesteps
        steps_then, then = self._sps_mark
        if now > then and (periodic or now - then >= self.metrics_every / 2):
            state.sps = (steps - steps_then) / (now - then)
            self._sps_mark = (steps, now)
        return protocol.encode_body({
            "timesteps": steps,
            "episodes": state.episodes,
            "sps": round(state.sps, 1),
            "dropped": self.outbox.dropped,
            "scalars": state.scalars.copy(),  # one C call under the GIL: the training thread cannot interleave
            "t": time.time(),
        })

    def _heartbeat(self) -> bytes:
        beat = self.state.summary()
        del beat["run"], beat["endpoints"]  # the run is in the envelope; endpoints are for `status`
        beat["t"] = time.time()
        return protocol.encode_body(beat)

    def _answer(self, rep: zmq.Socket) -> None:
        """Reply to exactly one request, whatever it holds, so REP never gets stuck."""
        rep.send(self._reply(rep.recv_multipart()))

    def _say_hello(self) -> None:
        """Tell the relay (if any, and connected) which run it reaches here; it forgets runs that stop saying so."""
        if self._uplink is not None:
            _send_now(self._uplink, [HELLO, self._hello])

    def _answer_relayed(self, dealer: zmq.Socket) -> None:
        """A request through the relay, ``[*return_address, b"", request]``: the reply goes back with the address."""
        frames = dealer.recv_multipart()
        if b"" in frames:
            at = frames.index(b"")
            _send_now(dealer, [*frames[:at + 1], self._reply(frames[at + 1:])])

    def _reply(self, frames: list[bytes]) -> bytes:
        try:
            reply = protocol.ok_reply(self._execute(protocol.parse_request(frames)))
        except ProtocolError as exc:
            reply = protocol.error_reply(str(exc))
        except Exception as exc:  # a bug must not wedge the control socket
            reply = protocol.error_reply(f"internal error: {type(exc).__name__}: {exc}")
        return reply

    def _execute(self, cmd: Command) -> dict[str, Any]:
        state = self.state
        if cmd is Command.STATUS:
            return state.summary()
        if cmd is Command.SNAPSHOT:
            kept = {} if state.records is None else {"records": state.records}
            return {**self.history.snapshot(), "lineage": state.lineage or state.run, **kept}
        if cmd is Command.STOP:
            state.request_stop("stop requested")
            return {"state": str(State.STOPPING)}
        if cmd is Command.PAUSE:
            state.request(paused=True)
            return {"state": str(State.PAUSED)}
        if cmd is Command.RESUME:
            state.request(paused=False)
            return {"state": str(State.RUNNING)}
        if not state.can_save:
            raise ProtocolError("this trainer has no checkpoint directory; save is unavailable")
        state.request(save_requested=True)
        return {"state": str(State.SAVING)}


def _poll_ms(seconds: float) -> int:
    """A poll timeout in whole milliseconds, rounded up.

    pyzmq truncates a float timeout, so a deadline less than 1 ms away meant ``poll(0)``: the thread
    spun until the deadline, and every call released and retook the GIL from the training thread.
    """
    return max(0, math.ceil(seconds * 1000))


def _send_now(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Send or drop: a relay that is away or full gets the next hello, and a client retries."""
    try:
        sock.send_multipart(frames, zmq.NOBLOCK)
    except zmq.Again:
        pass


def _records(batch: bytes) -> Iterator[tuple[Topic, bytes]]:
    """The (topic, body) pairs of one hand-off, in the order they were staged."""
    at = 0
    while at < len(batch):
        code, size = _RECORD.unpack_from(batch, at)
        at += _RECORD.size
        yield _TOPICS[code], batch[at:at + size]
        at += size
