"""The broker thread on its own: staged messages reach PUB, the journal and the history, in order."""

from __future__ import annotations

import threading
from pathlib import Path

import orjson
import zmq
from conftest import free_port, wait_for

from tetriszmq.stream.broker import Broker, Outbox
from tetriszmq.stream.control import request
from tetriszmq.stream.protocol import Topic
from tetriszmq.stream.state import TrainerState


def test_one_flush_publishes_every_staged_message_in_order_with_its_own_seq(tmp_path: Path, subscribe):
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    journal = tmp_path / "metrics.jsonl"
    broker = Broker(TrainerState(run="staged"), pub, ctl, journal=journal, heartbeat_every=0.1, metrics_every=3600)
    broker.start()
    try:
        sub = subscribe(pub, (b"board", b"episode", b"metrics"))
        sub_beats = subscribe(pub, (b"heartbeat",))
        sub_beats.recv(10)  # connected: what is flushed from here on reaches the subscribers
        sub_beats.recv(10)
        for episode in (1, 2, 3):
            broker.outbox.stage(Topic.EPISODE, {"episode": episode, "reward": 1.0, "lines": 0, "length": 3,
                                                "timesteps": episode})
        broker.outbox.stage(Topic.BOARD, {"board": [[0] * 10] * 20, "episode": 4})
        broker.outbox.stage(Topic.METRICS, {"timesteps": 3, "episodes": 3, "sps": 1.0, "dropped": 0, "scalars": {}})

        snapshot = request(ctl, "snapshot")
        assert snapshot["episodes"] == [], "staged messages wait for the flush"

        broker.outbox.flush()
        received = [sub.recv(10) for _ in range(5)]
    finally:
        broker.close()
    topics = [topic for topic, _ in received]
    assert topics == [Topic.EPISODE] * 3 + [Topic.BOARD, Topic.METRICS]
    assert [payload["episode"] for _, payload in received[:3]] == [1, 2, 3]
    seqs = [payload["seq"] for _, payload in received]
    assert seqs == list(range(seqs[0], seqs[0] + 5)), "one seq per message, none shared by a batch"
    journaled = [orjson.loads(line) for line in journal.read_bytes().splitlines()]
    assert [m["episode"] for m in journaled if m["topic"] == "episode"] == [1, 2, 3]
    assert broker.outbox.dropped == 0


def test_close_returns_even_when_the_broker_thread_has_died():
    """Issue 11: the close message was sent blocking, so a dead broker thread hung shutdown forever."""
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    broker = Broker(TrainerState(run="dies"), pub, ctl, hwm=1)
    broker.start()
    Outbox(broker.ctx, broker.address, 1).close_broker(10)  # the thread ends, as if it had died
    broker._thread.join(10)
    assert not broker.running
    while not broker.outbox.dropped:  # the pipe to the dead thread fills up
        broker.outbox.post(Topic.EPISODE, {"episode": 1})
    closer = threading.Thread(target=broker.close, kwargs={"timeout": 1.0}, daemon=True)
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "close() hung on a dead broker thread"


def test_an_idle_broker_wakes_about_once_per_heartbeat_instead_of_spinning_before_each(monkeypatch):
    """pyzmq truncated the float timeout: less than 1 ms before each deadline the thread spun on poll(0),
    taking the GIL back from the training thread at every call."""
    polls = []
    poll = zmq.Poller.poll

    def counted(poller: zmq.Poller, timeout: int | None = None) -> list[tuple[object, int]]:
        if threading.current_thread().name == "tetriszmq-broker":
            polls.append(timeout)
        return poll(poller, timeout)

    monkeypatch.setattr(zmq.Poller, "poll", counted)
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    broker = Broker(TrainerState(run="idle"), pub, ctl, heartbeat_every=0.0205, metrics_every=3600)  # between two ms
    broker.start()
    try:
        wait_for(lambda: broker.history.seq >= 30, timeout=30, what="30 heartbeats")
        beats, wakes = broker.history.seq, len(polls)
    finally:
        broker.close()
    assert wakes <= 3 * beats, f"{wakes} polls for {beats} heartbeats: the thread spins before its deadlines"

