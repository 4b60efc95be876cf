"""Every run in one viewer: 8 live trainers x 1,000 WebSocket clients, next to one trainer's figures.

Each trainer is the harness's publisher (a real Broker at the trainer's default rates: 30 boards/s,
an episode every 0.5 s, metrics every second, heartbeats every 0.5 s). The clients are in runs mode
(``/ws?runs=1``) and watch every run and every board, as a wall display of all runs would: 8 x 30
boards a second each. The one-trainer row is bench/fanout.py's step at the same client count, in
the same run, with one-run clients (plain ``/ws``). Frame share counts the boards of every trainer
(received over posted in the window); latency is board ``t`` -> arrival at the client's socket.
Targets (issue 14): p99 < 50 ms and >= 95% of the frames with 8 trainers and 1,000 clients.

Usage: python bench/runs_fanout.py [--clients 1000] [--trainers 8] [--seconds 10] [--quick]
"""

from __future__ import annotations

import argparse

from harness import tables
from harness.case import QUICK_PAUSES, QUICK_SECONDS, run_case
from harness.tables import Column, Table, legend

TRAINERS = Column("trainers", 8, lambda r: str(r.publishers))
MODE = Column("mode", 7, lambda r: "runs" if r.watch else "one-run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--trainers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per row (default 10)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 trainers, 20 clients, 0.5 s")
    args = parser.parse_args()
    clients, trainers, seconds = (20, 2, QUICK_SECONDS) if args.quick else (args.clients, args.trainers, args.seconds)
    pauses = QUICK_PAUSES if args.quick else {}
    print(legend())
    print(f"{trainers} trainers: every client watches every run and board ({trainers} x 30 boards/s)")
    table = Table(TRAINERS, MODE, tables.CLIENTS, tables.SHARES, tables.CLOSED, tables.SOCKET, tables.CPU,
                  tables.CLIENTS_CPU, tables.RSS, tables.WAITED, tables.MACHINE, tables.LOAD)
    table.header()
    table.row(run_case("viewer", clients, seconds, **pauses))
    many = run_case("viewer", clients, seconds, publishers=trainers, watch=True, **pauses)
    table.row(many)
    print(f"\n{trainers} trainers x {clients} clients: p99 {many.pct('at_socket_ms', 99):.1f} ms (target < 50), "
          f"slowest 5% received >= {many.share(5):.1f}% of the boards (target >= 95)")
    print(f"viewer at the end: {many.status.get('clients')} clients, {many.status.get('slow')} slow, "
          f"disconnected {many.status.get('disconnected')}")


if __name__ == "__main__":
    main()
