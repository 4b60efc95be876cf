"""Unit: the fan-out's per-client state machine (fast path, slow path, resync, disconnect).

A recording transport stands in for aiohttp's here, and only here: the real-process tests
(tests/test_viewer.py, test_viewer_abuse.py) drive the same code with real sockets and clients.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from viewer.fanout import CONTINUATION, LISTING, TEXT, Client, Fanout, Limits, Message, Watch, ws_frame

SNAPSHOT = (b'{"topic":"snapshot",', b'"episodes":[]}')
RUN = "exp1"


class Source:
    """The runs: ``RUN`` is live (fed); ``loading`` ones have no snapshot yet."""

    def __init__(self) -> None:
        self.runs = {RUN}
        self.loading: set[str] = set()

    def fed(self) -> frozenset[str]:
        return frozenset({RUN})

    def known(self) -> set[str]:
        return self.runs

    def snapshot(self, run: str, legacy: bool) -> tuple[bytes, ...] | None:
        if run in self.loading:
            return None
        return (b'{"run":"%s",' % run.encode(), b'"legacy":%s}' % (b"true" if legacy else b"false"))


def received(transport: Transport) -> list[bytes]:
    """The messages written, fragments joined (every frame here is short: a 2-byte header)."""
    messages, parts = [], b""
    for write in transport.writes:
        while write:
            size = write[1] & 0x7F
            parts += write[2:2 + size]
            if write[0] & 0x80:
                messages.append(parts)
                parts = b""
            write = write[2 + size:]
    return messages


def message(topic: str, payload: bytes, run: str = RUN) -> Message:
    return Message(run, topic, payload, b'{"id":"%s",%s' % (run.encode(), payload[1:]))


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
    return Fanout(Limits(**limits), Source())


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
        assert not client.fast and client.due == {RUN}
        await settle(client)
        payload = b"".join(hub.source.snapshot(RUN, legacy=True))
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
        hub.publish(RUN, "episode", b'{"seq":1}', None)
        hub.publish(RUN, "episode", b'{"seq":2}', None)
        await asyncio.sleep(0)  # the flush runs once the burst ends
        assert fast_transport.writes == [ws_frame(b'{"seq":1}') + ws_frame(b'{"seq":2}')]
        assert fast.sent == 1 + 2 and hub.published == 2  # the snapshot, then the burst
        assert slow_transport.writes == [] and [m.raw for m in slow.queue] == [b'{"seq":1}', b'{"seq":2}']
        assert not slow.fast
        for client in (fast, slow):
            client.task.cancel()

    asyncio.run(scenario())


def test_messages_soon_after_a_broadcast_wait_and_go_out_together_in_the_next():
    async def scenario() -> None:
        hub = fanout(flush_period=0.05)
        client, transport = attach(hub)
        await settle(client)
        transport.writes.clear()
        hub.publish(RUN, "board", b'{"seq":1}', None)
        await asyncio.sleep(0)
        assert transport.writes == [ws_frame(b'{"seq":1}')], "an idle fan-out writes at once"
        for seq in (2, 3):  # two trainers' messages within the period: one write, once it is over
            hub.publish(RUN, "board", b'{"seq":%d}' % seq, None)
            await asyncio.sleep(0)
        assert len(transport.writes) == 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(transport.writes) == 1 and loop.time() < deadline:
            await asyncio.sleep(0.005)
        assert transport.writes[1:] == [ws_frame(b'{"seq":2}') + ws_frame(b'{"seq":3}')]
        client.task.cancel()

    asyncio.run(scenario())


def test_a_message_waiting_for_the_next_broadcast_never_follows_a_snapshot_that_holds_it():
    """The snapshot is taken from the hub, which already has every published message: one still waiting
    for its broadcast must go (to others) before the snapshot, not to this client after it (a contract
    test caught seq 129 after a snapshot at 130)."""
    async def scenario() -> None:
        hub = fanout(flush_period=0.05)
        early, _ = attach(hub)
        await settle(early)
        hub.publish(RUN, "board", b'{"seq":1}', None)
        await asyncio.sleep(0)  # broadcast at once: the next one waits for the period
        hub.publish(RUN, "status", b'{"seq":2}', None)
        late, transport = attach(hub)
        await settle(late)
        loop = asyncio.get_running_loop()
        broadcast = hub._flushed + hub.limits.flush_period  # the one scheduled for the status
        while loop.time() <= broadcast or hub._batch:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        assert received(transport) == [b"".join(hub.source.snapshot(RUN, legacy=True))]
        assert not late.queue and not late.latest
        for client in (early, late):
            client.task.cancel()

    asyncio.run(scenario())


def test_clients_with_equal_watches_share_one_joined_write():
    async def scenario() -> None:
        hub = fanout()
        clients = [attach(hub) for _ in range(3)]
        for client, _ in clients:
            client.set_watch(Watch(frozenset({RUN}), frozenset({RUN})))  # equal, not the same object
            await settle(client)
        assert len({id(client.watch) for client, _ in clients}) == 1
        hub.publish(RUN, "board", b'{"seq":1}', b'{"id":"exp1","seq":1}')
        await asyncio.sleep(0)
        writes = [transport.writes[-1] for _, transport in clients]
        assert writes[0] == ws_frame(b'{"id":"exp1","seq":1}') and all(w is writes[0] for w in writes)
        for client, _ in clients:
            client.task.cancel()

    asyncio.run(scenario())


def test_a_slow_client_keeps_only_the_newest_board_and_counts_the_ones_it_missed():
    client, _ = attach(fanout())
    client.due.clear()
    for n in range(3):
        client.push(message("board", b"{%d}" % n))
    client.push(message("heartbeat", b"{beat}"))
    assert {key: m.raw for key, m in client.latest.items()} == {(RUN, "board"): b"{2}", (RUN, "heartbeat"): b"{beat}"}
    assert client.dropped == 2 and not client.queue


def test_ordered_messages_wait_for_a_due_snapshot_to_include_them():
    client, _ = attach(fanout())
    assert client.due == {RUN}
    assert not client.takes(message("episode", b"{}"))  # the snapshot, taken when it is written, covers it
    client.due.clear()
    assert client.takes(message("episode", b"{}"))


def test_a_full_queue_turns_into_a_resync_and_too_many_in_a_row_disconnect():
    hub = fanout(max_queue=2, max_resyncs=2)
    client, _ = attach(hub)
    client.due.clear()
    for round_ in range(1, 3):
        for n in range(3):
            client.push(message("episode", b"{%d}" % n))
            client.due.clear()  # as if the writer task had written the snapshot, without catching up
        assert client.resyncs == round_ and client.failure is None
    for n in range(3):
        client.push(message("episode", b"{%d}" % n))
    assert client.failure == "too slow: resynchronised 2 times without catching up"
    assert client not in hub.clients() and hub.disconnected == {"too slow": 1}


def test_a_new_process_resyncs_its_run_for_every_client_and_forgives_earlier_resyncs():
    hub = fanout(max_resyncs=1)
    clients = [attach(hub)[0] for _ in range(3)]
    for client in clients:
        client.due.clear()
        client.resyncs_in_a_row = 1
        client.queue.extend([message("episode", b"{old}"), message("episode", b"{other}", run="exp2")])
    hub.resync(RUN)
    for c in clients:
        assert c.due == {RUN} and [m.run for m in c.queue] == ["exp2"]
        assert c.failure is None and c.resyncs_in_a_row == 0


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
    client.due.clear()
    for n in range(3):
        client.push(message(topic, b"{%d}" % n))
    assert [m.raw for m in client.queue] == [b"{0}", b"{1}", b"{2}"] and not client.latest


def test_a_client_in_runs_mode_gets_the_run_list_first_then_what_it_watches_with_ids():
    async def scenario() -> None:
        hub = fanout()
        hub.source.runs = {RUN, "exp2", "exp3"}
        client, transport = attach(hub)
        client.set_watch(Watch(frozenset()))
        assert client.due == {LISTING} and not client.legacy
        await settle(client)
        assert received(transport) == [b'{"run":"","legacy":false}']
        client.set_watch(Watch(frozenset({"exp2"}), boards=frozenset({"exp3"})))
        assert client.due == {"exp2", "exp3"}
        await settle(client)
        transport.writes.clear()
        for run, topic in [("exp2", "episode"), ("exp2", "board"), ("exp3", "board"), (RUN, "episode")]:
            hub.publish(run, topic, b'{"topic":"%s"}' % topic.encode(), b'{"id":"%s","topic":"%s"}'
                        % (run.encode(), topic.encode()))
        await asyncio.sleep(0)
        assert received(transport) == [b'{"id":"exp2","topic":"episode"}', b'{"id":"exp3","topic":"board"}']
        client.task.cancel()

    asyncio.run(scenario())


def test_a_snapshot_still_loading_holds_back_only_its_own_run():
    async def scenario() -> None:
        hub = fanout()
        hub.source.runs = {RUN, "old"}
        hub.source.loading = {"old"}
        client, transport = attach(hub)
        client.set_watch(Watch(None))
        await settle(client)
        assert client.due == {"old"} and client.fast  # the others' snapshots went; the client is live
        hub.publish(RUN, "episode", b"{}", b'{"id":"exp1"}')
        hub.publish("old", "episode", b"{}", b'{"id":"old"}')
        await asyncio.sleep(0)
        assert received(transport)[-1] == b'{"id":"exp1"}'
        hub.source.loading.clear()
        hub.ready("old")
        await settle(client)
        assert client.due == set() and received(transport)[-1] == b'{"run":"old","legacy":false}'
        client.task.cancel()

    asyncio.run(scenario())


def test_a_history_message_the_snapshot_already_had_skips_runs_mode_but_not_legacy_clients():
    hub = fanout()
    legacy, _ = attach(hub)
    watching, _ = attach(hub)
    watching.set_watch(Watch(None))
    for client in (legacy, watching):
        client.due.clear()
    known = Message(RUN, "episode", b"{}", None)
    assert legacy.takes(known) and not watching.takes(known)
