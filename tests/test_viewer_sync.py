"""The viewer's hub keeps the stream's order promises (docs/VIEWER.md, "For client authors").

A real Broker publishes; the hub's sink is a recorder in its place (the fan-out's side is tested
with real browsers elsewhere).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from conftest import free_port, reap, wait_for
from viewer_support import Recorder, start_viewer

from tetriszmq.stream import protocol
from tetriszmq.stream.broker import Broker
from tetriszmq.stream.history import RunHistory
from tetriszmq.stream.relay import Relay, Side, Uplink
from tetriszmq.stream.state import TrainerState
from viewer.hub import Hub, HubSettings

EPISODE = {"episode": 1, "reward": 1.0, "lines": 0, "length": 3, "timesteps": 3}


def endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def with_broker(settings: Callable[[str, str], HubSettings], body: Callable[[Hub, Recorder, Broker], Any]) -> None:
    """Run ``body`` against a hub (made from ``settings(pub, ctl)``) that listens to a real broker."""
    pub, ctl = endpoint(), endpoint()
    broker = Broker(TrainerState(run="sync-test"), pub, ctl, heartbeat_every=0.05)
    broker.start()

    async def main() -> None:
        hub, recorder = Hub(settings(pub, ctl)), Recorder()
        await hub.start(recorder)
        try:
            async with asyncio.timeout(60):
                await body(hub, recorder, broker)
        finally:
            await hub.stop()

    try:
        asyncio.run(main())
    finally:
        broker.close()


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.02)


def test_no_message_of_a_run_reaches_browsers_before_that_runs_snapshot():
    """Even while the snapshot is slow to come (here: never, the control endpoint is silent)."""
    async def body(hub: Hub, recorder: Recorder, broker: Broker) -> None:
        await until(lambda: any(m["topic"] == "heartbeat" for m in recorder.messages) and hub.held is None)
        relayed = [m["topic"] for m in recorder.messages if m["topic"] != "link"]
        assert relayed[0] == "snapshot", relayed[:5]

    with_broker(lambda pub, ctl: HubSettings(pub, endpoint(), request_timeout=0.5, request_retries=0), body)


def test_a_snapshot_request_that_fails_in_any_way_lets_the_held_stream_go_on():
    async def body(hub: Hub, recorder: Recorder, broker: Broker) -> None:
        # Any failure, not only a timeout: a ctl endpoint ZeroMQ refuses (the viewer's CLI checks it at start).
        hub.settings = dataclasses.replace(hub.settings, ctl="tcp://127.0.0.1")
        await until(lambda: hub.run is not None)
        broker.outbox.post(protocol.Topic.EPISODE, dict(EPISODE))
        await until(lambda: any(m["topic"] == "episode" for m in recorder.messages))
        assert hub.counters["snapshot_failures"] >= 1 and hub.held is None

    with_broker(lambda pub, ctl: HubSettings(pub, ctl), body)


def test_unknown_topics_are_relayed_in_order_and_counted_not_warned_about(caplog):
    """A newer trainer may add topics (PROTOCOL.md, "Versioning"): their seq is no gap."""
    run = "future-run"

    def message(topic: str, seq: int) -> list[bytes]:
        prefix = b'{"v":1,"topic":"%s","run":"%s","seq":' % (topic.encode(), run.encode())
        return [f"{topic}:".encode(), protocol.seal(prefix, seq, orjson.dumps({**EPISODE, "t": 1.0}))]

    async def body() -> None:
        hub, recorder = Hub(HubSettings(endpoint(), endpoint())), Recorder()
        hub.sink, hub.history = recorder, RunHistory(run, 100)
        hub.history.seq = 0
        with caplog.at_level(logging.WARNING, logger="viewer.hub"):
            for seq, topic in enumerate(["episode", "forecast", "forecast", "episode"], start=1):
                hub.on_frames(message(topic, seq))
        assert [(m["topic"], m["seq"]) for m in recorder.messages if m["topic"] != "link"] == [
            ("episode", 1), ("forecast", 2), ("forecast", 3), ("episode", 4)]
        assert hub.held is None and hub.counters["gaps"] == 0 and hub.counters["malformed"] == 0
        assert hub.counters["unknown_topics"] == 2
        assert caplog.records == []

    asyncio.run(body())


def test_a_crowd_reconnecting_at_once_gets_its_snapshots_within_the_byte_budget(tmp_path):
    """Snapshots sent by time t stay under --snapshot-rate x (1 s + t) plus one snapshot (see SnapshotBudget).

    A slow machine only sends less: the bound cannot fail for lack of speed.
    """
    rate, crowd = 0.5e6, 10
    pub, ctl = endpoint(), endpoint()
    broker = Broker(TrainerState(run="crowd-test"), pub, ctl, heartbeat_every=0.2)
    broker.start()
    viewer = None
    try:
        for episode in range(1, 1001):
            broker.outbox.stage(protocol.Topic.EPISODE, {**EPISODE, "episode": episode})
            broker.outbox.stage(protocol.Topic.METRICS, {"timesteps": episode, "episodes": episode, "sps": 1.0,
                                                         "dropped": 0, "scalars": {"train/loss": 0.5}})
        broker.outbox.flush()
        viewer = start_viewer(tmp_path, pub, ctl, "--snapshot-rate", str(rate / 1e6))
        wait_for(lambda: viewer.status()["trainer"]["episodes"] == 1000)

        async def storm() -> tuple[list[int], float]:
            async with aiohttp.ClientSession() as session:
                start = time.monotonic()
                sockets = await asyncio.gather(*(session.ws_connect(viewer.url + "/ws", max_msg_size=0)
                                                 for _ in range(crowd)))
                sizes = [len((await ws.receive()).data) for ws in sockets]
                return sizes, time.monotonic() - start

        sizes, elapsed = asyncio.run(storm())
        assert sum(sizes) <= rate * (1 + elapsed) + 2 * max(sizes), (sum(sizes), elapsed)
    finally:
        broker.close()
        if viewer is not None:
            reap([viewer.proc])


def test_through_a_relay_that_does_not_know_the_run_yet_the_snapshot_is_asked_once_more():
    """A restarted relay relearns its routes from the trainers' hellos; the stream may come back first."""
    trainers_side, viewers_side = (Side(endpoint(), endpoint()) for _ in range(2))
    relay = Relay(trainers_side, viewers_side)
    ready = threading.Event()
    serving = threading.Thread(target=relay.serve, args=(ready.set,), daemon=True)
    serving.start()
    assert ready.wait(30)
    broker = Broker(TrainerState(run="sync-test"), endpoint(), endpoint(), heartbeat_every=0.05,
                    relay=Uplink(trainers_side))
    prefix = b'{"v":1,"topic":"episode","run":"sync-test","seq":'

    replies: list[dict[str, Any]] = []

    async def main() -> dict[str, int]:
        settings = HubSettings(viewers_side.stream, viewers_side.control, request_retries=0, run="sync-test")
        hub, recorder = Hub(settings), Recorder()
        control = hub.control

        async def noted(cmd: protocol.Command) -> dict[str, Any]:
            replies.append(await control(cmd))
            return replies[-1]

        hub.control = noted
        hub.attach(recorder)
        try:
            hub.on_frames([b"episode:", protocol.seal(prefix, 0, orjson.dumps({**EPISODE, "t": 1.0}))])
            async with asyncio.timeout(30):
                await until(lambda: bool(replies))
                broker.start()  # the trainer says hello only after the relay said it does not know the run
                await until(lambda: hub.held is None)
            return hub.counters
        finally:
            await hub.stop()

    try:
        counters = asyncio.run(main())
    finally:
        broker.close()
        relay.stop()
        serving.join(30)
    assert replies[0]["error"].startswith('unknown run "sync-test"') and replies[1]["run"] == "sync-test"
    assert (counters["snapshots"], counters["snapshot_failures"]) == (1, 0)
