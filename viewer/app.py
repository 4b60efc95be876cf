"""The viewer's web application: one factory, the runs (`viewer.runs`, their hubs), one fan-out, thin handlers.

Routes: ``GET /`` (the page), ``/static/*``, ``GET /ws`` (snapshots, then the
live streams; see docs/VIEWER.md), ``GET /api/runs``, ``GET /api/runs/{id}``,
``GET /api/runs/{id}/episodes[/{name}]`` (`viewer.replays`),
``GET /api/status``, ``GET /healthz`` and ``POST /api/control`` (needs the
control token). Every error, aiohttp's own 404, 405 and 413 included, is
``{"ok": false, "error": ...}``. ``/ws`` and ``/api/control`` refuse a request
whose ``Origin`` is another site's (unless ``--allow-origin``): any page the
user visits could otherwise read the streams or, with the token, send commands.
Every route refuses a request whose ``Host`` is not one of the viewer's names
(421): a page on a name the attacker re-points at 127.0.0.1 (DNS rebinding) is
same-origin with the viewer as far as the browser knows, so only ``Host`` tells.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError

from tetriszmq.stream.protocol import Command, ProtocolError, command_of, decode_request, json_type
from viewer import replays
from viewer.fanout import Client, Limits, Watch
from viewer.hub import NoReply
from viewer.runs import ControlError, Runs, RunsSettings

STATIC = Path(__file__).resolve().parent / "static"
CONTROL_COMMANDS = (Command.STOP, Command.PAUSE, Command.RESUME, Command.SAVE)
MAX_CONTROL_BODY = 1024
MAX_BROWSER_MESSAGE = 4096  # a browser sends only `watch` messages; anything bigger closes the socket
RUN_ID = re.compile(r"[A-Za-z0-9._~-]{1,200}")
CLOSE_TIMEOUT = 2.0
B64TOKEN = r"[A-Za-z0-9\-._~+/]+=*"  # what a token may be, so that a header can carry it
BEARER = re.compile(rf"([A-Za-z]+) +({B64TOKEN})")  # RFC 6750 2.1: a scheme (any case), exactly one token
TOKEN = re.compile(B64TOKEN)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tetriszmq"'}
WRONG_TOKEN = {"WWW-Authenticate": 'Bearer realm="tetriszmq", error="invalid_token"'}

log = logging.getLogger("viewer.app")


@dataclass(frozen=True)
class Settings:
    """:param allow_origins: other sites' origins that may use /ws and /api/control (``*``: any)."""

    runs: RunsSettings = field(default_factory=RunsSettings)
    limits: Limits = field(default_factory=Limits)
    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""
    allow_origins: frozenset[str] = frozenset()
    ws_heartbeat: float = 15.0  # seconds between pings; a browser that does not pong is dropped


SETTINGS = web.AppKey("settings", Settings)
RUNS = web.AppKey("runs", Runs)
STARTED = web.AppKey("started", float)
HOSTS = web.AppKey("hosts", frozenset)
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=MAX_CONTROL_BODY, middlewares=[own_host, json_errors])
    app[SETTINGS], app[RUNS], app[STARTED] = settings, Runs(settings.runs, settings.limits), time.time()
    app[HOSTS] = own_names(settings)
    app.cleanup_ctx.append(_run_runs)
    app.on_shutdown.append(_disconnect_clients)
    app.router.add_routes([
        web.get("/", index),
        web.get("/ws", websocket),
        web.get("/api/runs", runs),
        web.get("/api/runs/{id}", one_run),
        web.get("/api/status", status),
        web.get("/healthz", healthz),
        web.post("/api/control", control),
        web.get("/static/{name}", static),
        web.get("/static/vendor/uplot/{name}", vendored),
    ])
    replays.add_routes(app, app[RUNS])
    return app


async def _run_runs(app: web.Application) -> AsyncIterator[None]:
    await app[RUNS].start()
    yield
    await app[RUNS].stop()


async def _disconnect_clients(app: web.Application) -> None:
    for client in app[RUNS].fanout.clients():
        client.fail("going away: the viewer is shutting down")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"ok": False, "error": message}, status, headers)


def own_names(settings: Settings) -> frozenset[str]:
    """The host names a request may be addressed to: loopback's, the bound host, each --allow-origin's host."""
    origins = {urlsplit(origin).hostname for origin in settings.allow_origins}
    return frozenset({*LOCAL_NAMES, settings.host.strip("[]").lower(), *filter(None, origins)})


def _host_name(host: str) -> str | None:
    """The name in a ``Host`` header (``Name:8080``, ``[::1]:8080``), lower case; None if it is not one."""
    try:
        parts = urlsplit(f"//{host}")
        parts.port  # noqa: B018  a port that is no number raises ValueError
    except ValueError:
        return None
    return parts.hostname and parts.hostname.rstrip(".")


def _ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@web.middleware
async def own_host(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refuse (421) a request addressed to a name that is not this viewer's, whatever the route.

    An address (``http://10.0.0.5:8080``) cannot be re-pointed, so any is served; a name must be
    loopback's, the ``--host``, or an ``--allow-origin``'s (``*``: any).
    """
    name = _host_name(request.host)
    allowed = request.app[SETTINGS].allow_origins
    if name is not None and ("*" in allowed or name in request.app[HOSTS] or _ip_literal(name)):
        return await handler(request)
    return _error(421, f"refused: this viewer is not {request.host[:80]!r} (a name re-pointed at it by another "
                  "site?); open it as http://127.0.0.1:<port>/, or add --allow-origin http://<that name>:<port>")


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
    return _file(STATIC, request.match_info["name"], "/static/")


async def vendored(request: web.Request) -> web.FileResponse:
    """The chart library, as its npm package ships it (see its SOURCE file)."""
    return _file(STATIC / "vendor" / "uplot", request.match_info["name"], "/static/vendor/uplot/")


def _file(folder: Path, name: str, route: str) -> web.FileResponse:
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        raise web.HTTPNotFound(text=f"no file {route}{name[:80]}")
    return web.FileResponse(path)


async def healthz(request: web.Request) -> web.Response:
    return _json({"ok": True})


async def status(request: web.Request) -> web.Response:
    """The viewer, its trainer links, and its clients (``?clients=1``: one entry each).

    ``trainer`` and ``run`` are the first ``--trainer``'s (else the first live run's), as when a
    viewer followed one trainer; ``trainers`` has every link.
    """
    app = request.app
    runs_ = app[RUNS]
    primary = runs_.primary()
    return _json({
        "viewer": {"pid": os.getpid(), "uptime": round(time.time() - app[STARTED], 3), "rss": _rss(),
                   "read_only": not app[SETTINGS].token},
        "trainer": primary and {"id": primary.run, **primary.hub.status()},
        "run": primary and primary.hub.run,
        "trainers": [{"id": feed.run, **feed.hub.status()} for feed in runs_.feeds],
        "relay": runs_.relay and runs_.relay.status(),
        "clients": runs_.fanout.status(per_client=request.query.get("clients") == "1"),
    })


async def runs(request: web.Request) -> web.Response:
    """Every run, live or finished: the run list."""
    return _json({"runs": list(request.app[RUNS].listing_entries().values())})


async def one_run(request: web.Request) -> web.Response:
    """One run's snapshot, as the WebSocket sends it (its whole history is loaded first, off the event loop),
    with its episode records (`viewer.replays`)."""
    ident = request.match_info["id"]
    try:
        body = await request.app[RUNS].opened(ident)
    except KeyError:
        raise web.HTTPNotFound(text=f"no run {ident[:80]}") from None
    if body:
        body = body[:-1] + b"," + orjson.dumps(await replays.listing(request.app, ident))[1:]
    return web.Response(body=body, content_type="application/json")


def _foreign(request: web.Request) -> str | None:
    """The request's ``Origin`` if it is another site's that --allow-origin does not admit.

    A request without one is not from a web page (curl, scripts); browsers send it with every
    WebSocket handshake and every cross-site POST.
    """
    origin = request.headers.get("Origin")
    allowed = request.app[SETTINGS].allow_origins
    if origin is None or "*" in allowed or origin in allowed or origin == f"{request.scheme}://{request.host}":
        return None
    return origin


async def control(request: web.Request) -> web.Response:
    """Forward stop/pause/resume/save to a run's trainer and return its reply, saying which run."""
    origin = _foreign(request)
    if origin is not None:
        return _error(403, f"cross-origin request refused: {origin[:80]} is not this viewer's page "
                      "(see --allow-origin)")
    credentials = BEARER.fullmatch(request.headers.get("Authorization", ""))
    if credentials is None or credentials[1].lower() != "bearer":
        return _error(401, "control needs the viewer's token: send 'Authorization: Bearer <token>'", CHALLENGE)
    if not hmac.compare_digest(credentials[2].encode(), request.app[SETTINGS].token.encode()):
        return _error(403, "wrong control token", WRONG_TOKEN)
    try:
        body = decode_request(await request.read(), {"cmd", "run"}, "body")
        cmd = command_of(body, CONTROL_COMMANDS)
        ident = _run_field(body)
    except ProtocolError as exc:
        return _error(400, str(exc))
    try:
        feed = request.app[RUNS].feed_for(ident)
    except ControlError as exc:
        return _error(exc.status, str(exc))
    hub = feed.hub
    try:
        reply = await hub.control(cmd)
    except NoReply as exc:
        return _error(504, f"{exc}; {hub.handshake}" if hub.handshake else str(exc))
    return _json({**reply, "run": feed.run}, 200 if reply.get("ok") else 409)


def _run_field(body: dict[str, Any]) -> str | None:
    ident = body.get("run")
    if ident is not None and not (isinstance(ident, str) and RUN_ID.fullmatch(ident)):
        raise ProtocolError(f'"run" must be a run id (letters, digits and . _ ~ -), got {json_type(ident)}'
                            if not isinstance(ident, str) else '"run" is not a run id')
    return ident


async def websocket(request: web.Request) -> web.StreamResponse:
    """One browser: snapshots, then the live streams, until either side gives up.

    ``/ws?runs=1``: runs mode from the start (the run list first, then what ``watch`` asks for);
    plain ``/ws``: every live run as the viewer of one trainer sent it, until a ``watch``.
    """
    origin = _foreign(request)
    if origin is not None:
        return _error(403, f"cross-origin WebSocket refused: {origin[:80]} is not this viewer's page "
                      "(see --allow-origin)")
    ws = web.WebSocketResponse(heartbeat=request.app[SETTINGS].ws_heartbeat, compress=False,
                               max_msg_size=MAX_BROWSER_MESSAGE, timeout=CLOSE_TIMEOUT)
    writer = await ws.prepare(request)
    fanout = request.app[RUNS].fanout
    client = fanout.attach(ws, writer, request)
    if request.query.get("runs") == "1":
        client.set_watch(Watch(frozenset()))
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
    """Read until the browser leaves, taking its ``watch`` messages.

    Anything that is not one is ignored (and counted), as before there were any; a ``watch``
    that is malformed closes the socket (1003) with what is wrong, so that its author finds out.
    """
    async for message in ws:
        if message.type is WSMsgType.ERROR:
            return
        watch = _watch_field(message.data) if message.type is WSMsgType.TEXT else None
        if watch is None:
            client.ignored += 1
            continue
        try:
            client.set_watch(parse_watch(watch))
        except ValueError as exc:
            await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=str(exc).encode()[:120])
            return


def _watch_field(text: str) -> Any:
    """The ``watch`` of a ``{"watch": ...}`` message; None for anything else."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return message.get("watch") if isinstance(message, dict) and "watch" in message else None


def parse_watch(watch: Any) -> Watch:
    """``{"runs": [ids] | "*", "boards": [ids] | "*"}``, a ``watch`` message's field; ValueError says what is wrong."""
    if not isinstance(watch, dict) or not watch.keys() <= {"runs", "boards"}:
        raise ValueError('expected {"watch": {"runs": [...] or "*", "boards": [...]}}')
    runs_, boards = watch.get("runs", []), watch.get("boards", [])
    return Watch(_ids(runs_, "runs"), _ids(boards, "boards"))


def _ids(value: Any, name: str) -> frozenset[str] | None:
    """A list of run ids, or None for ``"*"`` (all)."""
    if value == "*":
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and RUN_ID.fullmatch(v) for v in value):
        raise ValueError(f'"{name}" must be a list of run ids or "*"')
    return frozenset(value)


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
