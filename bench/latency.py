"""End-to-end latency: from the trainer's `t` stamp to a WebSocket client, through the viewer.

For 1, 100 and 1,000 connected clients, the viewer (``python -m viewer``) relays a real stream
(`tetriszmq.stream.broker.Broker` fed by `Outbox.post`, boards at 30/s) to client processes on loopback;
each board's latency is its arrival minus its `t`, at the client's socket (kernel stamp) and when
the client process read it. The naive aiohttp broadcaster (`bench/harness/`) is measured the same
way in the same run. Setup and measurement: `bench/harness/`.

Targets (issue 6): p99 under 20 ms at 100 clients, under 50 ms at 1,000.

Usage: python bench/latency.py [--seconds S] [--quick]
"""

from __future__ import annotations

import argparse
import math

from harness import tables
from harness.case import QUICK_PAUSES, QUICK_SECONDS, Result, run_case
from harness.tables import Table, legend

TARGETS_MS = {100: 20.0, 1000: 50.0}  # p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window per run (default 15)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 1 and 20 clients, 0.5 s each")
    args = parser.parse_args()
    counts, seconds = ((1, 20), QUICK_SECONDS) if args.quick else ((1, 100, 1000), args.seconds)
    pauses = QUICK_PAUSES if args.quick else {}
    print(legend())
    table = Table(tables.SERVER, tables.CLIENTS, tables.SAMPLES, tables.SOCKET, tables.READ, tables.SHARES[0],
                  tables.CPU, tables.WAITED, tables.CLIENTS_CPU, tables.MACHINE, tables.LOAD)
    table.header()
    results: dict[tuple[str, int], Result] = {}
    for count in counts:
        for server in ("viewer", "naive"):
            results[server, count] = result = run_case(server, count, seconds, **pauses)
            table.row(result)
    print()
    for count in counts:
        ours, naive = results["viewer", count], results["naive", count]
        p99 = ours.pct("at_socket_ms", 99)
        target = TARGETS_MS.get(count)
        verdict = "" if target is None else f"; target p99 < {target:g} ms: {'met' if p99 < target else 'MISSED'}"
        ratio = naive.pct("at_socket_ms", 99) / p99 if p99 > 0 else math.nan
        print(f"{count:>5} clients: viewer p99 {p99:.1f} ms, naive p99 {naive.pct('at_socket_ms', 99):.1f} ms "
              f"(naive/viewer {ratio:.1f}x){verdict}")


if __name__ == "__main__":
    main()
