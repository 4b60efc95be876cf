"""A stream client for tests that must run in another process (or network namespace).

    python tests/probe.py ENDPOINT --messages N --timeout S [--curve-server-key F --curve-secret-key F]

Prints one JSON object: how many messages arrived and the topics and runs seen.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tetriszmq.cli import client_curve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--curve-server-key", type=Path)
    parser.add_argument("--curve-secret-key", type=Path)
    args = parser.parse_args()
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if (curve := client_curve(args)) is not None:
        curve.apply(sock)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(args.endpoint)
    received, topics = 0, set()
    deadline = time.monotonic() + args.timeout
    while received < args.messages and (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000)):
            topics.add(sock.recv_multipart()[0].decode())
            received += 1
    print(orjson.dumps({"received": received, "topics": sorted(topics)}).decode())


if __name__ == "__main__":
    main()
