"""The relay's cost, and what a relay restart costs: direct vs through `tetriszmq relay`, in one run.

Cost: N publishers (the trainer's real Broker at the default rates, `harness.stream.publisher`),
each binding its own PUB and connecting it out to one relay as `train --relay` does. V viewers
(SUB processes) first subscribe to every publisher directly, then to the relay's XPUB, for the same
window: messages per second each viewer receives, and each board's delay from its ``t`` stamp to
receipt (p50, p99, max), with the relay's CPU share and memory. A last table gives the raw ceiling:
one PUB sending boards as fast as it can, direct and through the relay.

Restart: 8 publishers journaling to metrics.jsonl, F followers (`harness.follow`: the clone pattern
per run through the relay). The relay is killed with SIGKILL and started again a second later:
seconds from the restart until every follower hears every run again (in `seq` order: a gap is
filled by a snapshot first), messages lost on the wire, episodes and metrics given back by the
snapshots, and journaled episodes or metrics that no follower holds (must be 0).

Usage: python bench/relay.py [--quick] [--trainers 1,8,32] [--viewers 1,10] [--seconds S] [--only-cost | --skip-cost]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import orjson
import zmq
from harness import ROOT
from harness.machine import cpu_seconds, loadavg, rss_mb
from harness.processes import free_port, spawned, wait_for
from harness.stream import publisher

from tetriszmq.stream.protocol import TOPIC_FRAMES, Topic
from tetriszmq.stream.relay import Side

WARMUP = 1.5  # s for a viewer's connections to be made and subscriptions to reach the publishers
BOARD = TOPIC_FRAMES[Topic.BOARD]


def sides() -> tuple[Side, Side]:
    ports = [free_port() for _ in range(4)]
    return (Side(f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[1]}"),
            Side(f"tcp://127.0.0.1:{ports[2]}", f"tcp://127.0.0.1:{ports[3]}"))


def spec(side: Side) -> str:
    return f"{side.stream},{side.control}"


@contextlib.contextmanager
def relay(trainers: Side, viewers: Side, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `tetriszmq relay` process, ready; killed on the way out."""
    starts = log.read_text().count("relay: trainers") if log.exists() else 0
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tetriszmq", "relay", "--trainers", spec(trainers),
                                 "--viewers", spec(viewers)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: log.read_text().count("relay: trainers") > starts, 60, what="relay ready",
                 alive=lambda: proc.poll() is None)
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def viewer(endpoints: list[str], seconds: float, pipe: Connection) -> None:
    """Subscribe to everything on ``endpoints``; after a warm-up, count messages and time boards for ``seconds``."""
    sock = zmq.Context().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.RCVHWM, 0)
    for endpoint in endpoints:
        sock.connect(endpoint)
    start = time.monotonic() + WARMUP
    end = start + seconds
    count, delays = 0, []
    while (now := time.monotonic()) < end:
        if not sock.poll(int((end - now) * 1000)):
            continue
        topic, payload = sock.recv_multipart()
        if time.monotonic() < start:
            continue
        count += 1
        if topic == BOARD:
            delays.append(time.time() - orjson.loads(payload)["t"])
    pipe.send((count / seconds, delays))
    pipe.recv()  # "stop"
    sock.close(linger=0)


def watch(endpoints: list[str], viewers: int, seconds: float, relay_pid: int) -> dict[str, float]:
    """Run ``viewers`` viewers at once; their rates and board delays, and the relay's CPU over the window."""
    with contextlib.ExitStack() as stack:
        pipes = [stack.enter_context(spawned(viewer, endpoints, seconds))[1] for _ in range(viewers)]
        time.sleep(WARMUP)  # a bench, not a test: the window is wall-clock by design
        cpu0, t0 = cpu_seconds(relay_pid), time.monotonic()
        results = [pipe.recv() for pipe in pipes]
        cpu = (cpu_seconds(relay_pid) - cpu0) / (time.monotonic() - t0) * 100
    delays = sorted(d * 1000 for _, ds in results for d in ds) or [float("nan")]
    return {"rate": statistics.mean(r for r, _ in results), "boards": len(delays), "p50": _pct(delays, 0.5),
            "p99": _pct(delays, 0.99), "max": delays[-1], "cpu": cpu, "rss": rss_mb(relay_pid)}


def _pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cost(trainer_counts: tuple[int, ...], viewer_counts: tuple[int, ...], seconds: float, log: Path) -> None:
    print(f"{'trainers':>8} {'viewers':>7} {'path':>6} {'msg/s/viewer':>12} {'boards':>7} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7} {'relay CPU %':>11} {'relay MB':>8}")
    for trainers in trainer_counts:
        up, down = sides()
        with relay(up, down, log) as proc, contextlib.ExitStack() as stack:
            pubs = [f"tcp://127.0.0.1:{free_port()}" for _ in range(trainers)]
            for pub in pubs:
                stack.enter_context(spawned(functools.partial(publisher, relay=spec(up)), pub,
                                            f"tcp://127.0.0.1:{free_port()}", 30.0))
            for viewers in viewer_counts:
                for path, endpoints in (("direct", pubs), ("relay", [down.stream])):
                    row = watch(endpoints, viewers, seconds, proc.pid)
                    print(f"{trainers:>8} {viewers:>7} {path:>6} {row['rate']:>12,.0f} {row['boards']:>7} "
                          f"{row['p50']:>7.2f} {row['p99']:>7.2f} {row['max']:>7.1f} "
                          f"{row['cpu'] if path == 'relay' else float('nan'):>11.1f} {row['rss']:>8.1f}",
                          flush=True)


def blast(endpoint: str, bind: bool, count: int, sink: str) -> tuple[float, int]:
    """Boards per second from one PUB sending ``count`` as fast as it can to one SUB at ``sink``, and how
    many arrived (a relay drops at its high-water marks, as a PUB does)."""
    from transport import board_payload

    ctx = zmq.Context.instance()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    (pub.bind if bind else pub.connect)(endpoint)
    sub.connect(sink)
    payload = board_payload(1)
    while not sub.poll(50):  # until the subscription has reached the publisher (through the relay, if any)
        pub.send_multipart([BOARD, payload])
    while sub.poll(200):
        sub.recv_multipart()
    start = last = time.perf_counter()
    for _ in range(count):
        pub.send_multipart([BOARD, payload])
    received = 0
    while received < count and sub.poll(1000):
        sub.recv_multipart()
        received += 1
        last = time.perf_counter()
    pub.close(linger=0)
    sub.close(linger=0)
    return received / (last - start), received


def republisher(up: Side, down: Side, pipe: Connection) -> None:
    """The road not taken: a relay that re-publishes each message with its run in the topic frame,
    so that a SUB could filter by run. It must read every payload, in Python."""
    ctx = zmq.Context()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    xsub.setsockopt(zmq.RCVHWM, 0)
    xpub.setsockopt(zmq.SNDHWM, 0)
    xsub.bind(up.stream)
    xpub.bind(down.stream)
    poller = zmq.Poller()
    for sock in (xsub, xpub):
        poller.register(sock, zmq.POLLIN)
    while not pipe.poll():
        events = dict(poller.poll(100))
        if xpub in events:
            xsub.send(xpub.recv())  # subscriptions upstream, as they are
        while xsub in events and xsub.poll(0):
            topic, payload = xsub.recv_multipart()
            at = payload.index(b'"run":"') + 7
            xpub.send_multipart([topic + payload[at:payload.index(b'"', at)], payload])


def ceiling(count: int, log: Path) -> None:
    """Throughput is bounded by the Python sender and receiver here; the middle's CPU per message is the
    relay box's cost, and what tells a C proxy from a Python re-publisher."""
    print(f"\n{'path':>11} {'boards/s':>10} {'arrived':>8} {'middle CPU us/msg':>17}   "
          f"(one PUB sends {count:,} as fast as it can, one SUB)")
    direct = f"tcp://127.0.0.1:{free_port()}"
    print("{:>11} {:>10,.0f} {:>8,}".format("direct", *blast(direct, True, count, direct)))
    up, down = sides()
    with relay(up, down, log) as proc:
        _ceiling_row("relay", proc.pid, up, down, count, "zmq.proxy_steerable, in C")
    up, down = sides()
    with spawned(republisher, up, down) as (proc, _):
        _ceiling_row("run prefix", proc.pid, up, down, count, "a Python loop re-publishing with the run in the topic")


def _ceiling_row(path: str, pid: int, up: Side, down: Side, count: int, what: str) -> None:
    cpu = cpu_seconds(pid)
    rate, arrived = blast(up.stream, False, count, down.stream)
    cpu = cpu_seconds(pid) - cpu
    print(f"{path:>11} {rate:>10,.0f} {arrived:>8,} {cpu / count * 1e6:>17.1f}   ({what})")


def follower(viewers: Side, pipe: Connection) -> None:
    """A `harness.follow.Follower`; reports what it holds of each run on "report"."""
    from harness.follow import Follower

    follow = Follower(viewers)
    while True:
        follow.step(0.05)
        if pipe.poll():
            if pipe.recv() != "report":
                break
            pipe.send({run: {"resumed": f.resumed, "seq": f.seq, "kept": f.kept, "lost": f.lost,
                             "recovered": f.recovered} for run, f in follow.runs.items()})
    follow.close()


def report(pipes: list[Connection]) -> list[dict[str, dict]]:
    for pipe in pipes:
        pipe.send("report")
    return [pipe.recv() for pipe in pipes]


def restart(trainers: int, followers: int, steady: float, log: Path, runs_dir: Path) -> None:
    up, down = sides()
    journals = [runs_dir / f"pub{i}.jsonl" for i in range(trainers)]
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(relay(up, down, log))
        for journal in journals:
            stack.enter_context(spawned(functools.partial(publisher, relay=spec(up), journal=str(journal)),
                                        f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}", 30.0))
        pipes = [stack.enter_context(spawned(follower, down))[1] for _ in range(followers)]
        wait_for(lambda: all(len(held) == trainers for held in report(pipes)), 120, every=0.1,
                 what="every follower follows every run")
        time.sleep(steady)
        first.kill()
        first.wait(10)
        time.sleep(1.0)  # a supervisor's restart delay: the trainers publish on, to nobody
        restarted = time.time()
        with relay(up, down, log):
            ready = time.time() - restarted
            wait_for(lambda: all(min(r["resumed"] for r in held.values()) > restarted for held in report(pipes)),
                     120, every=0.2, what="every follower hears every run again")
            held = report(pipes)
            time.sleep(steady)
            stack.close()  # publishers stop and close their journals; followers stop
    caught = [max(r["resumed"] for r in runs.values()) - restarted for runs in held]
    lost = sum(r["lost"] for runs in held for r in runs.values())
    recovered = sum(r["recovered"] for runs in held for r in runs.values())
    missing = 0
    for journal in journals:
        lines = [orjson.loads(line) for line in journal.read_bytes().splitlines()]
        run = lines[0]["run"]
        wanted = {m["seq"] for m in lines if m["topic"] in ("episode", "metrics")}
        for runs in held:
            missing += sum(1 for seq in wanted if seq <= runs[run]["seq"] and seq not in runs[run]["kept"])
    print(f"\n{'trainers':>8} {'followers':>9} {'relay ready s':>13} {'all live s':>10} {'median s':>8} "
          f"{'lost on wire':>12} {'recovered':>9} {'missing':>7}")
    print(f"{trainers:>8} {followers:>9} {ready:>13.2f} {max(caught):>10.2f} {statistics.median(caught):>8.2f} "
          f"{lost:>12} {recovered:>9} {missing:>7}")
    print("(lost on wire: messages of every kind the followers never received; recovered: episodes and metrics "
          "among them that snapshots gave back; missing: journaled episodes or metrics no follower holds)")


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trainers", default="1,8,32", help="trainer counts of the cost table")
    parser.add_argument("--viewers", default="1,10", help="viewer counts of the cost table")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window of each row")
    parser.add_argument("--only-cost", action="store_true", help="the cost table only")
    parser.add_argument("--skip-cost", action="store_true", help="the ceiling and the restart only")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))  # for transport.board_payload
    print(f"load average before: {loadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "relay.log"
        if args.quick:
            cost((2,), (1,), 1.0, log)
            ceiling(2_000, log)
            restart(2, 1, 0.5, log, Path(tmp))
        else:
            if not args.skip_cost:
                cost(_counts(args.trainers), _counts(args.viewers), args.seconds, log)
            if not args.only_cost:
                ceiling(50_000, log)
                restart(8, 10, 5.0, log, Path(tmp))
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
