"""Unit: how the hub folds the trainer's snapshot into the live stream (no trainer, no sockets).

Messages go in through `Hub.on_frames` as the wire carries them; the trainer's snapshot reply is
scripted by overriding `Hub.control`; a recording sink stands in for the fan-out. The real trainer
and viewer do the same in tests/test_viewer.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from tetriszmq.stream import protocol
from tetriszmq.stream.protocol import Command, Topic
from viewer.hub import Hub, HubSettings

RUN = "run-1"
LISTS = {Topic.EPISODE: "episodes", Topic.METRICS: "metrics"}  # where a snapshot reply keeps them


def frames(topic: Topic, seq: int, run: str = RUN) -> list[bytes]:
    body = protocol.encode_body({"t": 1.0, "n": seq})
    return [protocol.TOPIC_FRAMES[topic], protocol.seal(protocol.envelope_prefix(topic, run), seq, body)]


def stored(topic: Topic, seq: int, run: str = RUN) -> dict[str, Any]:
    """A message as the trainer's snapshot holds it."""
    return orjson.loads(frames(topic, seq, run)[1])


class Sink:
    """Records what browsers would be sent, in order: stream messages by seq, the link's states apart."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.links: list[str] = []

    def publish(self, topic: str, payload: bytes) -> None:
        message = orjson.loads(payload)
        if topic == "link":
            self.links.append(message["state"])
        else:
            self.sent.append((str(topic), message["seq"]))

    def resync_all(self) -> None:
        self.sent.append(("resync", -1))


class ScriptedHub(Hub):
    """A hub whose control requests are answered from a queue the test fills."""

    def __init__(self) -> None:
        super().__init__(HubSettings(trainer="tcp://127.0.0.1:1", ctl="tcp://127.0.0.1:2"))
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.asked: list[Command] = []
        self.sink = Sink()

    async def control(self, cmd: Command) -> dict[str, Any]:
        self.asked.append(cmd)
        return await self.replies.get()

    async def answer(self, reply: dict[str, Any]) -> None:
        """Let the pending snapshot request complete with ``reply``."""
        await self.replies.put(reply)
        for _ in range(10):
            await asyncio.sleep(0)
        assert self.held is None, "the snapshot was not merged"


def snapshot(seq: int, *items: tuple[Topic, int], run: str = RUN) -> dict[str, Any]:
    reply: dict[str, Any] = {"ok": True, "run": run, "seq": seq, "status": None, "board": None,
                             "episodes": [], "metrics": []}
    for topic, item_seq in items:
        if topic in LISTS:
            reply[LISTS[topic]].append(stored(topic, item_seq, run))
        else:
            reply[str(topic)] = stored(topic, item_seq, run)
    return reply


def test_a_new_run_is_held_until_its_snapshot_then_browsers_resync_and_get_only_what_followed():
    async def scenario() -> None:
        hub = ScriptedHub()
        hub.on_frames(frames(Topic.EPISODE, 5))
        hub.on_frames(frames(Topic.BOARD, 6))
        hub.on_frames(frames(Topic.EPISODE, 7))
        await asyncio.sleep(0)  # the snapshot request runs as its own task
        assert hub.asked == [Command.SNAPSHOT] and hub.status()["syncing"]
        assert hub.sink.sent == []  # not even a board: no browser sees a run before that run's snapshot
        assert hub.sink.links == ["online"]
        await hub.answer(snapshot(6, (Topic.EPISODE, 1), (Topic.EPISODE, 5), (Topic.BOARD, 6)))
        assert hub.sink.sent == [("resync", -1), ("episode", 7)]  # board 6 is in the snapshot
        assert hub.run == RUN and hub.history.seq == 7
        assert [orjson.loads(e)["seq"] for e in hub.history.episodes] == [1, 5, 7]

    asyncio.run(scenario())


def test_a_gap_is_refilled_from_the_snapshot_in_seq_order_without_a_resync():
    async def scenario() -> None:
        hub = ScriptedHub()
        hub.on_frames(frames(Topic.EPISODE, 1))
        await hub.answer(snapshot(1, (Topic.EPISODE, 1)))
        hub.sink.sent.clear()
        hub.on_frames(frames(Topic.EPISODE, 2))
        hub.on_frames(frames(Topic.EPISODE, 5))  # 3 and 4 were lost on the way
        await asyncio.sleep(0)
        assert hub.counters["gaps"] == 1 and hub.asked == [Command.SNAPSHOT] * 2
        hub.on_frames(frames(Topic.HEARTBEAT, 6))
        await hub.answer(snapshot(5, *((Topic.EPISODE, s) for s in (1, 2, 3, 5)), (Topic.METRICS, 4)))
        assert hub.sink.sent == [("episode", 2), ("heartbeat", 6), ("episode", 3), ("metrics", 4), ("episode", 5)]
        assert hub.history.seq == 6 and hub.counters["snapshots"] == 2

    asyncio.run(scenario())


def test_without_a_snapshot_the_history_resumes_at_the_first_held_message():
    async def scenario() -> None:
        hub = ScriptedHub()
        hub.on_frames(frames(Topic.EPISODE, 10))
        hub.on_frames(frames(Topic.EPISODE, 11))
        await hub.answer({"ok": False, "error": "no reply"})
        assert hub.counters["snapshot_failures"] == 1
        assert hub.sink.sent == [("resync", -1), ("episode", 10), ("episode", 11)]
        assert hub.history.seq == 11

    asyncio.run(scenario())


def test_a_snapshot_of_another_run_is_not_merged():
    async def scenario() -> None:
        hub = ScriptedHub()
        hub.on_frames(frames(Topic.EPISODE, 3))
        await hub.answer(snapshot(9, (Topic.EPISODE, 9), run="run-0"))
        assert hub.counters == {**hub.counters, "snapshots": 0, "snapshot_failures": 1}
        assert [orjson.loads(e)["seq"] for e in hub.history.episodes] == [3]

    asyncio.run(scenario())


def test_messages_already_covered_by_the_snapshot_are_not_sent_twice():
    async def scenario() -> None:
        hub = ScriptedHub()
        hub.on_frames(frames(Topic.EPISODE, 1))
        await hub.answer(snapshot(3, (Topic.EPISODE, 1), (Topic.EPISODE, 2), (Topic.EPISODE, 3)))
        hub.sink.sent.clear()
        hub.on_frames(frames(Topic.EPISODE, 3))
        hub.on_frames(frames(Topic.EPISODE, 4))
        assert hub.sink.sent == [("episode", 4)] and hub.counters["gaps"] == 0

    asyncio.run(scenario())
