"""The viewer's web application: one factory, one hub, one fan-out, thin handlers.

Routes: ``GET /`` (the page), ``/static/*``, ``GET /ws`` (snapshot, then the
live stream; see docs/VIEWER.md), ``GET /api/status``, ``GET /healthz`` and
``POST /api/control`` (needs the control token). Every error, aiohttp's own
404, 405 and 413 included, is ``{"ok": false, "error": ...}``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError

from tetriszmq.stream.protocol import Command, ProtocolError, command_of, decode_request
from viewer.fanout import Client, Fanout, Limits
from viewer.hub import Hub, HubSettings, NoReply

STATIC = Path(__file__).resolve().parent / "static"
CONTROL_COMMANDS = (Command.STOP, Command.PAUSE, Command.RESUME, Command.SAVE)
MAX_CONTROL_BODY = 1024
MAX_BROWSER_MESSAGE = 4096  # browsers send nothing the viewer needs; anything bigger closes the socket
CLOSE_TIMEOUT = 2.0
B64TOKEN = r"[A-Za-z0-9\-._~+/]+=*"  # what a token may be, so that a header can carry it
BEARER = re.compile(rf"([A-Za-z]+) +({B64TOKEN})")  # RFC 6750 2.1: a scheme (any case), exactly one token
TOKEN = re.compile(B64TOKEN)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tetriszmq"'}
WRONG_TOKEN = {"WWW-Authenticate": 'Bearer realm="tetriszmq", error="invalid_token"'}

log = logging.getLogger("viewer.app")


@dataclass(frozen=True)
class Settings:
    hub: HubSettings
    limits: Limits = field(default_factory=Limits)
    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""
    ws_heartbeat: float = 15.0  # seconds between pings; a browser that does not pong is dropped


SETTINGS = web.AppKey("settings", Settings)
HUB = web.AppKey("hub", Hub)
FANOUT = web.AppKey("fanout", Fanout)
STARTED = web.AppKey("started", float)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=MAX_CONTROL_BODY, middlewares=[json_errors])
    hub = Hub(settings.hub)
    app[SETTINGS], app[HUB], app[STARTED] = settings, hub, time.time()
    app[FANOUT] = Fanout(settings.limits, hub.snapshot_parts)
    app.cleanup_ctx.append(_run_hub)
    app.on_shutdown.append(_disconnect_clients)
    app.router.add_routes([
        web.get("/", index),
        web.get("/ws", websocket),
        web.get("/api/status", status),
        web.get("/healthz", healthz),
        web.post("/api/control", control),
        web.get("/static/{name}", static),
    ])
    return app


async def _run_hub(app: web.Application) -> AsyncIterator[None]:
    await app[HUB].start(app[FANOUT])
    yield
    await app[HUB].stop()


async def _disconnect_clients(app: web.Application) -> None:
    for client in app[FANOUT].clients():
        client.fail("going away: the viewer is shutting down")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"ok": False, "error": message}, status, headers)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413, ...) as the documented JSON, keeping their headers (``Allow``)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return _error(exc.status, exc.text or exc.reason, headers)
    except (ConnectionError, HttpProcessingError):
        raise  # the client's fault, not ours: aiohttp drops the connection, and the log stays quiet
    except Exception:  # a bug in a handler: still JSON, and still logged
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal error in the viewer (see its log)")


# Handlers ---------------------------------------------------------------------

async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def static(request: web.Request) -> web.FileResponse:
    """One file of the page; anything else is a JSON 404 (aiohttp's static route would answer an empty one)."""
    name = request.match_info["name"]
    path = (STATIC / name).resolve()
    if path.parent != STATIC or not path.is_file():
        raise web.HTTPNotFound(text=f"no file /static/{name[:80]}")
    return web.FileResponse(path)


async def healthz(request: web.Request) -> web.Response:
    return _json({"ok": True})


async def status(request: web.Request) -> web.Response:
    """The viewer, its trainer link and run, and its clients (``?clients=1``: one entry each)."""
    app = request.app
    hub = app[HUB]
    return _json({
        "viewer": {"pid": os.getpid(), "uptime": round(time.time() - app[STARTED], 3), "rss": _rss(),
                   "read_only": not app[SETTINGS].token},
        "trainer": hub.status(),
        "run": hub.run,
        "clients": app[FANOUT].status(per_client=request.query.get("clients") == "1"),
    })


async def control(request: web.Request) -> web.Response:
    """Forward stop/pause/resume/save to the trainer's REP and return its reply."""
    credentials = BEARER.fullmatch(request.headers.get("Authorization", ""))
    if credentials is None or credentials[1].lower() != "bearer":
        return _error(401, "control needs the viewer's token: send 'Authorization: Bearer <token>'", CHALLENGE)
    if not hmac.compare_digest(credentials[2].encode(), request.app[SETTINGS].token.encode()):
        return _error(403, "wrong control token", WRONG_TOKEN)
    try:
        cmd = command_of(decode_request(await request.read(), {"cmd"}, "body"), CONTROL_COMMANDS)
    except ProtocolError as exc:
        return _error(400, str(exc))
    hub = request.app[HUB]
    try:
        reply = await hub.control(cmd)
    except NoReply as exc:
        return _error(504, f"{exc}; {hub.handshake}" if hub.handshake else str(exc))
    return _json(reply, 200 if reply.get("ok") else 409)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """One browser: a snapshot, then the live stream, until either side gives up."""
    ws = web.WebSocketResponse(heartbeat=request.app[SETTINGS].ws_heartbeat, compress=False,
                               max_msg_size=MAX_BROWSER_MESSAGE, timeout=CLOSE_TIMEOUT)
    writer = await ws.prepare(request)
    fanout = request.app[FANOUT]
    client = fanout.attach(ws, writer, request)
    client.task = asyncio.create_task(client.write_loop(), name=f"ws-writer-{client.ident}")
    reader = asyncio.create_task(_read(ws, client), name=f"ws-reader-{client.ident}")
    try:
        await asyncio.wait((reader, client.task), return_when=asyncio.FIRST_COMPLETED)
    finally:
        fanout.detach(client)
        reader.cancel()
        client.task.cancel()
        await _close(ws, client)
    return ws


async def _read(ws: web.WebSocketResponse, client: Client) -> None:
    """Read until the browser leaves; what it sends is ignored (and counted)."""
    async for message in ws:
        if message.type is WSMsgType.ERROR:
            return
        client.ignored += 1


async def _close(ws: web.WebSocketResponse, client: Client) -> None:
    """Close with the failure as reason; a client that cannot even take a close frame is cut off."""
    transport = client.transport
    if ws.closed:
        return
    failure = client.failure or "going away"
    if failure.startswith("send timeout"):
        transport.abort()
        return
    code = WSCloseCode.GOING_AWAY if failure.startswith("going away") else WSCloseCode.TRY_AGAIN_LATER
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await ws.close(code=code, message=failure.encode()[:120])
    except TimeoutError:
        transport.abort()


def _rss() -> int | None:
    """Resident memory of this process in bytes (Linux), for bounded-memory checks."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None
