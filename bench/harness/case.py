"""One measured run (`run_case`) and its `Result`: four kinds of process on loopback.

- the **publisher** (`harness.stream`): `tetriszmq.stream.broker.Broker` fed through `Outbox.post`,
  exactly as the trainer feeds it (same bytes, same ``t`` stamp, heartbeats from the broker thread,
  ``snapshot`` answered on REP), posting board frames at 30/s, an episode every 0.5 s and metrics
  every second;
- the **server** (`harness.servers`): the real viewer (``python -m viewer``, as users start it), or
  the naive broadcaster it is compared with;
- **client processes** (`harness.load`), each holding many raw WebSocket connections on one ``epoll`` loop. They
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
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.load import Results, clients, stalled
from harness.machine import cpu_seconds, cpu_split, loadavg, machine_busy, rss_mb, run_delay, tcp_counters
from harness.processes import free_endpoint, free_port, spawned, wait_for
from harness.servers import get_json, serving
from harness.stream import FPS, publisher

TIMED = 250  # connections timed per run (the rest are counted only)
# A script's --quick mode: a short window (15 boards at 30/s) and short pauses around it, enough for a smoke test
QUICK_SECONDS = 0.5
QUICK_PAUSES = {"warmup": 0.25, "grace": 0.25}


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
    cpu_system: float  # the part of ``cpu`` in the kernel (system calls: the sends), % of one core
    clients_cpu: float  # all client processes, % of one core
    machine: float  # all CPUs busy, % of one core (2 cores = 200)
    waited: float  # ms per second the server was runnable but waiting for a CPU (other processes ran)
    load: str
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since window start, MB)
    status: dict[str, Any] = field(default_factory=dict)  # the viewer's /api/status at the end
    publishers: int = 1  # live trainers
    watch: bool = False  # clients in runs mode, watching every run
    timed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # per reading client, with `shares`
    sweeps_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # between sweeps of light connections
    light_read_kb: np.ndarray = field(default_factory=lambda: np.zeros(0))  # waiting per read of a light one
    slow: list[tuple[float, int, int]] = field(default_factory=list)  # viewer: (s since window start, slow, dropped)
    per_client: list[dict[str, Any]] = field(default_factory=list)  # the viewer's per-client status at the end
    tcp: dict[str, int] = field(default_factory=dict)  # the kernel's TCP counters over the window
    synced: float = 0.0  # seconds from the last client connected to every client having its snapshots

    def pct(self, which: str, q: float) -> float:
        values = getattr(self, which)
        return float(np.percentile(values, q)) if len(values) else float("nan")

    def share(self, q: float, timed: bool | None = None) -> float:
        """The ``q``-th percentile of per-client frame share, in %: 5 = the slowest 5%'s best.

        ``timed``: of the timed connections only (True), of the light ones only (False), of all (None).
        """
        shares = self.shares if timed is None else self.shares[self.timed == timed]
        return float(np.percentile(shares, q)) * 100 if len(shares) else float("nan")

    @property
    def rss_peak(self) -> float:
        return max(mb for _, mb in self.rss)



def run_case(server: str, count: int, seconds: float, *, stalled_count: int = 0, procs: int = 4,
             warmup: float = 2.0, grace: float = 1.0, pace: float = 0.002, extra: Sequence[str] = (),
             publishers: int = 1, watch: bool = False, diagnose: bool = False) -> Result:
    """One measured run: ``count`` reading clients (+ ``stalled_count`` stalled) on ``server``.

    The warm-up starts once every client has its snapshots (the viewer's ``syncing`` is 0): they
    share the viewer's snapshot budget (8 MB/s), so 1,000 clients of 8 runs take seconds to get
    theirs, and a run's boards reach a client only after its snapshot. Before 2026-12-02 the warm-up
    started at the last connection, and with 8 runs the window held the end of that start-up
    (docs/PERFORMANCE.md section 6).

    ``server``: "viewer" or "naive"; ``extra``: more viewer flags. About 250 connections are timed
    (every ``count // 250``-th), enough samples across the broadcast without the clients' own
    CPU crowding the viewer's. ``publishers``: live trainers the viewer follows (the frame share
    counts every one's boards); ``watch``: clients in runs mode, watching every run and board;
    ``diagnose``: ask the viewer for its slow-client count every 0.5 s of the window, and for every
    client's counters at the end (`Result.slow`, `Result.per_client`; each request costs it some CPU).
    """
    timed_every = max(1, count // TIMED)
    port = free_port()
    endpoints = [(free_endpoint(), free_endpoint()) for _ in range(publishers)]
    with ExitStack() as stack:
        streams = [stack.enter_context(spawned(publisher, pub, ctl, FPS))[1] for pub, ctl in endpoints]
        for stream in streams:
            if not stream.poll(30):
                raise TimeoutError("publisher did not start")
            stream.recv()
        pid = stack.enter_context(serving(server, endpoints, port, extra))
        sizes = [count // procs + (i < count % procs) for i in range(min(procs, count))]
        readers = [stack.enter_context(spawned(clients, port, size, timed_every, pace, watch)) for size in sizes]
        for proc, pipe in readers:
            wait_for(pipe.poll, 120, 0.1, what="client process", alive=proc.is_alive)
            pipe.recv()
        connected = time.monotonic()
        if server == "viewer":  # the window measures the stream, not the crowd's start-up: see `Result.synced`
            wait_for(lambda: get_json(port, "/api/status")["clients"]["syncing"] == 0, 300, 0.25,
                     what="every client's snapshots")
        synced = time.monotonic() - connected
        if stalled_count:
            proc, pipe = stack.enter_context(spawned(stalled, port, stalled_count))
            wait_for(pipe.poll, 120, 0.1, what="stalled clients", alive=proc.is_alive)
            pipe.recv()
        t0 = time.time() + warmup
        t1 = t0 + seconds
        for _, pipe in readers:
            pipe.send((t0, t1, t1 + grace))
        time.sleep(max(0.0, t0 - time.time()))
        pids = [proc.pid for proc, _ in readers]
        cpu0, clients0, busy0, load = cpu_split(pid), sum(map(cpu_seconds, pids)), machine_busy(), loadavg()
        delay0, tcp0 = run_delay(pid), tcp_counters()
        rss: list[tuple[float, float]] = []
        slow: list[tuple[float, int, int]] = []
        while (now := time.time()) < t1:
            rss.append((now - t0, rss_mb(pid)))
            if server == "viewer" and diagnose:
                clients_now = get_json(port, "/api/status")["clients"]
                slow.append((now - t0, clients_now["slow"], clients_now["dropped"]))
            time.sleep(min(0.5, max(0.0, t1 - now)))
        cpu1, clients1, busy1 = cpu_split(pid), sum(map(cpu_seconds, pids)), machine_busy()
        delay1, tcp1 = run_delay(pid), tcp_counters()
        rss.append((seconds, rss_mb(pid)))
        path = "/api/status?clients=1" if diagnose else "/api/status"
        status = get_json(port, path)["clients"] if server == "viewer" else {}
        boards: list[int] = []
        timed: list[bool] = []
        timings = {name: array.array("d") for name in ("at_socket", "at_read", "sweeps", "light_reads")}
        closed = 0
        for proc, pipe in readers:
            wait_for(pipe.poll, grace + 60, 0.1, what="client results", alive=proc.is_alive)
            results: Results = pipe.recv()
            boards += results.boards
            timed += results.timed
            for name, values in timings.items():
                values.frombytes(getattr(results, name))
            closed += results.closed
        for stream in streams:
            stream.send(("count", t0, t1))
        expected = sum(stream.recv() for stream in streams)
    return Result(
        server=server, clients=count, stalled=stalled_count, seconds=seconds, expected=expected,
        shares=np.array(boards, dtype=float) / max(expected, 1), timed=np.array(timed, dtype=bool),
        at_socket_ms=np.array(timings["at_socket"]) * 1e3, at_read_ms=np.array(timings["at_read"]) * 1e3,
        sweeps_ms=np.array(timings["sweeps"]) * 1e3, light_read_kb=np.array(timings["light_reads"]) / 1024,
        closed=closed, cpu=(sum(cpu1) - sum(cpu0)) / seconds * 100, cpu_system=(cpu1[1] - cpu0[1]) / seconds * 100,
        clients_cpu=(clients1 - clients0) / seconds * 100,
        machine=(busy1[0] - busy0[0]) / ((busy1[1] - busy0[1]) or 1) * (os.cpu_count() or 1) * 100,
        waited=(delay1 - delay0) / seconds * 1e3, load=load, rss=rss, status=status, publishers=publishers,
        watch=watch, slow=slow, per_client=status.pop("per_client", []),
        tcp={name: tcp1[name] - tcp0.get(name, 0) for name in tcp1}, synced=synced)

