"""The broker on its own: staged messages reach PUB, the journal and the history, in order."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import orjson
from conftest import ROOT, free_port, reap, wait_for

from tetriszmq.stream.broker import Broker
from tetriszmq.stream.brokerd import _poll_ms
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


def test_close_returns_even_when_the_broker_process_has_died():
    """Issue 11: the close message was sent blocking, so a dead broker hung shutdown forever."""
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    broker = Broker(TrainerState(run="dies"), pub, ctl, hwm=1)
    broker.start()
    os.kill(broker.pid, signal.SIGKILL)
    wait_for(lambda: not broker.running, timeout=30, what="the broker process to die")
    while not broker.outbox.dropped:  # the pipe to the dead broker fills up
        broker.outbox.post(Topic.EPISODE, {"episode": 1})
    closer = threading.Thread(target=broker.close, kwargs={"timeout": 1.0}, daemon=True)
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "close() hung on a dead broker"


def test_a_poll_timeout_is_rounded_up_to_whole_milliseconds():
    """pyzmq truncates a float timeout: less than 1 ms before each deadline the loop spun on poll(0)
    (an idle broker polled 2,281 times for 32 heartbeats)."""
    assert [_poll_ms(s) for s in (0.0001, 0.0205, 0.001, 0.0, -0.5)] == [1, 21, 1, 0, 0]


def test_the_training_process_dying_ends_its_broker_and_frees_the_ports(tmp_path: Path):
    """The broker is a process of its own: a kill -9 of the training process must not leave it heartbeating
    a run that is gone, nor holding the ports a restarted trainer binds."""
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from tetriszmq.stream.broker import Broker
        from tetriszmq.stream.state import TrainerState
        broker = Broker(TrainerState(run="doomed"), {pub!r}, {ctl!r})
        broker.start()
        print(broker.pid, flush=True)
        time.sleep(600)
    """))
    trainer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        broker_pid = int(trainer.stdout.readline())
        assert request(ctl, "status")["ok"]
        trainer.kill()
        trainer.wait(30)
        wait_for(lambda: not _alive(broker_pid), timeout=30, what="the orphaned broker to exit")
    finally:
        reap([trainer])
    again = Broker(TrainerState(run="next"), pub, ctl)
    again.start()  # the same ports
    again.close()


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan is reaped by init, a child of the test by nobody)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_hand_off_larger_than_the_pipe_arrives_whole_and_in_order(subscribe):
    """The pipe holds 1 MiB: a bigger hand-off is written in part, finished by the next flushes, never torn."""
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    broker = Broker(TrainerState(run="big"), pub, ctl, heartbeat_every=0.1, metrics_every=3600)
    broker.start()
    try:
        sub = subscribe(pub, (b"episode",))
        beats = subscribe(pub, (b"heartbeat",))
        beats.recv(10)
        beats.recv(10)
        for episode in range(1, 301):  # 300 x 10 KB: 3 MB in one hand-off
            broker.outbox.stage(Topic.EPISODE, {"episode": episode, "note": "x" * 10_000})
        broker.outbox.flush()
        received: list[tuple[Topic, dict]] = []
        deadline = time.monotonic() + 60
        while len(received) < 300 and time.monotonic() < deadline:
            broker.outbox.flush(always=True)  # what the training thread's next hand-offs do
            with contextlib.suppress(TimeoutError):
                received.append(sub.recv(0.05))
    finally:
        broker.close()
    assert [payload["episode"] for _, payload in received] == list(range(1, 301))
    assert broker.outbox.dropped == 0
