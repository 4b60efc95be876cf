"""The servers a measured run compares: the real viewer (``python -m viewer``, as users start it) and
the naive broadcaster a new user writes first."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson

from harness import ROOT
from harness.processes import SPAWN, reap, wait_for


def naive_viewer(pub: str, port: int) -> None:
    """What a new user writes first: decode once, then `send_str` to each client, from its own
    drop-oldest queue of 8, in its own task. No snapshot, no slow-client handling."""
    import asyncio

    import zmq
    import zmq.asyncio
    from aiohttp import web

    async def main() -> None:
        clients: dict[web.WebSocketResponse, tuple[deque[str], asyncio.Event]] = {}

        async def websocket(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            queue, ready = clients.setdefault(ws, (deque(maxlen=8), asyncio.Event()))
            try:
                while not ws.closed:
                    await ready.wait()
                    ready.clear()
                    while queue:
                        await ws.send_str(queue.popleft())
            except ConnectionError:
                pass
            finally:
                del clients[ws]
            return ws

        app = web.Application()
        app.router.add_get("/ws", websocket)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        sub = zmq.asyncio.Context().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(pub)
        while True:
            _, payload = await sub.recv_multipart()
            text = payload.decode()
            for queue, ready in clients.values():
                queue.append(text)
                ready.set()

    asyncio.run(main())


def get_json(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return orjson.loads(response.read())


def _listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def _relaying(port: int, trainers: int) -> bool:
    links = get_json(port, "/api/status")["trainers"]
    return len(links) == trainers and all(t["link"] == "online" and not t["syncing"] for t in links)


@contextmanager
def serving(kind: str, endpoints: Sequence[tuple[str, str]], port: int, extra: Sequence[str]) -> Iterator[int]:
    """Start the viewer (of every ``(pub, ctl)``) or the naive baseline (of the first) on ``port``;
    yield its pid once it relays the streams."""
    pub = endpoints[0][0]
    if kind == "naive":
        proc = SPAWN.Process(target=naive_viewer, args=(pub, port), daemon=True)
        proc.start()
        try:
            wait_for(lambda: _listening(port), 30, 0.1, what="naive viewer", alive=proc.is_alive, tolerate=(OSError,))
            time.sleep(0.5)  # its SUB connects on its own
            yield proc.pid
        finally:
            proc.terminate()
            reap(proc, 5)
        return
    trainers = [arg for pub, ctl in endpoints for arg in ("--trainer", f"{pub},{ctl}")]
    no_runs = tempfile.mkdtemp(prefix="bench-no-runs-")  # not the repository's runs/: only these trainers
    args = [sys.executable, "-m", "viewer", *trainers, "--runs", no_runs, "--port", str(port), "--token", "bench",
            *extra]
    viewer = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _relaying(port, len(endpoints)), 60, 0.1, what="viewer",
                 alive=lambda: viewer.poll() is None, tolerate=(OSError,))
        yield viewer.pid
    finally:
        viewer.terminate()
        try:
            viewer.wait(10)
        except subprocess.TimeoutExpired:
            viewer.kill()
            viewer.wait()
        assert viewer.stderr is not None
        errors = viewer.stderr.read().decode(errors="replace").strip()
        viewer.stderr.close()
        if viewer.returncode not in (0, -15) or "Traceback" in errors:
            print(f"viewer (exit {viewer.returncode}) said:\n{errors[-2000:]}", file=sys.stderr)
        os.rmdir(no_runs)

