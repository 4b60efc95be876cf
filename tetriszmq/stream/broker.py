"""The training process's end of the stream: an outbox, and the broker process that owns the sockets.

The training thread never touches the network. It stages ``(topic, body)`` pairs (`Outbox.stage`,
an orjson encode and a list append) and hands them over, 30 times a second, as one frame on a pipe
(`Outbox.flush`, one system call, never blocking). At the other end is a process of its
own (`tetriszmq.stream.brokerd`), which publishes, journals, keeps the late joiners' history and
answers control requests. A thread in this process would share the GIL with training: each
hand-off woke it, it took the GIL, and on a 2-core machine the two traded it (or the woken thread
took training's CPU) for 1-3% of training's time. A process shares nothing but the pipe.

What the broker process needs to know of training (counters, state, the SB3 scalars) rides in
every hand-off as one more record (`Outbox.flush`); what it must tell training (a control request,
the measured speed) comes back as JSON lines on its stdout, read by a small thread here
(`Broker._listen`) that sets `TrainerState`'s flags and, at heartbeat rate, asks the ``watch``
whether ``learn()`` was left without ending the run.

The broker process lives exactly as long as this one wants it: it ends on `Broker.close`, and
when this process dies (even by kill -9) its stdin reaches end-of-file and it exits at once,
freeing the ports. It ignores Ctrl-C and SIGTERM, which a terminal or a process-group kill sends
to both: this process's own handlers decide how the run ends, and need the broker to say it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import select
import site
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import orjson

from tetriszmq.stream import protocol
from tetriszmq.stream.protocol import State, Topic
from tetriszmq.stream.relay import Uplink
from tetriszmq.stream.security import ServerCurve
from tetriszmq.stream.state import TrainerState

METRICS_NOW = b""  # a metrics record without a body: the broker builds one now (`Outbox.stage_metrics`)
TOPICS = tuple(Topic)
STATE_CODE = len(TOPICS)  # a record of training's counters and state (`Outbox.flush`), not a message
RECORDS_CODE = STATE_CODE + 1  # the replayable records `snapshot` lists, when they changed
RECORD = struct.Struct("<BI")  # one staged record: code, body length; then the body
FRAME = struct.Struct("<I")  # a hand-off's length, then its records
CLOSE = FRAME.pack(0)  # a frame of length 0: a flush never sends an empty batch
PIPE_SIZE = 1 << 20  # bytes the pipe to the broker holds (Linux's default limit for a user): ~30 s of early training
SPEC_SIZE = struct.Struct("<I")  # the pickled `BrokerSpec` on the broker's stdin, after its length
START_TIMEOUT = 60.0  # s for the broker process to start and bind (an interpreter start on a busy machine)
_CODES = {topic: code for code, topic in enumerate(TOPICS)}

Watch = Callable[[], "str | None"]  # None while training goes on; else why the run is over


@dataclass(frozen=True)
class BrokerSpec:
    """Everything the broker process is started with (pickled to its stdin)."""

    run: str
    lineage: str
    started: float  # this process's `TrainerState.started`: CLOCK_MONOTONIC is the same for both
    parent: int  # this process's pid: the broker also ends if it is re-parented
    pub: str
    ctl: str
    hwm: int
    history: int
    journal: Path | None
    heartbeat_every: float
    metrics_every: float
    curve: ServerCurve | None
    relay: Uplink | None
    inbox: int = -1  # the read end of the outbox's pipe, in the broker process (`Broker.start`)


class Outbox:
    """The training thread's end of the pipe to the broker process; one per thread.

    A plain OS pipe, written without blocking: a write is one system call (5-10 us), where a ZeroMQ
    socket's send woke libzmq's I/O thread in this process (40-70 us, and a thread that may take
    training's CPU). A hand-off is one frame, its length first. A frame the pipe takes only in part is
    finished before the next; while it cannot be, hand-offs are dropped (and counted), never waited for.
    """

    def __init__(self, fd: int, state: TrainerState) -> None:
        self._fd = fd
        self._state = state
        self._records_sent: object = None
        self._staged: list[bytes] = []  # record header, body, record header, body, ...
        self._unsent = memoryview(b"")  # the rest of a frame the pipe took only in part
        self._broken = False  # the broker's end is closed
        self.dropped = 0

    def stage(self, topic: Topic, fields: dict[str, Any]) -> None:
        """Encode one message, stamped now, for the next `flush`."""
        fields["t"] = time.time()
        body = protocol.encode_body(fields)
        self._staged += (RECORD.pack(_CODES[topic], len(body)), body)

    def flush(self, *, always: bool = False) -> None:
        """Hand everything staged to the broker at once, after training's counters; drops (and counts)
        instead of blocking. ``always``: the counters alone if nothing is staged."""
        if not (self._staged or always):
            return
        batch = b"".join((*self._state_records(), *self._staged))
        if not self._write(FRAME.pack(len(batch)) + batch):
            self.dropped += len(self._staged) // 2
        self._staged = []

    def _write(self, frame: bytes) -> bool:
        """Write ``frame`` after what is left of the last one; False (nothing of it written) if the pipe is full
        or the broker gone."""
        if not self._write_unsent():
            return False
        self._unsent = memoryview(frame)
        self._write_unsent()
        return True

    def _write_unsent(self) -> bool:
        """Write what the pipe takes of the frame in progress; True once all of it is written."""
        try:
            while self._unsent:
                self._unsent = self._unsent[os.write(self._fd, self._unsent):]
        except BlockingIOError:
            return False
        except BrokenPipeError:
            self._broken = True
            return False
        return True

    def _state_records(self) -> list[bytes]:
        """What the broker's heartbeats, metrics and replies say of training, as of this hand-off."""
        state = self._state
        body = orjson.dumps((str(state.state), state.reason, state.timesteps, state.episodes, state.best_lines,
                             state.can_save, self.dropped, state.scalars))
        head = [RECORD.pack(STATE_CODE, len(body)), body]
        if state.records is not self._records_sent:
            self._records_sent = state.records
            records = orjson.dumps(state.records)
            head += (RECORD.pack(RECORDS_CODE, len(records)), records)
        return head

    def stage_metrics(self) -> None:
        """Ask for a metrics message now, in order with what is staged (the broker builds it)."""
        self._staged += (RECORD.pack(_CODES[Topic.METRICS], 0), METRICS_NOW)

    def post(self, topic: Topic, fields: dict[str, Any]) -> None:
        """Stage one message and flush now, with whatever was staged before it."""
        self.stage(topic, fields)
        self.flush()

    def close_broker(self, timeout: float) -> bool:
        """Ask the broker to finish, after everything staged or posted before this; False if it could not be told.

        Waits at most ``timeout`` seconds for room in the pipe: a broker that has died or hangs reads
        nothing, and a blocking write would hang the caller's shutdown forever.
        """
        self.flush()
        self._unsent = memoryview(self._unsent.tobytes() + CLOSE)
        deadline = time.monotonic() + timeout
        while not (self._write_unsent() or self._broken):
            if not select.select([], [self._fd], [], max(0.0, deadline - time.monotonic()))[1]:
                break
        os.close(self._fd)
        return not self._unsent


class Broker:
    """Starts the broker process and carries its word back to `TrainerState`; see the module docstring.

    :param state: training's state; the broker reports bound ``endpoints``, ``sps`` and control requests here.
    :param pub: the stream's endpoint; ``ctl``, the control endpoint (``*`` or port 0: chosen when bound).
    :param hwm: PUB's high-water mark per subscriber.
    :param history: episodes and metrics messages a late joiner's ``snapshot`` gets at most.
    :param journal: ``metrics.jsonl`` to append every status, metrics and episode message to.
    :param curve: CURVE keys for both sockets (the ZAP authenticator runs in the broker process).
    :param relay: also connect out to a relay's trainers side.
    """

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
        curve: ServerCurve | None = None,
        relay: Uplink | None = None,
    ) -> None:
        self.state = state
        self.spec = BrokerSpec(state.run, state.lineage, state.started, os.getpid(), pub, ctl, hwm, history,
                               journal, heartbeat_every, metrics_every, curve, relay)
        self.watch: Watch | None = None  # set by the owner of the training thread, asked at heartbeat rate
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: _Lines | None = None
        self._abandoned = False  # the broker was told that learn() ended without ending the run
        self._closed = False
        self._listener = threading.Thread(target=self._listen, name="tetriszmq-broker-listener", daemon=True)
        self.outbox: Outbox

    @property
    def pid(self) -> int | None:
        """The broker process's pid once started (benchmarks read its CPU time)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the broker process and wait until it has bound the sockets; raises `OSError` if it cannot.

        The calling thread gets ``self.outbox``, its end of the pipe.
        """
        if self.spec.curve is not None:
            self.spec.curve.load()  # unusable key files are the caller's error, raised here
        inbox, outbox = os.pipe()
        try:
            with contextlib.suppress(OSError):  # more than a user may ask for: the default 64 KiB then
                fcntl.fcntl(outbox, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            self._proc = _spawn(replace(self.spec, inbox=inbox))
        finally:
            os.close(inbox)
        self._lines = _Lines(self._proc.stdout)
        late = {"error": f"the broker process did not start within {START_TIMEOUT:g} s"}
        try:
            word = self._lines.next(START_TIMEOUT) or late
        except EOFError:
            word = {}  # it ended: its exit code says more
        if "ready" not in word:
            os.close(outbox)
            self._end(5)
            raise OSError(word.get("error") or f"the broker process ended (exit code {self._proc.returncode})")
        self.state.endpoints = word["ready"]["endpoints"]
        os.set_blocking(outbox, False)
        self.outbox = Outbox(outbox, self.state)
        self._listener.start()

    def set_state(self, new: State, reason: str = "") -> None:
        """Change the trainer's state and announce it (from the thread that started the broker)."""
        self.state.state, self.state.reason = new, reason
        self.outbox.post(Topic.STATUS, self.state.status(new, reason))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self, timeout: float = 10.0) -> None:
        """Publish everything posted so far, then end the broker process (from the starting thread).

        Bounded by ``timeout`` even if the broker has died or hangs; a second call does nothing.
        """
        if self._closed:
            return
        self._closed = True
        told = self.outbox.close_broker(timeout if self.running else 0)
        self._end(timeout if told else 0)

    def _end(self, timeout: float) -> None:
        """Wait ``timeout`` s for the broker process to exit, then kill it; close this end of its pipes (its stdout
        is the listener's to close, once read to the end)."""
        assert self._proc is not None
        try:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        finally:  # a KeyboardInterrupt in the wait (`play` turns SIGTERM into one) still ends it
            if self._proc.poll() is None:
                self._proc.kill()
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
            if self._listener.is_alive():
                self._listener.join(max(timeout, 1.0))  # the broker has exited: its stdout's end is near
            else:
                self._proc.stdout.close()

    def _listen(self) -> None:
        """Until the broker process ends: apply what it says; ask the watch at every heartbeat."""
        assert self._lines is not None
        next_watch = time.monotonic() + self.spec.heartbeat_every
        try:
            while True:
                word = self._lines.next(max(0.0, next_watch - time.monotonic()))
                if word is not None:
                    self._apply(word)
                if time.monotonic() >= next_watch:
                    next_watch = time.monotonic() + self.spec.heartbeat_every
                    self._ask_watch()
        except EOFError:
            pass
        finally:
            self._proc.stdout.close()

    def _apply(self, word: dict[str, Any]) -> None:
        state = self.state
        if "stop" in word:
            state.request_stop(word["stop"])
        elif "request" in word:
            state.request(**word["request"])
        elif "sps" in word:
            state.sps = word["sps"]

    def _ask_watch(self) -> None:
        """Tell the broker, once, that ``learn()`` ended without ending the run: it publishes ``error``.

        The watch stays: the callback asks it too, to end the run on its side before its next ``learn()``.
        """
        if self._abandoned:
            return
        reason = self.watch() if self.watch is not None else None
        if reason is not None:
            self._abandoned = True
            _tell(self._proc.stdin, {"abandoned": reason})


class _Lines:
    """JSON lines from a pipe, with a timeout."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._fd = pipe.fileno()
        self._buffer = b""
        self._lines: list[bytes] = []

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next line, or None if nothing came within ``timeout`` seconds; EOFError once the writer is gone."""
        while not self._lines:
            if not select.select([self._fd], [], [], timeout)[0]:
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise EOFError("the broker process has ended")
            *self._lines, self._buffer = (self._buffer + chunk).split(b"\n")
        try:
            return orjson.loads(self._lines.pop(0))
        except orjson.JSONDecodeError:
            return None  # not ours (the broker's own output goes to stderr): nothing said


def _spawn(spec: BrokerSpec) -> subprocess.Popen[bytes]:
    """``python -m tetriszmq.stream.brokerd``, a fresh interpreter (works in a script without a ``__main__``
    guard), importing this same checkout of the package; the spec on its stdin."""
    proc = subprocess.Popen([sys.executable, "-m", "tetriszmq.stream.brokerd"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=_environment(), pass_fds=(spec.inbox,))
    spec_bytes = pickle.dumps(spec)
    proc.stdin.write(SPEC_SIZE.pack(len(spec_bytes)) + spec_bytes)
    proc.stdin.flush()
    return proc


def _environment() -> dict[str, str]:
    """This process's environment, with the folder this package was imported from first on the path when it is
    not an installed one (a checkout run in place): the broker runs the same code as training."""
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the `tetriszmq` package
    if root in {*site.getsitepackages(), site.getusersitepackages()}:
        return dict(os.environ)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}


def _tell(pipe: IO[bytes], word: dict[str, Any]) -> None:
    """One JSON line to the other process; nothing if it is gone (its end is then handled where it is noticed)."""
    try:
        pipe.write(orjson.dumps(word) + b"\n")
        pipe.flush()
    except (BrokenPipeError, ValueError):  # ValueError: this end is closed already
        pass
