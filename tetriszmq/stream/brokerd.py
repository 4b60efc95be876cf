"""The broker process: it owns a trainer's PUB and REP sockets (started by `tetriszmq.stream.broker.Broker`).

Fed by the training process's outbox (a pipe: `tetriszmq.stream.broker.Outbox`), it:

- stamps each message with the envelope and the run's next ``seq`` (one thread assigns ``seq``, so it
  is gap-free and ordered across topics),
- publishes it on PUB (non-blocking; slow subscribers lose messages at the high-water mark, the
  trainer never waits),
- appends episodes, metrics and status to ``metrics.jsonl``,
- keeps the `RunHistory` that answers ``snapshot`` consistently with ``seq``,
- answers control requests on REP, even during a long SB3 update, and sends the training process
  what it must act on (a stop, pause, resume or save; a journal it cannot write) as a JSON line,
- given a ``relay``, also connects that PUB out to the relay's XSUB (one more pipe on the same
  socket: the cost per message does not change) and answers requests routed through the relay on a
  DEALER, saying hello with the run's ids at every heartbeat (`tetriszmq.stream.relay`),
- publishes a heartbeat every ``heartbeat_every`` seconds and a metrics message every
  ``metrics_every`` seconds (the latest counters and SB3 scalars, as the last hand-off told them),
  also while the training thread is busy in a long update, saving or paused,
- and, told that ``learn()`` was left without ending the run (an exception), publishes ``error``
  and closes its sockets, so a dead run never looks live and its ports are free again.

Its stdin is the training process's lifeline: end-of-file means that process is gone, and the broker
exits at once, as the whole trainer did when the broker was a thread.
"""

from __future__ import annotations

import math
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson
import zmq
from zmq.utils.monitor import recv_monitor_message

from tetriszmq.stream import protocol
from tetriszmq.stream.broker import (
    FRAME,
    METRICS_NOW,
    RECORD,
    RECORDS_CODE,
    SPEC_SIZE,
    STATE_CODE,
    TOPICS,
    BrokerSpec,
    _tell,
)
from tetriszmq.stream.history import RunHistory
from tetriszmq.stream.journal import open_for_append
from tetriszmq.stream.protocol import Command, ProtocolError, State, Topic
from tetriszmq.stream.relay import HANDSHAKE_FAILED, HELLO
from tetriszmq.stream.sockets import MAX_WIRE_REQUEST, bind
from tetriszmq.stream.state import TrainerState

READ_SIZE = 1 << 20  # bytes of hand-offs read per wake-up before the REP socket gets a turn
# No periodic metrics before training starts (a resumed run's counters are not loaded yet) or after it
# ended (`stopped` or `error` is a run's last journaled word).
_NOT_TRAINING = frozenset({State.STARTING, State.STOPPED, State.ERROR})
_JOURNALED = frozenset({Topic.STATUS, Topic.METRICS, Topic.EPISODE})
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)  # plain ints: send_multipart's flag-enum arithmetic was 1/3 of a send
_NOW = int(zmq.NOBLOCK)
_STDIN = 0


@dataclass
class RelayedState(TrainerState):
    """Training's state as the last hand-off told it; a request is also sent back to the training process."""

    report: IO[bytes] | None = None  # the pipe to the training process (`main`)

    def request(self, **flags: bool | str) -> None:
        super().request(**flags)
        self.tell({"request": flags})

    def request_stop(self, reason: str) -> None:
        """The training process keeps the first reason given, wherever it came from (a signal, a request)."""
        super().request(stop_requested=True, stop_reason=self.stop_reason or reason)
        self.tell({"stop": reason})

    def tell(self, word: dict[str, Any]) -> None:
        if self.report is not None:
            _tell(self.report, word)


class BrokerLoop:
    """See the module docstring; `run` until closed, abandoned, or the training process is gone."""

    def __init__(self, spec: BrokerSpec, report: IO[bytes] | None = None) -> None:
        self.spec = spec
        self.state = RelayedState(run=spec.run, lineage=spec.lineage, started=spec.started, report=report)
        self.history = RunHistory(spec.run, spec.history)
        self.ctx = zmq.Context.instance()
        self.dropped = 0  # the outbox's count, as the last hand-off told it
        self.abandoned: str | None = None  # why learn() ended without ending the run, once told
        self._uplink: zmq.Socket | None = None  # the DEALER to the relay's control side
        self._uplink_monitor: zmq.Socket | None = None  # its failed handshakes, said once on stderr
        self._refused = False
        self._hello = orjson.dumps({"run": spec.run, "lineage": spec.lineage or spec.run, "started": time.time()})
        self._prefixes = {topic: protocol.envelope_prefix(topic, spec.run) for topic in Topic}
        self._seq = 0
        self._sps_mark = (0, 0.0)  # timesteps and time that the next metrics' `sps` counts from
        self._stdin = b""
        self._inbox = bytearray()  # hand-offs read from the pipe, the last perhaps in part
        self._authenticator: Any = None

    def bind(self) -> tuple[zmq.Socket, zmq.Socket, IO[bytes] | None]:
        """PUB, REP and the journal; raises if any fails."""
        spec = self.spec
        pub = self.ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, spec.hwm)
        pub.setsockopt(zmq.LINGER, 0)
        rep = self.ctx.socket(zmq.REP)
        rep.setsockopt(zmq.MAXMSGSIZE, MAX_WIRE_REQUEST)
        rep.setsockopt(zmq.LINGER, 0)
        try:
            if spec.curve is not None:
                self._authenticator = spec.curve.start(self.ctx)
            for sock, endpoint in ((pub, spec.pub), (rep, spec.ctl)):
                if spec.curve is not None:
                    spec.curve.apply(sock)
                bind(sock, endpoint)
            self.state.endpoints = {"pub": _bound(pub), "ctl": _bound(rep)}
            if spec.relay is not None:
                self._uplink = self._dial(pub)
                self.state.endpoints["relay"] = spec.relay.side.stream
            journal = None if spec.journal is None else open_for_append(spec.journal)
        except BaseException:
            self._close(pub, rep, linger=0)
            raise
        return pub, rep, journal

    def run(self, pub: zmq.Socket, rep: zmq.Socket, journal: IO[bytes] | None) -> None:
        try:
            self._loop(pub, rep, journal)
        finally:
            pub.setsockopt(zmq.LINGER, 1000)
            self._close(rep, pub)
            if journal is not None:
                journal.close()

    def _close(self, *sockets: zmq.Socket, linger: int | None = None) -> None:
        for sock in (*sockets, self._uplink, self._uplink_monitor):
            if sock is not None:
                sock.close(linger=linger)
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None

    def _dial(self, pub: zmq.Socket) -> zmq.Socket:
        """Connect out to a relay: the same PUB (one more pipe, no cost per message) and a DEALER for control.

        After the binds, since connecting may change the socket's CURVE role from server to client.
        """
        relay = self.spec.relay
        dealer = self._uplink = self.ctx.socket(zmq.DEALER)  # closed by the caller if what follows fails
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.IMMEDIATE, 1)  # nothing queues for an absent relay: the next heartbeat says hello
        dealer.setsockopt(zmq.MAXMSGSIZE, MAX_WIRE_REQUEST)
        self._uplink_monitor = dealer.get_monitor_socket(HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        relay.dial(pub, relay.side.stream)
        relay.dial(dealer, relay.side.control)
        return dealer

    def _loop(self, pub: zmq.Socket, rep: zmq.Socket, journal: IO[bytes] | None) -> None:
        inbox = self.spec.inbox
        poller = zmq.Poller()
        for sock in (inbox, rep, _STDIN, self._uplink, self._uplink_monitor):
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        next_beat = time.monotonic()
        next_metrics = next_beat + self.spec.metrics_every
        self._sps_mark = (self.state.timesteps, next_beat)
        while True:
            now = time.monotonic()
            if now >= next_beat:
                if self._orphaned() or self._abandoned(pub, journal):
                    return
                self._publish_all(pub, journal, [(Topic.HEARTBEAT, self._heartbeat())])
                self._say_hello()
                next_beat = now + self.spec.heartbeat_every
            if now >= next_metrics:
                if self.state.state not in _NOT_TRAINING:
                    self._publish_all(pub, journal, [(Topic.METRICS, self._metrics(periodic=True))])
                next_metrics = now + self.spec.metrics_every
            events = dict(poller.poll(_poll_ms(min(next_beat, next_metrics) - now)))
            if inbox in events and not self._drain(inbox, pub, journal):
                return
            if _STDIN in events and not self._read_stdin():
                return
            if rep in events:
                self._answer(rep)
            if self._uplink is not None and self._uplink in events:
                self._answer_relayed(self._uplink)
            if self._uplink_monitor is not None and self._uplink_monitor in events:
                self._handshake(self._uplink_monitor)

    def _orphaned(self) -> bool:
        """The training process is gone, though its lifeline is held open (by a child it forked)."""
        return os.getppid() != self.spec.parent

    def _read_stdin(self) -> bool:
        """Take what the training process says; False once it is gone (end-of-file)."""
        chunk = os.read(_STDIN, 65536)
        if not chunk:
            return False
        *lines, self._stdin = (self._stdin + chunk).split(b"\n")
        for line in lines:
            self.abandoned = orjson.loads(line)["abandoned"]
        return True

    def _handshake(self, monitor: zmq.Socket) -> None:
        """Say on stderr, once until a handshake succeeds again, that the relay refused this trainer: it trains
        on, journaling, but no viewer of the relay sees it (ZeroMQ retries the handshake by itself)."""
        event = recv_monitor_message(monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._refused = False
        elif not self._refused:
            self._refused = True
            print(f"tetriszmq: {self.spec.relay.refusal(event)}", file=sys.stderr, flush=True)

    def _drain(self, inbox: int, pub: zmq.Socket, journal: IO[bytes] | None) -> bool:
        """Forward the hand-offs the pipe holds (up to `READ_SIZE` bytes); False once the close frame arrives, or
        the training process is gone."""
        chunk = os.read(inbox, READ_SIZE)
        self._inbox += chunk
        try:
            for batch in self._frames():
                if not batch:
                    return False
                self._publish_all(pub, journal, self._messages(batch))
        finally:
            if journal is not None:
                self._flush(journal)
        return bool(chunk)

    def _frames(self) -> Iterator[bytes]:
        """The whole hand-offs read so far, each taken out of the buffer (an empty one: the close frame)."""
        inbox, at = self._inbox, 0
        while len(inbox) - at >= FRAME.size:
            (size,) = FRAME.unpack_from(inbox, at)
            if len(inbox) - at - FRAME.size < size:
                break
            at += FRAME.size + size
            yield bytes(inbox[at - size:at])
            if not size:
                break
        del inbox[:at]

    def _messages(self, batch: bytes) -> Iterator[tuple[Topic, bytes]]:
        """A hand-off's messages; its state records update `state` on the way."""
        for code, body in _records(batch):
            if code == STATE_CODE:
                self._take_state(body)
            elif code == RECORDS_CODE:
                self.state.records = orjson.loads(body)
            else:
                yield TOPICS[code], body

    def _take_state(self, body: bytes) -> None:
        state = self.state
        (state_name, state.reason, state.timesteps, state.episodes, state.best_lines, state.can_save,
         self.dropped, state.scalars) = orjson.loads(body)
        state.state = State(state_name)

    def _abandoned(self, pub: zmq.Socket, journal: IO[bytes] | None) -> bool:
        """True (after publishing ``error``) once the training process said ``learn()`` ended without closing
        the run."""
        if self.abandoned is None:
            return False
        status = {**self.state.status(State.ERROR, self.abandoned), "t": time.time()}
        self._publish_all(pub, journal, [(Topic.STATUS, protocol.encode_body(status))])
        if journal is not None:
            self._flush(journal)
        return True

    def _publish_all(self, pub: zmq.Socket, journal: IO[bytes] | None, messages: Iterable[tuple[Topic, bytes]]) -> None:
        """Stamp a hand-off's messages, keep them in the history, journal them in one write, then send them.

        The sends come back to back, with no Python work between them: each message that finds libzmq's
        I/O thread asleep wakes it (a system call, and a wake-up).
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
        if topic is Topic.METRICS and body == METRICS_NOW:
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
            self.state.request(failure=f"cannot write {self.spec.journal}: {exc}")

    def _metrics(self, *, periodic: bool) -> bytes:
        """The latest counters and SB3 scalars; `sps` since the previous metrics message or state change.

        One asked for out of turn (at the end of training) keeps the previous `sps` if little
        time has passed: a few steps over a few milliseconds say nothing about speed.
        """
        state = self.state
        now, steps = time.monotonic(), state.timesteps
        steps_then, then = self._sps_mark
        if now > then and (periodic or now - then >= self.spec.metrics_every / 2):
            state.sps = (steps - steps_then) / (now - then)
            self._sps_mark = (steps, now)
            state.tell({"sps": state.sps})
        return protocol.encode_body({
            "timesteps": steps,
            "episodes": state.episodes,
            "sps": round(state.sps, 1),
            "dropped": self.dropped,
            "scalars": state.scalars,
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


def _bound(sock: zmq.Socket) -> str:
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def _poll_ms(seconds: float) -> int:
    """A poll timeout in whole milliseconds, rounded up.

    pyzmq truncates a float timeout, so a deadline less than 1 ms away meant ``poll(0)``: the loop
    spun until the deadline.
    """
    return max(0, math.ceil(seconds * 1000))


def _send_now(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Send or drop: a relay that is away or full gets the next hello, and a client retries."""
    try:
        sock.send_multipart(frames, zmq.NOBLOCK)
    except zmq.Again:
        pass


def _records(batch: bytes) -> Iterator[tuple[int, bytes]]:
    """The (code, body) records of one hand-off, in the order they were staged."""
    at = 0
    while at < len(batch):
        code, size = RECORD.unpack_from(batch, at)
        at += RECORD.size
        yield code, batch[at:at + size]
        at += size


def _read_spec() -> BrokerSpec:
    (size,) = SPEC_SIZE.unpack(_read_exactly(SPEC_SIZE.size))
    return pickle.loads(_read_exactly(size))


def _read_exactly(size: int) -> bytes:
    """``size`` bytes of stdin, unbuffered: what follows the spec is the loop's to read."""
    data = b""
    while len(data) < size:
        chunk = os.read(_STDIN, size - len(data))
        if not chunk:
            raise EOFError("the training process ended before it sent the broker's spec")
        data += chunk
    return data


def main() -> int:
    """Bind, say ``ready`` (or the error) on stdout, then serve until told to close or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the training process's to handle
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # likewise a kill of the process group
    report = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print (a library's) goes to stderr, not into the JSON lines
    loop = BrokerLoop(_read_spec(), report)
    try:
        sockets = loop.bind()
    except Exception as exc:
        _tell(report, {"error": str(exc)})
        return 1
    _tell(report, {"ready": {"endpoints": loop.state.endpoints}})
    loop.run(*sockets)
    # pyzmq leaves its context alone at exit: the last messages (the run's end) could die in libzmq's queues
    # with the process, unsent on a busy machine. Terminating waits for them, up to PUB's linger.
    loop.ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
