"""A resync storm: what many browsers (re)connecting at once cost the viewer.

Every browser that connects, and every one the viewer resynchronises, gets the run's whole
history in its first message (the snapshot). With a run at the history cap (20,000 episodes and
metrics) that is a few MB per connection, so a crowd reconnecting after a network blip, or a
script that reconnects in a loop, could make the viewer send tens of MB per second.

One run: a publisher (the trainer's Broker fed with a run's history, then boards at 30/s), the
real viewer (``python -m viewer``), and ``--clients`` WebSocket clients in this process that all
connect at once, read their snapshot, close and connect again, for ``--seconds``. Printed: the
snapshot's size, how long the first wave took until every client had its snapshot, snapshots
and MB per second sent over the whole window, and the viewer's CPU.

Usage: python bench/resync.py [--clients N] [--seconds S] [--episodes N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from multiprocessing.connection import Connection

import aiohttp
from harness.machine import cpu_seconds, loadavg
from harness.processes import free_port, spawned
from harness.servers import serving

POST_BATCH = 500  # messages handed to the broker per frame while filling the history


def publisher(pub: str, ctl: str, episodes: int, pipe: Connection) -> None:
    """A trainer's I/O path with ``episodes`` episodes and as many metrics in its history, then boards."""
    from tetriszmq.stream.broker import Broker
    from tetriszmq.stream.protocol import State, Topic
    from tetriszmq.stream.state import TrainerState

    state = TrainerState(run=f"resync-{random.randrange(1 << 24):06x}", state=State.RUNNING)
    broker = Broker(state, pub, ctl, heartbeat_every=0.5)
    broker.start()
    try:
        for episode in range(1, episodes + 1):
            broker.outbox.stage(Topic.EPISODE, {"episode": episode, "reward": 42.5, "lines": 3, "length": 120,
                                                "timesteps": episode * 120})
            broker.outbox.stage(Topic.METRICS, {
                "timesteps": episode * 120, "episodes": episode, "sps": 950.0, "dropped": 0,
                "scalars": {"rollout/ep_rew_mean": 40.1, "train/loss": 0.5, "time/fps": 950.0}})
            if episode % POST_BATCH == 0:
                broker.outbox.flush()
                time.sleep(0.01)  # let the broker thread keep up: nothing is dropped
        broker.outbox.flush()
        pipe.send("ready")
        board = {"board": [[0] * 10] * 20, "next": [2, 3, 4], "hold": None, "episode": episodes + 1, "step": 0,
                 "lines": 0, "score": 0.0}
        while not pipe.poll(1 / 30):
            broker.outbox.post(Topic.BOARD, dict(board))
    finally:
        broker.close()


async def client(url: str, until: float, first_wave: list[float], totals: dict[str, int]) -> None:
    """Connect, read the snapshot, close, again until ``until``; the first snapshot's arrival is noted."""
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < until:
            async with session.ws_connect(url, max_msg_size=0, heartbeat=None) as ws:
                message = await ws.receive()
                if message.type is not aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"no snapshot: {message.type.name} {message.extra!r}")
                if len(first_wave) < totals["clients"]:
                    first_wave.append(time.monotonic())
                totals["snapshots"] += 1
                totals["bytes"] += len(message.data)


async def storm(port: int, clients: int, seconds: float) -> tuple[dict[str, int], float, float]:
    """Run the storm; returns the totals, the window and how long the first wave took."""
    totals = {"clients": clients, "snapshots": 0, "bytes": 0}
    first_wave: list[float] = []
    start = time.monotonic()
    await asyncio.gather(*(client(f"http://127.0.0.1:{port}/ws", start + seconds, first_wave, totals)
                           for _ in range(clients)))
    return totals, time.monotonic() - start, max(first_wave) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100, help="browsers reconnecting at once (default 100)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long they keep reconnecting (default 20)")
    parser.add_argument("--episodes", type=int, default=20_000,
                        help="episodes (and metrics) in the run's history (default 20,000: the cap)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 10 clients, 2 s, 1,000 episodes")
    args = parser.parse_args()
    clients, seconds, episodes = (10, 2.0, 1000) if args.quick else (args.clients, args.seconds, args.episodes)
    load = loadavg()
    pub, ctl, port = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}", free_port()
    with spawned(publisher, pub, ctl, episodes) as (_, pipe):
        if not pipe.poll(120) or pipe.recv() != "ready":
            raise RuntimeError("the publisher did not fill its history")
        with serving("viewer", [(pub, ctl)], port, ()) as pid:
            cpu = cpu_seconds(pid)
            totals, window, first = asyncio.run(storm(port, clients, seconds))
            cpu = cpu_seconds(pid) - cpu
    size = totals["bytes"] / max(1, totals["snapshots"])
    print(f"load average before: {load}")
    print(f"history: {episodes:,} episodes and metrics; {clients} clients reconnecting for {seconds:g} s")
    print(f"{'clients':>8} {'snapshot MB':>12} {'first wave s':>13} {'snapshots/s':>12} {'MB/s':>8} "
          f"{'viewer CPU %':>13}")
    print(f"{clients:>8} {size / 1e6:>12.2f} {first:>13.2f} {totals['snapshots'] / window:>12.1f} "
          f"{totals['bytes'] / 1e6 / window:>8.1f} {100 * cpu / window:>13.0f}")


if __name__ == "__main__":
    main()
