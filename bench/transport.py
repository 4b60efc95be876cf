"""The physical ceiling: the raw ZeroMQ PUB -> SUB hop for our board payload, on loopback TCP.

Prints throughput (a publisher sending as fast as it can to one SUB process) and one-way latency
(p50/p99/max, at the default 30 frames/s and at 1,000 frames/s), both measured with a real board
message sealed by `tetriszmq.stream.protocol`, the same bytes the trainer sends. A last row takes the
same hop out of a real trainer (`tetriszmq train` on the default config): its boards are staged by a
training thread that never waits and published by the broker process, fed through a pipe.

Usage: python bench/transport.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time

import orjson
import zmq
from harness import ROOT
from harness.processes import free_endpoint

from tetriszmq.stream import protocol
from tetriszmq.stream.protocol import Topic

FRAME = protocol.TOPIC_FRAMES[Topic.BOARD]


def board_payload(seq: int) -> bytes:
    board = [[(r * 10 + c) % 9 if r > 12 else 0 for c in range(10)] for r in range(20)]
    body = protocol.encode_body({"t": time.time(), "board": board, "next": [2, 3, 4, 5], "hold": None,
                                 "episode": 1, "step": seq, "lines": 0, "score": 0.0})
    return protocol.seal(protocol.envelope_prefix(Topic.BOARD, "bench-000000"), seq, body)


def sink(endpoint: str, count: int, ready: mp.Event, out: mp.Queue) -> None:
    """Receive ``count`` messages; report the receive time and the sender's `t` of each."""
    sock = zmq.Context().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    sock.recv_multipart()  # the probe message: connected
    ready.set()
    delays, first = [], None
    for _ in range(count):
        _, payload = sock.recv_multipart()
        now = time.time()
        first = first or time.perf_counter()
        delays.append(now - orjson.loads(payload)["t"])
    out.put((time.perf_counter() - first, delays))


def run(count: int, rate: float | None) -> tuple[float, list[float]]:
    endpoint = free_endpoint()
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(endpoint)
    ready, out = mp.Event(), mp.Queue()
    proc = mp.Process(target=sink, args=(endpoint, count, ready, out))
    proc.start()
    while not ready.is_set():
        pub.send_multipart([FRAME, board_payload(0)])
        ready.wait(0.05)
    period = 1.0 / rate if rate else 0.0
    next_at = time.perf_counter()
    for seq in range(1, count + 1):
        if period:
            next_at += period
            while time.perf_counter() < next_at:
                pass
        pub.send_multipart([FRAME, board_payload(seq)])
    elapsed, delays = out.get(timeout=120)
    proc.join()
    pub.close(linger=0)
    return elapsed, delays


def trainer_hop(seconds: float) -> list[float]:
    """Seconds from `t` to receipt of the boards a real trainer publishes over ``seconds`` of training."""
    pub, ctl = free_endpoint(), free_endpoint()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, FRAME)
    sub.connect(pub)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = subprocess.Popen(
            [sys.executable, "-m", "tetriszmq", "train", "--config", str(ROOT / "configs" / "default.toml"),
             "--run-dir", run_dir, "--pub", pub, "--ctl", ctl, "--quiet"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if not sub.poll(120_000):
                raise SystemExit("the trainer published no board within 120 s")
            delays, end = [], time.monotonic() + seconds
            while time.monotonic() < end and sub.poll(5000):
                _, payload = sub.recv_multipart()
                delays.append(time.time() - orjson.loads(payload)["t"])
        finally:
            trainer.terminate()
            trainer.wait(60)
            sub.close(linger=0)
    return delays


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    size = len(board_payload(1))
    burst = 5_000 if args.quick else 100_000
    elapsed, _ = run(burst, None)
    print(f"board payload: {size} bytes")
    print(f"throughput, 1 SUB: {burst / elapsed:,.0f} messages/s ({burst / elapsed * size / 1e6:,.1f} MB/s)")
    print(f"{'rate':>10} {'messages':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for rate, seconds in ((30.0, 1 if args.quick else 10), (1000.0, 1 if args.quick else 5)):
        count = int(rate * seconds)
        _, delays = run(count, rate)
        ms = [d * 1000 for d in delays]
        print(f"{rate:>8.0f}/s {count:>9} {pct(ms, 0.5):>8.3f} {pct(ms, 0.99):>8.3f} {max(ms):>8.3f}")
    ms = [d * 1000 for d in trainer_hop(3 if args.quick else 30)]
    print(f"{'trainer':>10} {len(ms):>9} {pct(ms, 0.5):>8.3f} {pct(ms, 0.99):>8.3f} {max(ms):>8.3f}"
          "   (a real training process, boards at its default 30/s)")


if __name__ == "__main__":
    main()
