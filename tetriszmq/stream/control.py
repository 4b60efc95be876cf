"""A control client that survives a trainer that does not answer: the lazy pirate.

A REQ socket that lost its reply can never send again, so each attempt uses a
fresh socket, waits ``timeout`` seconds, and is closed without lingering.

Silence has several causes that look alike to the client: nothing listening, a CURVE
server that refuses the client's key (it just closes the connection) or that the client
holds the wrong public key for, a trainer that does not answer. `request` watches each
socket's connection and handshake (a ZeroMQ socket monitor) to say which it was.
"""

from __future__ import annotations

from typing import Any

import orjson
import zmq
from zmq.utils.monitor import recv_monitor_message

from tetriszmq.stream import protocol, relay
from tetriszmq.stream.protocol import Command
from tetriszmq.stream.security import ClientCurve


class NoReply(TimeoutError):
    """The trainer did not answer within the timeout, on any attempt."""


WATCHED = (zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
# What the events of an unanswered request say, the most telling first.
VERDICTS = (
    (zmq.EVENT_HANDSHAKE_FAILED_AUTH, "the server refused this client's CURVE key (is its public key in the "
                                      "trainer's or relay's allow folder?)"),
    (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
     "the handshake failed (is --curve-server-key that trainer's or relay's public key, and does it use CURVE?)"),
    (zmq.EVENT_HANDSHAKE_SUCCEEDED, "connected, but no answer came (a trainer that is stuck, or gone from the relay?)"),
    (zmq.EVENT_CONNECTED, "connected, but no handshake completed (is that a trainer's or relay's control port?)"),
)
UNREACHED = "could not connect: is the trainer (or relay) running there?"
WITHOUT_KEYS = ("the handshake failed: this client uses no CURVE keys; a server that uses CURVE needs "
                "--curve-server-key and --curve-secret-key")


def request(endpoint: str, cmd: Command | str, *, timeout: float = 3.0, retries: int = 2,
            curve: ClientCurve | None = None, ctx: zmq.Context | None = None, run: str | None = None
            ) -> dict[str, Any]:
    """Send one command and return the decoded reply (``{"ok": ...}``).

    ``run``: the run it is for, when ``endpoint`` is a relay's (see `tetriszmq.stream.relay`).
    """
    ctx = ctx or zmq.Context.instance()
    payload = protocol.encode_request(cmd) if run is None else relay.encode_request(str(cmd), run)
    events = 0
    for _ in range(retries + 1):
        with req_socket(ctx, endpoint, curve, watch=WATCHED) as sock:
            try:
                sock.send(payload)
                if sock.poll(int(timeout * 1000), zmq.POLLIN):
                    return decode_reply(sock.recv())
            finally:
                events |= unwatch(sock)
    raise no_reply(endpoint, retries, timeout, verdict(events, keyed=curve is not None))


def req_socket(ctx: zmq.Context, endpoint: str, curve: ClientCurve | None, watch: int = 0) -> zmq.Socket:
    """A fresh REQ socket for one attempt: no lingering, CURVE if given, connected.

    ``watch``: socket monitor events to record from before it connects (an event before the monitor
    is lost); the caller reads them with `unwatch`. Closed again, monitor and all, if it cannot be
    set up (a malformed endpoint): the caller never gets it to close.
    """
    sock = ctx.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        if watch:
            sock.get_monitor_socket(watch)
        if curve is not None:
            curve.apply(sock)
        sock.connect(endpoint)
    except BaseException:
        if watch:
            unwatch(sock)
        sock.close(linger=0)
        raise
    return sock


def unwatch(sock: zmq.Socket) -> int:
    """Stop the monitor of a socket `req_socket` watches and close it; the events it recorded, or-ed together."""
    monitor = sock.get_monitor_socket()  # the one it made (pyzmq hands back a live monitor)
    events = 0
    try:
        while monitor.poll(0):
            events |= recv_monitor_message(monitor)["event"]
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
    return events


def verdict(events: int, keyed: bool = True) -> str:
    """What the monitor ``events`` of an unanswered request say went wrong.

    ``keyed``: the client used CURVE; a failed handshake without keys is most likely a CURVE server, and the
    hint about ``--curve-server-key`` would name an option the user never gave.
    """
    if not keyed and events & (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
        return WITHOUT_KEYS
    return next((text for wanted, text in VERDICTS if events & wanted), UNREACHED)


def no_reply(endpoint: str, retries: int, timeout: float, why: str = "is the trainer running?") -> NoReply:
    return NoReply(f"no reply from {endpoint} after {retries + 1} attempts of {timeout:g}s: {why}")


def decode_reply(raw: bytes) -> dict[str, Any]:
    """A trainer's reply, or an ``ok: false`` one saying why it could not be read."""
    try:
        reply = orjson.loads(raw)
    except orjson.JSONDecodeError:
        reply = None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        return {"ok": False, "error": f"malformed reply from the trainer: {raw[:80]!r}"}
    return reply
