"""A client of a relay for test_relay.py, run in another network namespace: follows every run behind it.

    python tests/relay_client.py VIEWERS [--curve-server-key F --curve-secret-key F]

Prints JSON lines: ``{"event": "snapshot", "run": ...}`` whenever it catches a run up, and on the
line ``report`` on stdin, ``{"event": "report", "runs": {run: {...}}}`` (`harness.follow.Follow`,
with ``kept`` as a sorted list). Ends at ``quit`` or end of input.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import orjson
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from harness.follow import Follower  # noqa: E402

from tetriszmq.cli import client_curve  # noqa: E402
from tetriszmq.stream.relay import side  # noqa: E402


def say(event: dict) -> None:
    sys.stdout.write(orjson.dumps(event).decode() + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("viewers")
    parser.add_argument("--curve-server-key", type=Path)
    parser.add_argument("--curve-secret-key", type=Path)
    args = parser.parse_args()
    follower = Follower(side(args.viewers, "viewers"), client_curve(args), on_event=say)
    poller = zmq.Poller()
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    say({"event": "started"})
    while True:
        follower.step(0.05)
        if not poller.poll(0):
            continue
        line = sys.stdin.readline().strip()
        if line == "report":
            say({"event": "report", "runs": {run: {**dataclasses.asdict(f), "kept": sorted(f.kept)}
                                             for run, f in follower.runs.items()}})
        elif line in ("quit", ""):
            break
    follower.close()


if __name__ == "__main__":
    main()
