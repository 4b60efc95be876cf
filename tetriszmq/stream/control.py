"""A control client that survives a trainer that does not answer: the lazy pirate.

A REQ socket that lost its reply can never send again, so each attempt uses a
fresh socket, waits ``timeout`` seconds, and is closed without lingering.
"""

from __future__ import annotations

from typing import Any

import orjson
import zmq

from tetriszmq.stream import protocol, relay
from tetriszmq.stream.protocol import Command
from tetriszmq.stream.security import ClientCurve


class NoReply(TimeoutError):
    """The trainer did not answer within the timeout, on any attempt."""


def request(endpoint: str, cmd: Command | str, *, timeout: float = 3.0, retries: int = 2,
            curve: ClientCurve | None = None, ctx: zmq.Context | None = None, run: str | None = None
            ) -> dict[str, Any]:
    """Send one command and return the decoded reply (``{"ok": ...}``).

    ``run``: the run it is for, when ``endpoint`` is a relay's (see `tetriszmq.stream.relay`).
    """
    ctx = ctx or zmq.Context.instance()
    payload = protocol.encode_request(cmd) if run is None else relay.encode_request(str(cmd), run)
    for _ in range(retries + 1):
        with req_socket(ctx, endpoint, curve) as sock:
            sock.send(payload)
            if sock.poll(int(timeout * 1000), zmq.POLLIN):
                return decode_reply(sock.recv())
    raise no_reply(endpoint, retries, timeout)


def req_socket(ctx: zmq.Context, endpoint: str, curve: ClientCurve | None) -> zmq.Socket:
    """A fresh REQ socket for one attempt: no lingering, CURVE if given, connected.

    Closed again if it cannot be set up (a malformed endpoint): the caller never gets it to close.
    """
    sock = ctx.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(sock)
        sock.connect(endpoint)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def no_reply(endpoint: str, retries: int, timeout: float) -> NoReply:
    return NoReply(f"no reply from {endpoint} after {retries + 1} attempts of {timeout:g}s: is the trainer running?")


def decode_reply(raw: bytes) -> dict[str, Any]:
    """A trainer's reply, or an ``ok: false`` one saying why it could not be read."""
    try:
        reply = orjson.loads(raw)
    except orjson.JSONDecodeError:
        reply = None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        return {"ok": False, "error": f"malformed reply from the trainer: {raw[:80]!r}"}
    return reply
