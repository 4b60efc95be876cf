"""A client that follows every run behind a relay: one SUB, demultiplexed by the envelope's ``run``.

The clone pattern of docs/PROTOCOL.md per run, through the relay: the first message of a run, and
any jump in its ``seq`` (messages lost on the wire, as across a relay restart), asks the relay for
that run's ``snapshot``; its episodes and metrics fill the gap. It keeps the ``seq`` of every
episode and metrics message it holds, so a test can hold them against the trainer's journal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import zmq

from tetriszmq.stream import control
from tetriszmq.stream.relay import Side
from tetriszmq.stream.security import ClientCurve

KEPT = (b"episode:", b"metrics:")  # the topics a snapshot gives back in full
SILENCE = 0.5  # s without a message of a run (it heartbeats every 0.5 s at most, boards 30/s): an outage


@dataclass
class Follow:
    """One run as this client holds it."""

    seq: int = 0  # the last message applied
    kept: set[int] = field(default_factory=set)  # seqs of the episodes and metrics held
    live: int = 0  # messages applied from the stream
    lost: int = 0  # messages that never arrived on the wire (gaps)
    recovered: int = 0  # episodes and metrics of those gaps that a snapshot gave back
    snapshots: int = 0
    state: str = ""
    heard: float = 0.0  # unix time of the last message applied
    resumed: float = 0.0  # unix time of the first message applied after a silence (an outage), or the first


class Follower:
    """Follows every run on a relay's viewers side; call `step` in a loop."""

    def __init__(self, viewers: Side, curve: ClientCurve | None = None,
                 on_event: Callable[[dict[str, Any]], None] = lambda event: None) -> None:
        self.viewers, self.curve, self.on_event = viewers, curve, on_event
        self.ctx = zmq.Context.instance()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 100_000)
        if curve is not None:
            curve.apply(self.sub)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(viewers.stream)
        self.runs: dict[str, Follow] = {}

    def step(self, timeout: float = 0.1) -> None:
        """Apply what arrives within ``timeout`` seconds."""
        if not self.sub.poll(int(timeout * 1000)):
            return
        while self.sub.poll(0):
            topic, payload = self.sub.recv_multipart()
            self._offer(topic, orjson.loads(payload))

    def close(self) -> None:
        self.sub.close(linger=0)

    def _offer(self, topic: bytes, msg: dict[str, Any]) -> None:
        run, seq = msg["run"], msg["seq"]
        follow = self.runs.setdefault(run, Follow())
        if seq > follow.seq + 1:
            self._catch_up(run, follow, seq)
        if seq <= follow.seq:
            return
        now = time.time()
        if now - follow.heard > SILENCE:
            follow.resumed = now
        follow.seq, follow.heard = seq, now
        follow.live += 1
        if topic in KEPT:
            follow.kept.add(seq)
        if topic in (b"status:", b"heartbeat:"):
            follow.state = msg["state"]

    def _catch_up(self, run: str, follow: Follow, seen: int) -> None:
        """Messages after ``follow.seq`` are missing: take them from a snapshot (retried while the relay
        does not know the run yet, as just after its restart)."""
        deadline = time.monotonic() + 30
        while True:
            reply = control.request(self.viewers.control, "snapshot", run=run, curve=self.curve, ctx=self.ctx,
                                    timeout=2, retries=5)
            if reply["ok"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if not reply["ok"]:
            raise RuntimeError(f"no snapshot of {run}: {reply['error']}")
        items = [item["seq"] for item in reply["episodes"] + reply["metrics"] if item["seq"] > follow.seq]
        if follow.seq:  # a run's first snapshot is a late join, not a loss
            follow.lost += seen - 1 - follow.seq
            follow.recovered += sum(1 for s in items if s < seen)
        follow.kept.update(items)
        follow.seq = max(follow.seq, reply["seq"])
        follow.state = reply["status"]["state"] if reply.get("status") else follow.state
        follow.snapshots += 1
        self.on_event({"event": "snapshot", "run": run, "seq": follow.seq, "lineage": reply["lineage"]})
