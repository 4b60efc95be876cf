"""The columns the bench scripts print, and a table that prints rows as the runs finish."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from harness.case import Result
from harness.machine import loadavg
from harness.stream import EPISODE_EVERY, FPS, METRICS_EVERY


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
            f"but other processes held the CPUs; cl cpu %: all client processes; box %: all CPUs' busy time, in % of "
            f"one core as cpu % is ({os.cpu_count()} CPUs all busy: {100 * (os.cpu_count() or 1)})")
