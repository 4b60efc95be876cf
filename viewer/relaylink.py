"""The viewer's link to a relay: every trainer behind it is a live run, through one SUB and the relay's ROUTER.

The relay passes the trainers' messages byte for byte, each naming its process run id in the envelope,
so one SUB on its XPUB carries every trainer. `RelayLink` hands each message to that process's `Hub`
(made on its first message), which runs the clone pattern as it does for a trainer it follows
directly, its requests naming the process (`relay.encode_request`) on the relay's ROUTER.

Every second it asks the relay which processes it routes to (``runs``): a process the relay has not
listed, nor the stream carried, for `HubSettings.offline_after` seconds is gone (stopped, or
crashed: it stopped saying hello), and its hub is let go. A relay that does not answer changes
nothing: it may be restarting, ZeroMQ reconnects both sockets, and the hubs fill the gap with
``snapshot``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any, Protocol

import zmq.asyncio

from tetriszmq.stream.control import NoReply
from tetriszmq.stream.relay import RUNS, Side
from viewer.hub import HANDSHAKE_EVENTS, Hub, HubSettings, Link, request, run_of, subscriber, watch_handshakes

log = logging.getLogger("viewer.relaylink")


class Relayed(Protocol):
    """Who keeps the hubs (the runs): one is made for each process the relay carries, and let go when it is gone."""

    def relayed(self, process: str) -> Hub: ...

    async def vanished(self, process: str) -> None: ...


class RelayLink:
    """One relay's stream and control, demultiplexed into one hub per trainer process."""

    def __init__(self, side: Side, settings: HubSettings, runs: Relayed, every: float = 1.0) -> None:
        self.side, self.runs, self.every = side, runs, every
        self.settings = replace(settings, trainer=side.stream, ctl=side.control)
        self.ctx = zmq.asyncio.Context()
        self.hubs: dict[str, Hub] = {}  # by process run id
        self.missing: dict[str, float] = {}  # process -> since when (monotonic) it is neither listed nor heard
        self.counters = {"messages": 0, "malformed": 0, "listings": 0, "listing_failures": 0}
        self.handshake: str | None = None  # why the relay refused our connection, if it did
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        sub = subscriber(self.ctx, self.settings)
        monitor = sub.get_monitor_socket(HANDSHAKE_EVENTS)
        sub.connect(self.side.stream)
        watching = watch_handshakes(monitor, self, "relay", self.side.stream, curve=self.settings.curve is not None)
        self._tasks = [asyncio.create_task(self._receive(sub), name="relay-receive"),
                       asyncio.create_task(self._watch(), name="relay-watch"),
                       asyncio.create_task(watching, name="relay-watch-handshakes")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.ctx.destroy(linger=0)

    def status(self) -> dict[str, Any]:
        return {"stream": self.side.stream, "control": self.side.control, "processes": sorted(self.hubs),
                "handshake": self.handshake, **self.counters}

    async def _receive(self, sub: zmq.asyncio.Socket) -> None:
        try:
            while True:
                frames = await sub.recv_multipart()
                self.counters["messages"] += 1
                process = run_of(frames)
                if process is None:
                    self.counters["malformed"] += 1
                    continue
                hub = self.hubs.get(process)
                if hub is None:
                    hub = self.hubs[process] = self.runs.relayed(process)
                try:
                    hub.on_frames(frames)
                except Exception:  # a bug with one message must not stop the relay's stream
                    log.exception("failed to handle a %r message", frames[0][:40])
        finally:
            sub.close(linger=0)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                listed = await self._listing()
            except NoReply:
                self.counters["listing_failures"] += 1
                continue
            await self._let_go(listed)

    async def _listing(self) -> set[str]:
        """The processes the relay routes to now (NoReply: it did not answer)."""
        s = self.settings
        reply = await request(self.ctx, s.ctl, RUNS, timeout=s.request_timeout, retries=0, curve=s.curve)
        runs = reply.get("runs")
        if not reply.get("ok") or not isinstance(runs, list):
            raise NoReply(f"the relay did not list its runs: {reply.get('error', reply)}")
        self.counters["listings"] += 1
        return {run["run"] for run in runs if isinstance(run, dict) and isinstance(run.get("run"), str)}

    async def _let_go(self, listed: set[str]) -> None:
        """Let go of the processes that are neither listed nor heard since `offline_after` seconds."""
        now = time.monotonic()
        for process, hub in list(self.hubs.items()):
            if process in listed or hub.link is Link.ONLINE:
                self.missing.pop(process, None)
            elif now - self.missing.setdefault(process, now) >= self.settings.offline_after:
                del self.hubs[process], self.missing[process]
                log.info("process %s left the relay", process)
                await self.runs.vanished(process)
