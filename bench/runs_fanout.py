"""Every run in one viewer: 8 live trainers x 1,000 WebSocket clients, next to one trainer's figures.

Each trainer is the harness's publisher (a real Broker at the trainer's default rates: 30 boards/s,
an episode every 0.5 s, metrics every second, heartbeats every 0.5 s). The clients are in runs mode
(``/ws?runs=1``) and watch every run and every board, as a wall display of all runs would: 8 x 30
boards a second each. The one-trainer row is bench/fanout.py's step at the same client count, in
the same run, with one-run clients (plain ``/ws``). Frame share counts the boards of every trainer
(received over posted in the window); latency is board ``t`` -> arrival at the client's socket.
``sync s``: the start-up, from the last client connected to every client having its snapshots (the
run list and each run's history, through the viewer's 8 MB/s snapshot budget); the 2 s warm-up and
the window come after it. Until 2026-12-02 they came right after the last connection, and with 8
runs the window held the end of the start-up: 71-98% of the boards for the slowest 5%, lost while
clients still waited for snapshots (docs/PERFORMANCE.md section 6).
Targets (issue 14): p99 < 50 ms and >= 95% of the frames with 8 trainers and 1,000 clients.

``--diagnose`` says which connections lose boards and why: the timed connections' shares next to the
light ones' (harness/load.py: timed ones are read at once, light ones swept every 0.25 s), how often
the sweeps really came and how much each light read found waiting, the viewer's slow clients over the
window and each one's counters at the end, and the kernel's TCP drop and timeout counters.

Usage: python bench/runs_fanout.py [--clients 1000] [--trainers 8] [--seconds 10] [--quick] [--diagnose]
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
from harness import tables
from harness.case import QUICK_PAUSES, QUICK_SECONDS, Result, run_case
from harness.tables import Column, Table, legend

TRAINERS = Column("trainers", 8, lambda r: str(r.publishers))
MODE = Column("mode", 7, lambda r: "runs" if r.watch else "one-run")
SYNCED = Column("sync s", 6, lambda r: f"{r.synced:.1f}")
TCP = ("TCPRcvQDrop", "PruneCalled", "RcvPruned", "TCPRcvCollapsed", "TCPBacklogDrop", "TCPTimeouts",
       "TCPZeroWindowDrop", "TCPToZeroWindowAdv", "TCPWantZeroWindowAdv")  # loopback trouble, if any


def diagnosis(result: Result) -> None:
    """Where the boards were lost: which connections, the viewer's slow clients, the kernel's buffers."""
    for name, timed in (("timed", True), ("light", False)):
        print(f"{name} connections ({int((result.timed == timed).sum())}): share min / p5 / median "
              f"{result.share(0, timed):.1f} / {result.share(5, timed):.1f} / {result.share(50, timed):.1f}%, "
              f"under 95%: {int((result.shares[result.timed == timed] < 0.95).sum())}")
    if len(result.light_read_kb):
        print("light sweeps every p50 / p99 / max {:.0f} / {:.0f} / {:.0f} ms; a light read found p50 / p99 / max "
              "{:.1f} / {:.1f} / {:.1f} KiB".format(*np.percentile(result.sweeps_ms, (50, 99, 100)),
                                                   *np.percentile(result.light_read_kb, (50, 99, 100))))
    print("viewer slow clients / boards dropped, every 0.5 s of the window: "
          + " ".join(f"{slow}/{dropped}" for _, slow, dropped in result.slow))
    clients = result.per_client
    if clients:
        kinds = Counter(("slow" if not c["fast"] else "fast") + (" dropped" if c["dropped"] else "")
                        + (" resynced" if c["resyncs"] else "") for c in clients)
        dropped = np.percentile([c["dropped"] for c in clients], (50, 95, 100))
        print(f"viewer clients at the end: {dict(kinds)}; boards dropped per client p50 / p95 / max "
              + " / ".join(f"{d:.0f}" for d in dropped))
    print(f"viewer cpu {result.cpu:.0f}% of a core, of which {result.cpu_system:.0f}% in the kernel (its sends)")
    print("kernel TCP counters over the window: " + ", ".join(f"{k} {result.tcp.get(k, 0)}" for k in TCP))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--trainers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per row (default 10)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 trainers, 20 clients, 0.5 s")
    parser.add_argument("--diagnose", action="store_true", help="which connections lose boards, and why (above)")
    args = parser.parse_args()
    clients, trainers, seconds = (20, 2, QUICK_SECONDS) if args.quick else (args.clients, args.trainers, args.seconds)
    pauses = QUICK_PAUSES if args.quick else {}
    print(legend())
    print(f"{trainers} trainers: every client watches every run and board ({trainers} x 30 boards/s)")
    table = Table(TRAINERS, MODE, tables.CLIENTS, tables.SHARES, tables.CLOSED, SYNCED, tables.SOCKET, tables.CPU,
                  tables.CLIENTS_CPU, tables.RSS, tables.WAITED, tables.MACHINE, tables.LOAD)
    table.header()
    table.row(run_case("viewer", clients, seconds, **pauses))
    many = run_case("viewer", clients, seconds, publishers=trainers, watch=True, diagnose=args.diagnose, **pauses)
    table.row(many)
    print(f"\n{trainers} trainers x {clients} clients: p99 {many.pct('at_socket_ms', 99):.1f} ms (target < 50), "
          f"slowest 5% received >= {many.share(5):.1f}% of the boards (target >= 95)")
    print(f"viewer at the end: {many.status.get('clients')} clients, {many.status.get('slow')} slow, "
          f"disconnected {many.status.get('disconnected')}")
    if args.diagnose:
        diagnosis(many)


if __name__ == "__main__":
    main()
