"""What `bench/latency.py` and `bench/fanout.py` share: a real stream, a viewer, many clients, one run.

One measured run (`run_case`) is four kinds of process on loopback:

- the **publisher**: `tetriszmq.stream.broker.Broker` fed through `Outbox.post`, exactly as the trainer
  feeds it (same bytes, same ``t`` stamp, heartbeats from the broker thread, ``snapshot`` answered
  on REP), posting board frames at 30/s, an episode every 0.5 s and metrics every second;
- the **server**: the real viewer (``python -m viewer``, as users start it), or the naive
  broadcaster below that it is compared with;
- **client processes**, each holding many raw WebSocket connections on one ``epoll`` loop. They
  parse every frame, take ``t`` from the tail of each board payload, and stamp its arrival twice:
  the kernel's receive time (``SO_TIMESTAMPNS``: when the viewer's write reached the client's
  socket, whatever the client process was doing) and the time the client process read it. The
  difference is queueing inside our client processes, not the viewer's;
- optionally a **stalled** process: connections that complete the handshake and never read again.

Frame share: boards a client received with ``t`` in the measured window, over the boards the
publisher posted in that window. CPU: the server's own utime + stime from /proc over the window,
in % of one core. Nothing here asserts on time; the scripts print tables.
"""

from __future__ import annotations

import array
import base64
import multiprocessing as mp
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

FPS = 30.0  # the trainer's default `publish.board_fps`
EPISODE_EVERY, METRICS_EVERY = 0.5, 1.0
BOARD_HEAD = b'{"v":1,"topic":"board"'
HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export it
STAMP = struct.Struct("qq")
TIMED = 250  # connections timed per run (the rest are counted only)
LIGHT_EVERY = 0.25  # seconds between reads of an untimed client connection
CONNECT_BATCH = 25  # handshakes in flight per client process: stays under aiohttp's accept backlog (128)
SPAWN = mp.get_context("spawn")  # children make their own ZeroMQ contexts and event loops
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_delay(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (/proc/<pid>/task/*/schedstat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[1])
        except FileNotFoundError:  # a thread that just ended
            pass
    return total / 1e9


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


# The stream -------------------------------------------------------------------------------------

def publisher(pub: str, ctl: str, fps: float, pipe: Connection) -> None:
    """The trainer's I/O path without the training: Broker + Outbox.post at the default rates.

    Answers ``("count", t0, t1)`` with the number of boards posted with ``t`` in [t0, t1).
    """
    from tetriszmq.stream.broker import Broker
    from tetriszmq.stream.protocol import State, Topic
    from tetriszmq.stream.state import TrainerState

    state = TrainerState(run=f"bench-{random.randrange(1 << 24):06x}", state=State.RUNNING)
    broker = Broker(state, pub, ctl, heartbeat_every=0.5)
    broker.start()
    rng = random.Random(1)
    stack = [[0] * 10 for _ in range(8)] + [[rng.choice((0, 2, 3, 4, 5, 6, 7, 8)) for _ in range(10)]
                                            for _ in range(12)]
    stamps: list[float] = []
    pipe.send("ready")
    start = next_board = time.monotonic()
    next_episode, next_metrics, episodes = start + EPISODE_EVERY, start + METRICS_EVERY, 0
    try:
        while True:
            now = time.monotonic()
            if now >= next_board:
                next_board = max(next_board + 1.0 / fps, now)  # capped like the trainer: no catching up
                state.timesteps += 1
                board = {"board": stack, "next": [2, 3, 4, 5, 6], "hold": None, "episode": episodes + 1,
                         "step": state.timesteps % 500, "lines": 3, "score": 12.0}
                broker.outbox.post(Topic.BOARD, board)
                stamps.append(board["t"])  # `post` stamps the dict it is given
            if now >= next_episode:
                next_episode += EPISODE_EVERY
                episodes += 1
                state.episodes = episodes
                broker.outbox.post(Topic.EPISODE, {"episode": episodes, "reward": 42.0, "lines": 3,
                                                   "length": 120, "timesteps": state.timesteps})
            if now >= next_metrics:
                next_metrics += METRICS_EVERY
                broker.outbox.post(Topic.METRICS, {
                    "timesteps": state.timesteps, "episodes": episodes, "sps": 950.0, "dropped": 0,
                    "scalars": {"rollout/ep_rew_mean": 40.1, "train/loss": 0.5, "time/fps": 950.0}})
            if pipe.poll(max(0.0, min(next_board, next_episode, next_metrics) - time.monotonic())):
                request = pipe.recv()
                if request == "stop":
                    return
                _, t0, t1 = request
                pipe.send(sum(t0 <= t < t1 for t in stamps))
    finally:
        broker.close()


# The baseline -----------------------------------------------------------------------------------

def naive_viewer(pub: str, port: int) -> None:
    """What a new user writes first: decode once, then `send_str` to each client, from its own
    drop-oldest queue of 8, in its own task. No snapshot, no slow-client handling."""
    import asyncio

    import zmq
    import zmq.asyncio
    from aiohttp import web

    async def main() -> None:
        clients: dict[web.WebSocketResponse, tuple[deque[str], asyncio.Event]] = {}

        async def websocket(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            queue, ready = clients.setdefault(ws, (deque(maxlen=8), asyncio.Event()))
            try:
                while not ws.closed:
                    await ready.wait()
                    ready.clear()
                    while queue:
                        await ws.send_str(queue.popleft())
            except ConnectionError:
                pass
            finally:
                del clients[ws]
            return ws

        app = web.Application()
        app.router.add_get("/ws", websocket)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        sub = zmq.asyncio.Context().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(pub)
        while True:
            _, payload = await sub.recv_multipart()
            text = payload.decode()
            for queue, ready in clients.values():
                queue.append(text)
                ready.set()

    asyncio.run(main())


# Clients ----------------------------------------------------------------------------------------

class Conn:
    """One client connection: its socket, its unparsed bytes, its board count."""

    __slots__ = ("sock", "pending", "boards", "closed")

    def __init__(self, sock: socket.socket, pending: bytes) -> None:
        self.sock, self.pending, self.boards, self.closed = sock, pending, 0, False


def _connect(port: int, count: int, rcvbuf: int | None = None) -> Iterator[tuple[socket.socket, bytes]]:
    """Open ``count`` WebSocket connections, a batch at a time; yield each with the bytes after its 101."""
    for first in range(0, count, CONNECT_BATCH):
        batch = []
        for _ in range(min(CONNECT_BATCH, count - first)):
            sock = socket.socket()
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(60)
            sock.connect(("127.0.0.1", port))
            sock.sendall(HANDSHAKE % base64.b64encode(os.urandom(16)))
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

    def __init__(self, port: int, count: int, timed_every: int) -> None:
        self.timed, self.light = select.epoll(), select.epoll()
        self.conns: dict[int, Conn] = {}
        for i, (sock, rest) in enumerate(_connect(port, count)):
            sock.setblocking(False)
            self.conns[sock.fileno()] = Conn(sock, rest)
            if i % timed_every == 0:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.timed.register(sock.fileno(), select.EPOLLIN)
            else:
                self.light.register(sock.fileno(), select.EPOLLIN)
        self.at_socket, self.at_read = array.array("d"), array.array("d")
        self.t0 = self.t1 = float("inf")

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
            if time.time() >= sweep:
                sweep = time.time() + LIGHT_EVERY
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
            if first == 0x81 and data.startswith(BOARD_HEAD, pos + head):
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

    def results(self) -> tuple[list[int], bytes, bytes, int]:
        conns = self.conns.values()
        return ([c.boards for c in conns], self.at_socket.tobytes(), self.at_read.tobytes(),
                sum(c.closed for c in conns))


def clients(port: int, count: int, timed_every: int, pace: float, pipe: Connection) -> None:
    """A client process (see `Clients`).

    Protocol on ``pipe``: send "ready" once connected; receive (t0, t1, until); read until
    ``until``; send (board counts per connection, latencies at the socket, latencies at read,
    connections the server closed).
    """
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    pool = Clients(port, count, timed_every)
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


# One run ----------------------------------------------------------------------------------------

@dataclass
class Result:
    server: str
    clients: int
    stalled: int
    seconds: float
    expected: int  # boards posted in the window
    shares: np.ndarray  # per reading client: boards received / expected
    at_socket_ms: np.ndarray
    at_read_ms: np.ndarray
    closed: int  # reading clients whose connection the server closed
    cpu: float  # server, % of one core over the window
    clients_cpu: float  # all client processes, % of one core
    machine: float  # all CPUs busy, % of one core (2 cores = 200)
    waited: float  # ms per second the server was runnable but waiting for a CPU (other processes ran)
    load: str
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since window start, MB)
    status: dict[str, Any] = field(default_factory=dict)  # the viewer's /api/status at the end

    def pct(self, which: str, q: float) -> float:
        values = getattr(self, which)
        return float(np.percentile(values, q)) if len(values) else float("nan")

    def share(self, q: float) -> float:
        """The ``q``-th percentile of per-client frame share, in %: 5 = the slowest 5%'s best."""
        return float(np.percentile(self.shares, q)) * 100 if len(self.shares) else float("nan")

    @property
    def rss_peak(self) -> float:
        return max(mb for _, mb in self.rss)


def _get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return orjson.loads(response.read())


def _wait(ready: Callable[[], Any], what: str, timeout: float, alive: Callable[[], bool]) -> None:
    """Poll ``ready()`` until it is true; fail early once ``alive()`` says the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (OSError, urllib.error.URLError):
            pass
        if not alive():
            raise RuntimeError(f"{what}: the process exited")
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not ready within {timeout:g}s")


def _reap(proc: Any, grace: float) -> None:
    """Wait ``grace`` seconds for a child to end, then terminate it, then kill it."""
    proc.join(grace)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()


@contextmanager
def _process(target: Any, *args: Any) -> Iterator[tuple[Any, Connection]]:
    """A spawned child with a pipe; told to stop on the way out, and reaped."""
    ours, theirs = SPAWN.Pipe()
    proc = SPAWN.Process(target=target, args=(*args, theirs), daemon=True)
    proc.start()
    try:
        yield proc, ours
    finally:
        try:
            ours.send("stop")
        except OSError:
            pass
        _reap(proc, 10)


def _listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def _relaying(port: int) -> bool:
    trainer = _get(port, "/api/status")["trainer"]
    return trainer["link"] == "online" and not trainer["syncing"]


@contextmanager
def _server(kind: str, pub: str, ctl: str, port: int, extra: Sequence[str]) -> Iterator[int]:
    """Start the viewer or the naive baseline on ``port``; yield its pid once it relays the stream."""
    if kind == "naive":
        proc = SPAWN.Process(target=naive_viewer, args=(pub, port), daemon=True)
        proc.start()
        try:
            _wait(lambda: _listening(port), "naive viewer", 30, proc.is_alive)
            time.sleep(0.5)  # its SUB connects on its own
            yield proc.pid
        finally:
            proc.terminate()
            _reap(proc, 5)
        return
    args = [sys.executable, "-m", "viewer", "--trainer", pub, "--ctl", ctl, "--port", str(port),
            "--token", "bench", *extra]
    viewer = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait(lambda: _relaying(port), "viewer", 30, lambda: viewer.poll() is None)
        yield viewer.pid
    finally:
        viewer.terminate()
        try:
            viewer.wait(10)
        except subprocess.TimeoutExpired:
            viewer.kill()
            viewer.wait()
        assert viewer.stderr is not None
        errors = viewer.stderr.read().decode(errors="replace").strip()
        viewer.stderr.close()
        if viewer.returncode not in (0, -15) or "Traceback" in errors:
            print(f"viewer (exit {viewer.returncode}) said:\n{errors[-2000:]}", file=sys.stderr)


def run_case(server: str, count: int, seconds: float, *, stalled_count: int = 0, procs: int = 4,
             warmup: float = 2.0, grace: float = 1.0, pace: float = 0.002, extra: Sequence[str] = ()) -> Result:
    """One measured run: ``count`` reading clients (+ ``stalled_count`` stalled) on ``server``.

    ``server``: "viewer" or "naive"; ``extra``: more viewer flags. About 250 connections are timed
    (every ``count // 250``-th), enough samples across the broadcast without the clients' own
    CPU crowding the viewer's.
    """
    timed_every = max(1, count // TIMED)
    pub, ctl, port = (f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}", free_port())
    with ExitStack() as stack:
        _, stream = stack.enter_context(_process(publisher, pub, ctl, FPS))
        if not stream.poll(30):
            raise TimeoutError("publisher did not start")
        stream.recv()
        pid = stack.enter_context(_server(server, pub, ctl, port, extra))
        sizes = [count // procs + (i < count % procs) for i in range(min(procs, count))]
        readers = [stack.enter_context(_process(clients, port, size, timed_every, pace)) for size in sizes]
        for proc, pipe in readers:
            _wait(pipe.poll, "client process", 120, proc.is_alive)
            pipe.recv()
        if stalled_count:
            proc, pipe = stack.enter_context(_process(stalled, port, stalled_count))
            _wait(pipe.poll, "stalled clients", 120, proc.is_alive)
            pipe.recv()
        t0 = time.time() + warmup
        t1 = t0 + seconds
        for _, pipe in readers:
            pipe.send((t0, t1, t1 + grace))
        time.sleep(max(0.0, t0 - time.time()))
        pids = [proc.pid for proc, _ in readers]
        cpu0, clients0, busy0, load = cpu_seconds(pid), sum(map(cpu_seconds, pids)), machine_busy(), loadavg()
        delay0 = run_delay(pid)
        rss: list[tuple[float, float]] = []
        while (now := time.time()) < t1:
            rss.append((now - t0, rss_mb(pid)))
            time.sleep(min(0.5, max(0.0, t1 - now)))
        cpu1, clients1, busy1 = cpu_seconds(pid), sum(map(cpu_seconds, pids)), machine_busy()
        delay1 = run_delay(pid)
        rss.append((seconds, rss_mb(pid)))
        status = _get(port, "/api/status")["clients"] if server == "viewer" else {}
        boards: list[int] = []
        at_socket, at_read, closed = array.array("d"), array.array("d"), 0
        for proc, pipe in readers:
            _wait(pipe.poll, "client results", grace + 60, proc.is_alive)
            counts, socket_bytes, read_bytes, gone = pipe.recv()
            boards += counts
            at_socket.frombytes(socket_bytes)
            at_read.frombytes(read_bytes)
            closed += gone
        stream.send(("count", t0, t1))
        expected = stream.recv()
    return Result(
        server=server, clients=count, stalled=stalled_count, seconds=seconds, expected=expected,
        shares=np.array(boards, dtype=float) / max(expected, 1),
        at_socket_ms=np.frombuffer(at_socket, dtype=np.float64) * 1e3,
        at_read_ms=np.frombuffer(at_read, dtype=np.float64) * 1e3,
        closed=closed, cpu=(cpu1 - cpu0) / seconds * 100, clients_cpu=(clients1 - clients0) / seconds * 100,
        machine=(busy1[0] - busy0[0]) / ((busy1[1] - busy0[1]) or 1) * (os.cpu_count() or 1) * 100,
        waited=(delay1 - delay0) / seconds * 1e3, load=load, rss=rss, status=status)


# Tables -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    title: str
    width: int
    value: Callable[[Result], str]


def _ms(which: str, q: float) -> Callable[[Result], str]:
    return lambda r: f"{r.pct(which, q):.1f}"


SERVER = Column("server", 6, lambda r: r.server)
CLIENTS = Column("clients", 7, lambda r: f"{r.clients}" + (f"+{r.stalled}" if r.stalled else ""))
SAMPLES = Column("samples", 8, lambda r: f"{len(r.at_socket_ms)}")
SOCKET = [Column(f"{q} ms", 7, _ms("at_socket_ms", n)) for q, n in (("p50", 50), ("p99", 99), ("max", 100))]
READ = [Column(f"{q} rd", 7, _ms("at_read_ms", n)) for q, n in (("p50", 50), ("p99", 99), ("max", 100))]
SHARES = [Column("min %", 6, lambda r: f"{r.share(0):.1f}"), Column("p5 %", 6, lambda r: f"{r.share(5):.1f}"),
          Column("med %", 6, lambda r: f"{r.share(50):.1f}")]
CLOSED = Column("closed", 6, lambda r: f"{r.closed}")
CPU = Column("cpu %", 6, lambda r: f"{r.cpu:.0f}")
RSS = Column("rss MB", 7, lambda r: f"{r.rss_peak:.0f}")
WAITED = Column("wait ms/s", 9, lambda r: f"{r.waited:.0f}")
CLIENTS_CPU = Column("cl cpu %", 8, lambda r: f"{r.clients_cpu:.0f}")
MACHINE = Column("box %", 5, lambda r: f"{r.machine:.0f}")
LOAD = Column("load", 14, lambda r: r.load)


class Table:
    """Rows printed as the runs finish, under one header."""

    def __init__(self, *columns: Column | list[Column]) -> None:
        self.columns = [c for group in columns for c in (group if isinstance(group, list) else [group])]

    def header(self) -> None:
        line = " ".join(f"{c.title:>{c.width}}" for c in self.columns)
        print(line + "\n" + "-" * len(line), flush=True)

    def row(self, result: Result) -> None:
        print(" ".join(f"{c.value(result):>{c.width}}" for c in self.columns), flush=True)


def legend() -> str:
    return (f"machine: {os.cpu_count()} CPUs, load {loadavg()}; boards at {FPS:g}/s, an episode every "
            f"{EPISODE_EVERY:g} s, metrics every {METRICS_EVERY:g} s, heartbeats every 0.5 s\n"
            "ms: board `t` -> arrival at the client's socket (kernel stamp); rd: -> read by the client process\n"
            "cpu %: the server's own CPU (% of one core); wait ms/s: how long per second it was ready to run "
            "but other processes held the CPUs; cl cpu %: all client processes; box %: all CPUs busy")
