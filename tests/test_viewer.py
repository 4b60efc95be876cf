"""The viewer end to end: real trainers, real viewer processes, WebSocket clients like browsers."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
import zmq
from conftest import TrainerProcess, free_port, reap, start_trainer, wait_for
from viewer_support import Recorder, ViewerProcess, connect, fetch_status, journal

from tetriszmq.stream.broker import Broker
from tetriszmq.stream.protocol import Topic
from tetriszmq.stream.state import TrainerState
from viewer.hub import Hub, HubSettings, Link, handshake_problem

LONG = ("--set", "train.max_timesteps=100000")


def endpoints() -> tuple[str, str]:
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


def run(body: Callable[[aiohttp.ClientSession], Awaitable[None]]) -> None:
    """Run an async test body with one client session."""
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await body(session)
    asyncio.run(main())


def is_episode(m: dict[str, Any]) -> bool:
    return m["topic"] == "episode"


async def control(session: aiohttp.ClientSession, viewer: ViewerProcess, body: Any,
                  token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(viewer.url + "/api/control", data=data, headers=headers) as response:
        return response.status, await response.json()


def test_a_client_attached_late_gets_the_runs_history_from_its_start(trainers, viewers):
    pub, ctl = endpoints()
    viewer = viewers(pub, ctl)  # the viewer starts first: it waits for the trainer

    async def body(session: aiohttp.ClientSession) -> None:
        early = await connect(session, viewer)
        first = await early.until(lambda m: True)
        assert (first["topic"], first["run"], first["link"]["state"]) == ("snapshot", None, "waiting")
        trainer = trainers(pub=pub, ctl=ctl)
        await early.until(lambda m: m["topic"] == "status" and m["state"] == "stopped", timeout=90)
        assert trainer.wait(30) == 0

        late = await connect(session, viewer)
        snapshot = await late.until(lambda m: True)
        assert snapshot["topic"] == "snapshot" and snapshot["run"] == early.snapshots()[-1]["run"]
        assert snapshot["status"]["state"] == "stopped"
        assert [e["episode"] for e in snapshot["episodes"]] == list(range(1, len(snapshot["episodes"]) + 1))
        for topic in ("episode", "metrics"):
            truth = journal(trainer, topic)
            assert truth, f"the tiny run published no {topic}"
            assert late.history(topic) == truth
            assert early.history(topic) == truth

    run(body)


def test_a_restarted_trainer_is_picked_up_as_a_new_run(trainers, viewers):
    pub, ctl = endpoints()
    first = trainers(*LONG, pub=pub, ctl=ctl)
    viewer = viewers(pub, ctl, "--offline-after", "1")

    async def body(session: aiohttp.ClientSession) -> None:
        client = await connect(session, viewer)
        old = await client.until(lambda m: is_episode(m), timeout=60)
        first.proc.kill()
        first.proc.wait(10)
        await client.until(lambda m: m["topic"] == "link" and m["state"] == "offline", timeout=10)
        assert viewer.status()["trainer"]["link"] == "offline"
        trainers(*LONG, pub=pub, ctl=ctl)
        fresh = await client.until(lambda m: m["topic"] == "snapshot" and m["run"] not in (None, old["run"]),
                                   timeout=60)
        live = await client.until(is_episode, timeout=60)
        assert live["run"] == fresh["run"]
        assert viewer.status()["trainer"]["link"] == "online"

    run(body)


def stalled_socket(viewer: ViewerProcess) -> socket.socket:
    """A browser that completes the WebSocket handshake and then never reads."""
    host, port = viewer.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (host.encode(), key))
    return sock


def test_stalled_clients_neither_cost_the_others_a_frame_nor_grow_the_viewers_memory(trainers, viewers):
    trainer = trainers(*LONG, "--set", "publish.board_fps=400")
    viewer = viewers(trainer.pub, trainer.ctl, "--send-timeout", "2")
    stalled = 20
    slow_limit = 64 * 1024 + 32 * 1024  # Limits.slow_bytes + one snapshot fragment

    async def body(session: aiohttp.ClientSession) -> None:
        healthy = await connect(session, viewer)
        await healthy.until(lambda m: m["topic"] == "board", timeout=60)
        rss_before = (await fetch_status(session, viewer))["viewer"]["rss"]
        sockets = [stalled_socket(viewer) for _ in range(stalled)]
        start = len(healthy.messages)
        reading = asyncio.create_task(healthy.until(lambda m: False, timeout=60))
        try:
            async with asyncio.timeout(40):
                while True:
                    status = await fetch_status(session, viewer)
                    clients = status["clients"]
                    assert max((c["buffered"] for c in clients["per_client"]), default=0) <= slow_limit
                    assert status["viewer"]["rss"] - rss_before < 32 << 20
                    if clients["disconnected"].get("send timeout", 0) == stalled:
                        break
                    await asyncio.sleep(0.2)
        finally:
            reading.cancel()
            for sock in sockets:
                sock.close()
        assert clients["clients"] == 1 and clients["per_client"][0]["dropped"] == 0
        live = [m for m in healthy.messages[start:] if "seq" in m]
        assert len(live) > 500
        assert [m["seq"] for m in live] == list(range(live[0]["seq"], live[-1]["seq"] + 1))

    run(body)


def test_control_needs_the_token_and_stop_stops_the_trainer(trainers, viewers):
    trainer = trainers(*LONG)
    viewer = viewers(trainer.pub, trainer.ctl, env={"TETRISZMQ_TOKEN": "s3cret"})
    assert viewer.token == "s3cret"
    # a remote trainer is named by its endpoint until the viewer hears its run, then by the run
    wait_for(lambda: viewer.status()["trainer"]["id"].startswith("trainer~tiny-"), what="the trainer's run heard")

    async def body(session: aiohttp.ClientSession) -> None:
        status, reply = await control(session, viewer, {"cmd": "stop"})
        assert status == 401 and not reply["ok"] and "token" in reply["error"]
        status, reply = await control(session, viewer, {"cmd": "stop"}, token="guess")
        assert (status, reply) == (403, {"ok": False, "error": "wrong control token"})
        for bad in (b"stop", b"[]", b'{"cmd": "status"}', b'{"cmd": "stop", "force": true}', b'{"cmd": []}'):
            status, reply = await control(session, viewer, bad, token="s3cret")
            assert status == 400 and not reply["ok"], bad
        async with session.post(viewer.url + "/api/control", data=b"x" * 5000,
                                headers={"Authorization": "Bearer s3cret"}) as response:
            assert response.status == 413
        assert trainer.proc.poll() is None
        status, reply = await control(session, viewer, {"cmd": "stop"}, token="s3cret")
        ident = viewer.status()["trainer"]["id"]  # the run it acted on: its only trainer's
        assert (status, reply) == (200, {"ok": True, "state": "stopping", "run": ident})

    run(body)
    assert trainer.wait(60) == 0


def test_status_reports_the_viewer_the_trainer_link_and_the_clients(viewers):
    pub, ctl = endpoints()
    viewer = viewers(pub, ctl)

    async def body(session: aiohttp.ClientSession) -> None:
        clients = [await connect(session, viewer) for _ in range(3)]
        for client in clients:
            await client.until(lambda m: m["topic"] == "snapshot")
        status = viewer.status()
        assert status["run"] is None
        assert status["trainer"] | {"link": "waiting", "trainer": pub, "ctl": ctl} == status["trainer"]
        assert status["clients"]["clients"] == 3 and len(status["clients"]["per_client"]) == 3
        assert status["viewer"]["pid"] == viewer.proc.pid and status["viewer"]["rss"] > 0
        assert viewer.get("/healthz") == {"ok": True}
        async with session.post(viewer.url + "/api/control", data=b'{"cmd": "pause"}',
                                headers={"Authorization": f"Bearer {viewer.token}"}) as response:
            assert response.status == 504 and "no reply" in (await response.json())["error"]

    run(body)


def test_a_gap_in_the_stream_is_filled_from_the_trainers_snapshot():
    pub, ctl = endpoints()
    broker = Broker(TrainerState(run="gap-test"), pub, ctl, heartbeat_every=0.1)
    broker.start()

    async def body() -> None:
        hub, recorder = Hub(HubSettings(pub, ctl)), Recorder()
        receive = hub.on_frames
        hub.on_frames = lambda frames: None if b'"episode":5,' in frames[1] else receive(frames)  # lost on the wire
        await hub.start(recorder)
        try:
            async with asyncio.timeout(20):
                while hub.link is not Link.ONLINE or hub.held is not None:
                    await asyncio.sleep(0.02)
                for episode in range(1, 11):
                    broker.outbox.post(Topic.EPISODE, {"episode": episode, "reward": 1.0, "lines": 0, "length": 3,
                                                       "timesteps": episode})
                while not any(m["topic"] == "episode" and m["episode"] == 10 for m in recorder.messages):
                    await asyncio.sleep(0.02)
        finally:
            await hub.stop()
        episodes = [m["episode"] for m in recorder.messages if m["topic"] == "episode"]
        assert episodes == list(range(1, 11))
        assert hub.counters["gaps"] == 1 and hub.counters["snapshots"] == 2
        history = [m["seq"] for m in recorder.messages if m["topic"] in ("episode", "status", "metrics")]
        assert history == sorted(set(history)), "history messages out of order or repeated"

    try:
        asyncio.run(body())
    finally:
        broker.close()


def test_a_failed_handshake_is_explained_by_which_side_uses_curve():
    """A plain viewer's failure without detail is the mismatch too (the trainer may hang up first)."""
    no_detail, mismatch = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    assert handshake_problem(zmq.EVENT_HANDSHAKE_SUCCEEDED, 0, curve=True) is None
    assert "security mismatch" in handshake_problem(no_detail, 0, curve=False)
    assert "security mismatch" in handshake_problem(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, mismatch, curve=True)
    assert "--curve-server-key the trainer's public key" in handshake_problem(no_detail, 0, curve=True)
    assert "refused this viewer's CURVE key" in handshake_problem(zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400, curve=True)

# --- tests that share one long run ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProcess]:
    """One long run that the tests below watch through their own viewers and leave training (as test_trainer.py's
    `training`): each trainer start costs an interpreter, torch and a first episode. They come last, so that it
    trains only while they run."""
    trainer = start_trainer(tmp_path_factory.mktemp("training") / "run", "--set", "train.max_timesteps=10000000")
    yield trainer
    reap([trainer.proc])


def test_two_viewers_relay_the_same_seq_stream(training, viewers):
    first, second = viewers(training.pub, training.ctl), viewers(training.pub, training.ctl)

    async def body(session: aiohttp.ClientSession) -> None:
        clients = [await connect(session, first), await connect(session, second)]
        for client in clients:
            await client.until(lambda m: m["topic"] == "snapshot" and m["run"] is not None, timeout=60)
        first_episode = (await clients[0].until(is_episode, timeout=60))["episode"]  # the shared run is under way
        for client in clients:
            await client.until(lambda m: is_episode(m) and m["episode"] >= first_episode + 15, timeout=60)
        live = [{(m["topic"], m["seq"]) for m in c.messages if "seq" in m and m["topic"] != "snapshot"}
                for c in clients]
        start = max(min(seq for _, seq in seqs) for seqs in live)
        end = min(max(seq for _, seq in seqs) for seqs in live)
        window = [{item for item in seqs if start <= item[1] <= end} for seqs in live]
        assert window[0] == window[1]
        assert sorted(seq for _, seq in window[0]) == list(range(start, end + 1)), "a healthy client lost messages"

    run(body)


def test_killing_a_viewer_leaves_the_trainer_training(training, viewers, subscribe):
    doomed, survivor = viewers(training.pub, training.ctl), viewers(training.pub, training.ctl)

    async def body(session: aiohttp.ClientSession) -> None:
        watcher = await connect(session, survivor)
        await watcher.until(is_episode, timeout=60)
        victim = await connect(session, doomed)
        await victim.until(is_episode)
        doomed.proc.kill()
        doomed.proc.wait(10)
        with pytest.raises(ConnectionError):
            await victim.until(lambda m: False, timeout=10)
        before = watcher.messages[-1]["seq"]
        after = await watcher.until(lambda m: is_episode(m) and m["seq"] > before + 20)
        assert training.proc.poll() is None and after["timesteps"] > 0

    run(body)
    sub = subscribe(training.pub, (b"heartbeat:",))
    _, beat = sub.recv(10)
    sub.until(lambda _, later: later["timesteps"] > beat["timesteps"], timeout=20)


def test_garbage_from_a_browser_closes_at_most_its_own_connection(training, viewers):
    viewer = viewers(training.pub, training.ctl)

    async def body(session: aiohttp.ClientSession) -> None:
        bystander, rude = await connect(session, viewer), await connect(session, viewer)
        await rude.until(lambda m: m["topic"] == "board", timeout=60)
        await rude.ws.send_str("{not json")
        await rude.ws.send_bytes(b"\x00\xff" * 10)
        await rude.until(lambda m: m["topic"] == "board")
        assert [c["ignored"] for c in viewer.status()["clients"]["per_client"]] in ([0, 2], [2, 0])
        await rude.ws.send_str("x" * 10_000)
        with pytest.raises(ConnectionError, match="1009"):
            await rude.until(lambda m: False, timeout=10)
        before = len(bystander.messages)
        await bystander.until(lambda m: is_episode(m) and len(bystander.messages) > before + 50)
        assert viewer.status()["clients"]["clients"] == 1

    run(body)
