"""Load: client processes, each holding many raw WebSocket connections on one ``epoll`` loop.

They parse every frame, take ``t`` from the tail of each board payload, and stamp its arrival
twice: the kernel's receive time (``SO_TIMESTAMPNS``: when the viewer's write reached the client's
socket, whatever the client process was doing) and the time the client process read it. The
difference is queueing inside our client processes, not the viewer's. Stalled connections complete
the handshake and never read again.
"""

from __future__ import annotations

import array
import base64
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import NamedTuple

BOARD_TOPIC = b'"topic":"board"'  # near the start of a board payload (after the run's "id" in runs mode)
HANDSHAKE = (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n")
WATCH_ALL = b'{"watch":{"runs":"*","boards":"*"}}'  # runs mode: every run's history and board, as a dashboard
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export it
STAMP = struct.Struct("qq")
LIGHT_EVERY = 0.25  # seconds between reads of an untimed client connection
CONNECT_BATCH = 25  # handshakes in flight per client process: stays under aiohttp's accept backlog (128)


class Results(NamedTuple):
    """What a client process sends back: per connection, then its timings as `array` bytes of doubles."""

    boards: list[int]  # per connection, in the window
    timed: list[bool]  # per connection: read at once (True) or swept every `LIGHT_EVERY` (False)
    at_socket: bytes
    at_read: bytes
    closed: int
    sweeps: bytes  # seconds between the starts of two sweeps of the light connections
    light_reads: bytes  # bytes a light connection had waiting, per read


class Conn:
    """One client connection: its socket, its unparsed bytes, its board count, whether it is timed."""

    __slots__ = ("sock", "pending", "boards", "closed", "timed")

    def __init__(self, sock: socket.socket, pending: bytes, timed: bool) -> None:
        self.sock, self.pending, self.boards, self.closed, self.timed = sock, pending, 0, False, timed


def _connect(port: int, count: int, rcvbuf: int | None = None, watch: bool = False
             ) -> Iterator[tuple[socket.socket, bytes]]:
    """Open ``count`` WebSocket connections, a batch at a time; yield each with the bytes after its 101.

    ``watch``: in runs mode (``/ws?runs=1``), watching every run and board.
    """
    for first in range(0, count, CONNECT_BATCH):
        batch = []
        for _ in range(min(CONNECT_BATCH, count - first)):
            sock = socket.socket()
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(60)
            sock.connect(("127.0.0.1", port))
            sock.sendall(HANDSHAKE % (b"/ws?runs=1" if watch else b"/ws", base64.b64encode(os.urandom(16))))
            batch.append(sock)
        for sock in batch:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed during the handshake")
                data += chunk
            head, rest = data.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(f"handshake refused: {head[:80]!r}")
            if watch:  # a client's frame is masked: a zero key leaves the payload as it is
                sock.sendall(bytes((0x81, 0x80 | len(WATCH_ALL))) + b"\0\0\0\0" + WATCH_ALL)
            yield sock, rest


class Clients:
    """Many connections in one process: every ``timed_every``-th one timed, the rest only counted.

    A timed connection is read as soon as data arrives, with the kernel's arrival stamp. The others
    are swept every `LIGHT_EVERY` seconds, so one read takes several frames: they cost the machine
    far fewer system calls, and their frame share is counted exactly all the same. The viewer
    writes to its clients in connection order, so every ``timed_every``-th one samples the whole
    range of its broadcast.

    After each pass over the ready sockets the process sleeps ``pace`` seconds, and it runs as
    SCHED_BATCH (no wake-up preemption): browsers are on other machines, ours share the viewer's
    two cores, and a client woken by every single write would preempt the viewer in the middle of
    its broadcast. Neither changes the kernel's arrival stamps.
    """

    def __init__(self, port: int, count: int, timed_every: int, watch: bool = False) -> None:
        self.timed, self.light = select.epoll(), select.epoll()
        self.conns: dict[int, Conn] = {}
        for i, (sock, rest) in enumerate(_connect(port, count, watch=watch)):
            sock.setblocking(False)
            self.conns[sock.fileno()] = Conn(sock, rest, i % timed_every == 0)
            if i % timed_every == 0:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.timed.register(sock.fileno(), select.EPOLLIN)
            else:
                self.light.register(sock.fileno(), select.EPOLLIN)
        self.at_socket, self.at_read = array.array("d"), array.array("d")
        self.t0 = self.t1 = float("inf")
        self.sweeps = array.array("d")  # in the window: seconds from one sweep's start to the next's
        self.light_reads = array.array("d")  # in the window: bytes per read of a light connection

    def run(self, pipe: Connection, pace: float) -> None:
        """Read until the window has passed; see `clients` for the pipe's protocol."""
        self.timed.register(pipe.fileno(), select.EPOLLIN)
        until, sweep = float("inf"), 0.0
        ancillary = socket.CMSG_SPACE(STAMP.size)
        while (now := time.time()) < until:
            for fd, _ in self.timed.poll(max(0.0, min(0.2, sweep - now)), len(self.conns) + 1):
                if fd == pipe.fileno():
                    message = pipe.recv()
                    if message == "stop":
                        return
                    self.t0, self.t1, until = message
                else:
                    self.read(fd, self.timed, ancillary)
            if (now := time.time()) >= sweep:
                if self.t0 <= now < self.t1:
                    self.sweeps.append(now - sweep + LIGHT_EVERY)
                sweep = now + LIGHT_EVERY
                self.sweep()
            if pace:
                time.sleep(pace)
        self.sweep()

    def sweep(self) -> None:
        for fd, _ in self.light.poll(0, len(self.conns)):
            self.read(fd, self.light, 0)

    def read(self, fd: int, poll: select.epoll, ancillary: int) -> None:
        """Read what one connection has; count (and time) the boards in it, answer pings."""
        conn = self.conns[fd]
        try:
            data, anc, _, _ = conn.sock.recvmsg(1 << 18, ancillary)
        except BlockingIOError:
            return
        except ConnectionError:
            data, anc = b"", []
        now = time.time()
        if not ancillary and self.t0 <= now < self.t1:
            self.light_reads.append(len(data))
        if not data:
            conn.closed = True
            poll.unregister(fd)
            return
        kernel = None  # the stamp of the last segment read: no earlier than any frame's arrival in it
        if anc:
            seconds, nanoseconds = STAMP.unpack(anc[0][2])
            kernel = seconds + nanoseconds * 1e-9
        if conn.pending:
            data = conn.pending + data
        pos, end = 0, len(data)
        while end - pos >= 2:
            size, head = data[pos + 1] & 0x7F, 2
            if size == 126:
                if end - pos < 4:
                    break
                size, head = (data[pos + 2] << 8) | data[pos + 3], 4
            elif size == 127:
                if end - pos < 10:
                    break
                size, head = int.from_bytes(data[pos + 2:pos + 10], "big"), 10
            stop = pos + head + size
            if stop > end:
                break
            first = data[pos]
            if first == 0x81 and data.find(BOARD_TOPIC, pos + head, min(stop, pos + head + 120)) >= 0:
                tail = data.rfind(b'"t":', stop - 40, stop)  # `Outbox.post` puts `t` last
                t = float(data[tail + 4:stop - 1])
                if self.t0 <= t < self.t1:
                    conn.boards += 1
                    if kernel is not None:
                        self.at_socket.append(kernel - t)
                        self.at_read.append(now - t)
            elif first == 0x89:  # ping: answer with a pong (masked with a zero key, as clients must)
                conn.sock.send(bytes((0x8A, 0x80 | size)) + b"\0\0\0\0" + data[pos + head:stop])
            pos = stop
        conn.pending = data[pos:] if pos < end else b""

    def results(self) -> Results:
        conns = self.conns.values()
        return Results([c.boards for c in conns], [c.timed for c in conns], self.at_socket.tobytes(),
                       self.at_read.tobytes(), sum(c.closed for c in conns), self.sweeps.tobytes(),
                       self.light_reads.tobytes())


def clients(port: int, count: int, timed_every: int, pace: float, watch: bool, pipe: Connection) -> None:
    """A client process (see `Clients`); ``watch``: in runs mode, watching every run.

    Protocol on ``pipe``: send "ready" once connected; receive (t0, t1, until); read until
    ``until``; send its `Results`.
    """
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    pool = Clients(port, count, timed_every, watch)
    pipe.send("ready")
    pool.run(pipe, pace)
    pipe.send(pool.results())


def stalled(port: int, count: int, pipe: Connection) -> None:
    """Connections that complete the handshake and then never read again (tiny receive buffers)."""
    socks = [sock for sock, _ in _connect(port, count, rcvbuf=4096)]
    pipe.send("ready")
    pipe.recv()
    for sock in socks:
        sock.close()
