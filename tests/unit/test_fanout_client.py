"""Unit: the fan-out's per-client state machine (fast path, slow path, resync, disconnect).

A recording transport stands in for aiohttp's here, and only here: the real-process tests
(tests/test_viewer.py, test_viewer_abuse.py) drive the same code with real sockets and clients.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from viewer.fanout import CONTINUATION, TEXT, Client, Fanout, Limits, ws_frame

SNAPSHOT = (b'{"topic":"snapshot",', b'"episodes":[]}')


class Transport:
    """Records every write; ``buffered`` is what a client has not read yet."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str) -> None:
        return None


class Writer:
    async def drain(self) -> None:
        pass


def attach(fanout: Fanout) -> tuple[Client, Transport]:
    transport = Transport()
    client = fanout.attach(SimpleNamespace(closed=False), Writer(), SimpleNamespace(transport=transport,
                                                                                   remote="127.0.0.1"))
    return client, transport


def fanout(**limits: int) -> Fanout:
    return Fanout(Limits(**limits), lambda: SNAPSHOT)


async def settle(client: Client) -> None:
    """Run the client's writer task until it hands the client back to the fast path."""
    if client.task is None:
        client.task = asyncio.create_task(client.write_loop())
    for _ in range(100):
        await asyncio.sleep(0)
        if client.fast:
            return
    raise AssertionError("the writer task did not finish")


def test_frames_carry_the_payload_length_in_the_rfc_6455_forms():
    assert ws_frame(b"x" * 125)[:2] == bytes([0x81, 125])
    assert ws_frame(b"x" * 126)[:4] == bytes([0x81, 126, 0, 126])
    assert ws_frame(b"x" * 65536)[:10] == bytes([0x81, 127]) + (65536).to_bytes(8, "big")
    assert ws_frame(b"ab", CONTINUATION, fin=False) == bytes([0x00, 2]) + b"ab"


def test_a_new_client_gets_the_snapshot_first_as_fragments_then_joins_the_fast_path():
    async def scenario() -> None:
        hub = fanout(chunk=16)
        client, transport = attach(hub)
        assert not client.fast and client.resync
        await settle(client)
        payload = b"".join(SNAPSHOT)
        opcodes = [frame[0] for frame in transport.writes]
        assert opcodes[0] == TEXT and opcodes[-1] == 0x80 | CONTINUATION and len(opcodes) == -(-len(payload) // 16)
        assert b"".join(frame[2:] for frame in transport.writes) == payload
        assert client.sent == 1  # one message, however many fragments
        client.task.cancel()

    asyncio.run(scenario())


def test_one_burst_is_one_write_to_a_fast_client_and_queued_for_a_slow_one():
    async def scenario() -> None:
        hub = fanout(slow_bytes=1000)
        fast, fast_transport = attach(hub)
        slow, slow_transport = attach(hub)
        await settle(fast)
        await settle(slow)
        for transport in (fast_transport, slow_transport):
            transport.writes.clear()
        slow_transport.buffered = 1001
        hub.publish("episode", b'{"seq":1}')
        hub.publish("episode", b'{"seq":2}')
        await asyncio.sleep(0)  # the flush runs once the burst ends
        assert fast_transport.writes == [ws_frame(b'{"seq":1}') + ws_frame(b'{"seq":2}')]
        assert fast.sent == 1 + 2 and hub.published == 2  # the snapshot, then the burst
        assert slow_transport.writes == [] and list(slow.queue) == [ws_frame(b'{"seq":1}'), ws_frame(b'{"seq":2}')]
        assert not slow.fast
        for client in (fast, slow):
            client.task.cancel()

    asyncio.run(scenario())


def test_a_slow_client_keeps_only_the_newest_board_and_counts_the_ones_it_missed():
    client, _ = attach(fanout())
    client.resync = False
    for n in range(3):
        client.push("board", b"board %d" % n)
    client.push("heartbeat", b"beat")
    assert client.latest == {"board": b"board 2", "heartbeat": b"beat"} and client.dropped == 2
    assert not client.queue


def test_ordered_messages_wait_for_a_due_snapshot_to_include_them():
    client, _ = attach(fanout())
    assert client.resync
    client.push("episode", b"episode")
    assert not client.queue  # the snapshot, taken when it is written, covers it


def test_a_full_queue_turns_into_a_resync_and_too_many_in_a_row_disconnect():
    hub = fanout(max_queue=2, max_resyncs=2)
    client, _ = attach(hub)
    client.resync = False
    for round_ in range(1, 3):
        for n in range(3):
            client.push("episode", b"%d" % n)
            client.resync = False  # as if the writer task had written the snapshot, without catching up
        assert client.resyncs == round_ and client.failure is None
    for n in range(3):
        client.push("episode", b"%d" % n)
    assert client.failure == "too slow: resynchronised 2 times without catching up"
    assert client not in hub.clients() and hub.disconnected == {"too slow": 1}


def test_a_new_run_resyncs_every_client_and_forgives_earlier_resyncs():
    hub = fanout(max_resyncs=1)
    clients = [attach(hub)[0] for _ in range(3)]
    for client in clients:
        client.resync, client.resyncs_in_a_row = False, 1
        client.queue.append(b"old")
    hub.resync_all()
    assert all(c.resync and not c.queue and c.failure is None and c.resyncs_in_a_row == 1 for c in clients)


def test_a_closed_transport_fails_the_client_once_with_the_first_reason():
    async def scenario() -> None:
        hub = fanout()
        client, transport = attach(hub)
        transport.closing = True
        client.task = asyncio.create_task(client.write_loop())
        await asyncio.sleep(0)
        assert client.failure == "connection lost" and hub.clients() == ()
        client.fail("send timeout: later")
        assert client.failure == "connection lost" and hub.disconnected == {"connection lost": 1}

    asyncio.run(scenario())


@pytest.mark.parametrize("topic", ["status", "metrics", "episode"])
def test_history_topics_are_queued_in_order_for_a_slow_client(topic):
    client, _ = attach(fanout())
    client.resync = False
    for n in range(3):
        client.push(topic, b"%d" % n)
    assert list(client.queue) == [b"0", b"1", b"2"] and not client.latest
