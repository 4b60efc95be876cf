"""Fan-out capacity: how many WebSocket clients one viewer keeps at 30 boards/s, and what stalled ones cost.

1. A ladder of 250, 500, 1,000, 2,000 and 3,000 reading clients on a fresh viewer each. A step is
   kept when every client received at least 95% of the boards posted in the window and no
   connection was closed; the ladder stops at the first step that is not. The naive aiohttp
   broadcaster (`bench/harness/`) climbs the same ladder in the same run.
2. 1,000 connections of which 10% are stalled (handshake done, then never read): the other 900's
   latency and frame share against the 1,000-client step, and the server's memory over time.

Setup and measurement: `bench/harness/`. Targets (issue 6): 1,000 clients at 30 frames/s with the
viewer under one core; goal 3,000.

Usage: python bench/fanout.py [--seconds S] [--stalled-seconds S] [--max N] [--quick]
"""

from __future__ import annotations

import argparse

from harness import tables
from harness.case import QUICK_PAUSES, QUICK_SECONDS, Result, run_case
from harness.tables import Table, legend

LADDER = (250, 500, 1000, 2000, 3000)
KEPT_SHARE = 95.0  # % of the boards every client must receive


def kept(result: Result) -> bool:
    return result.share(0) >= KEPT_SHARE and result.closed == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per step (default 10)")
    parser.add_argument("--stalled-seconds", type=float, default=30.0,
                        help="measured window with stalled clients (default 30: past the viewer's 10 s send timeout)")
    parser.add_argument("--max", type=int, default=LADDER[-1], help="highest step of the ladder")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 20 clients, 0.5 s per run")
    args = parser.parse_args()
    ladder = (20,) if args.quick else tuple(n for n in LADDER if n <= args.max)
    reading, stalled = (18, 2) if args.quick else (900, 100)
    seconds, stalled_seconds = (QUICK_SECONDS,) * 2 if args.quick else (args.seconds, args.stalled_seconds)
    pauses = QUICK_PAUSES if args.quick else {}
    print(legend())
    print("min/p5/med %: boards received over boards posted in the window, per client: the slowest, the slowest "
          "5%'s best, the median; closed: connections the server closed")
    table = Table(tables.SERVER, tables.CLIENTS, tables.SHARES, tables.CLOSED, tables.SOCKET, tables.CPU, tables.RSS,
                  tables.WAITED, tables.CLIENTS_CPU, tables.MACHINE, tables.LOAD)

    print(f"\n1. the ladder, {seconds:g} s per step")
    table.header()
    best: dict[str, Result | None] = {}
    at: dict[tuple[str, int], Result] = {}
    for server in ("viewer", "naive"):
        best[server] = None
        for count in ladder:
            at[server, count] = result = run_case(server, count, seconds, **pauses)
            table.row(result)
            if not kept(result):
                break
            best[server] = result
    print()
    for server, result in best.items():
        if result is None:
            print(f"{server}: kept none of the steps")
        else:
            print(f"{server}: kept {result.clients} clients at >= {KEPT_SHARE:g}% of the boards, "
                  f"cpu {result.cpu:.0f}% of one core, rss {result.rss_peak:.0f} MB")
    if not args.quick:
        thousand = at.get(("viewer", 1000))
        met = thousand is not None and kept(thousand) and thousand.cpu < 100
        print(f"target 1,000 clients under one core: {'met' if met else 'MISSED'}; "
              f"goal 3,000: {'met' if at.get(('viewer', 3000)) and kept(at['viewer', 3000]) else 'not reached'}")

    print(f"\n2. {reading} reading + {stalled} stalled clients, {stalled_seconds:g} s "
          f"(compare with the {reading + stalled}-client step above)")
    table.header()
    runs = []
    for server in ("viewer", "naive"):
        runs.append(run_case(server, reading, stalled_seconds, stalled_count=stalled, **pauses))
        table.row(runs[-1])
    print("\nserver memory (RSS MB) over the window, from its start:")
    marks = [round(stalled_seconds * i / 6, 1) for i in range(7)]
    print(f"{'server':>6} " + " ".join(f"{f'{m:g} s':>7}" for m in marks))
    for result in runs:
        samples = [min(result.rss, key=lambda s: abs(s[0] - m))[1] for m in marks]
        print(f"{result.server:>6} " + " ".join(f"{mb:>7.1f}" for mb in samples))
    status = runs[0].status
    print(f"viewer at the end: {status.get('clients')} clients, {status.get('slow')} slow, "
          f"disconnected {status.get('disconnected')}")


if __name__ == "__main__":
    main()
