"""Viewer subprocesses and WebSocket clients for the viewer's tests.

A pytest plugin (conftest.py names it in `pytest_plugins`): test modules get the `viewers` fixture
from there and import only the helpers from here. A viewer started with a ``prefix`` (another
network namespace) is reached through tests/viewer_probe.py run in that namespace.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import ROOT, TrainerProcess, free_port, reap

URL_LINE = re.compile(r"open (http://\S+)/#token=(\S+)")
PROBE = ROOT / "tests" / "viewer_probe.py"
SNAPSHOT_LISTS = {"episode": "episodes", "metrics": "metrics"}


@dataclass
class ViewerProcess:
    """A ``python -m viewer`` subprocess and the URL and token it printed."""

    proc: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    token: str = ""
    prefix: tuple[str, ...] = ()  # runs in another network namespace: reach it from there

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def probe(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run tests/viewer_probe.py where the viewer is (see its docstring for ``args``)."""
        return subprocess.run([*self.prefix, sys.executable, str(PROBE), *args], capture_output=True, text=True,
                               timeout=timeout)

    def get(self, path: str) -> dict[str, Any]:
        if self.prefix:
            result = self.probe("get", self.url + path)
            if result.returncode != 0:
                raise ConnectionError(result.stderr.strip())
            return orjson.loads(result.stdout)
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return orjson.loads(response.read())

    def status(self) -> dict[str, Any]:
        return self.get("/api/status?clients=1")

    def watch(self, seconds: float, live: int | None = None) -> list[dict[str, Any]]:
        """The digests of what one WebSocket client (plain /ws) received, through tests/viewer_probe.py."""
        args = ["watch", self.url, "--seconds", str(seconds), *(["--live", str(live)] if live else [])]
        result = self.probe(*args, timeout=seconds + 30)
        assert result.returncode == 0, result.stdout + result.stderr
        return [orjson.loads(line) for line in result.stdout.splitlines()]

    def control(self, cmd: str, run: str | None = None) -> dict[str, Any]:
        """``{"status", "reply"}`` of ``POST /api/control`` with the token, through tests/viewer_probe.py."""
        body = {"cmd": cmd, **({"run": run} if run else {})}
        result = self.probe("control", self.url, self.token, orjson.dumps(body).decode())
        assert result.returncode == 0, result.stderr
        return orjson.loads(result.stdout)

    def wait_ready(self, timeout: float = 30) -> None:
        """Poll until the viewer printed its URL and answers /healthz."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"viewer exited with {self.proc.returncode}:\n{self.output()}")
            found = URL_LINE.search(self.output())
            if found:
                self.url, self.token = found[1], found[2]
                try:
                    if self.get("/healthz")["ok"]:
                        return
                except (urllib.error.URLError, ConnectionError):
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"viewer not ready within {timeout}s:\n{self.output()}")


def start_viewer(log_dir: Path, pub: str | None, ctl: str | None, *extra: str, port: int | None = None,
                 env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> ViewerProcess:
    """A viewer of the trainer at ``pub``/``ctl`` (None: only its ``--runs``); without ``--runs`` in ``extra``,
    its runs folder is an empty one of its own, not the repository's ``runs/``."""
    log = log_dir / f"viewer.{time.monotonic_ns()}.log"
    trainer = ["--trainer", pub, "--ctl", ctl] if pub is not None and ctl is not None else []
    runs = [] if "--runs" in extra else ["--runs", str(log_dir / "viewer-runs")]
    args = [*prefix, sys.executable, "-m", "viewer", *trainer, *runs, "--port", str(port or free_port()), *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    viewer = ViewerProcess(proc, log, prefix=prefix)
    try:
        viewer.wait_ready()
    except BaseException:  # not handed to a fixture yet: reap it here
        proc.kill()
        proc.wait(10)
        raise
    return viewer


@pytest.fixture
def viewers(tmp_path: Path) -> Iterator[Callable[..., ViewerProcess]]:
    """Start viewers with ``viewers(pub, ctl, *extra_args)`` (``viewers(None, None, "--runs", DIR)``: no
    --trainer); all are killed at teardown."""
    started: list[ViewerProcess] = []

    def start(pub: str | None, ctl: str | None, *extra: str, port: int | None = None,
              env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> ViewerProcess:
        viewer = start_viewer(tmp_path, pub, ctl, *extra, port=port, env=env, prefix=prefix)
        started.append(viewer)
        return viewer

    yield start
    reap(viewer.proc for viewer in started)


@dataclass
class Browser:
    """A WebSocket client like the page: it keeps every message it receives, in order."""

    ws: aiohttp.ClientWebSocketResponse
    messages: list[dict[str, Any]] = field(default_factory=list)

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        """Read until a message satisfies ``predicate``; returns it."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.ws.receive()
                if message.type is not aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"socket ended: {message.type.name} {message.data!r} {message.extra!r}")
                self.messages.append(orjson.loads(message.data))
                if predicate(self.messages[-1]):
                    return self.messages[-1]

    async def watch(self, runs: list[str] | str, boards: list[str] = ()) -> None:
        await self.ws.send_str(orjson.dumps({"watch": {"runs": runs, "boards": list(boards)}}).decode())

    def snapshots(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["topic"] == "snapshot"]

    def history(self, topic: str) -> list[int]:
        """Seqs of the episodes or metrics this client holds: its last snapshot's, then live ones."""
        last = max(i for i, m in enumerate(self.messages) if m["topic"] == "snapshot")
        seqs = [m["seq"] for m in self.messages[last][SNAPSHOT_LISTS[topic]]]
        return seqs + [m["seq"] for m in self.messages[last + 1:] if m["topic"] == topic]


async def fetch_status(session: aiohttp.ClientSession, viewer: ViewerProcess) -> dict[str, Any]:
    """``/api/status`` with every client, without blocking the test's event loop."""
    async with session.get(viewer.url + "/api/status?clients=1") as response:
        return await response.json()


async def connect(session: aiohttp.ClientSession, viewer: ViewerProcess, runs: bool = False,
                  headers: dict[str, str] | None = None) -> Browser:
    """A browser on /ws; ``runs``: in runs mode, as the page (the run list first, then what it watches)."""
    ws = await session.ws_connect(viewer.url + ("/ws?runs=1" if runs else "/ws"), max_msg_size=0, heartbeat=None,
                                  headers=headers)
    return Browser(ws)


class Recorder:
    """A fan-out stand-in for a hub: it keeps what the hub publishes, and each resync as a ``snapshot`` marker."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def publish(self, topic: str, payload: bytes) -> None:
        self.messages.append(orjson.loads(payload))

    def resync_all(self) -> None:
        self.messages.append({"topic": "snapshot"})


def journal(trainer: TrainerProcess, topic: str) -> list[int]:
    """Seqs of one history topic in the trainer's own record (metrics.jsonl): the ground truth."""
    lines = (trainer.run_dir / "metrics.jsonl").read_bytes().splitlines()
    return [m["seq"] for m in map(orjson.loads, lines) if m["topic"] == topic]
