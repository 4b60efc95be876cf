"""What every process that binds ZeroMQ sockets shares: the default endpoints, endpoint checks, a patient bind,
the request size cap.

The trainer's broker and the relay both bind; neither owns these, so they live here and both import
them (the relay must not depend on the broker, which dials out to the relay).
"""

from __future__ import annotations

import time

import zmq

DEFAULT_PUB, DEFAULT_CTL = "tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556"
MAX_WIRE_REQUEST = 1 << 20  # larger requests drop the connection instead of being read
ENDPOINT_SCHEMES = ("tcp", "ipc", "inproc")
BIND_RETRY = 2.0  # s during which an address in use is retried (see `bind`)


def check_endpoints(pub: str, ctl: str) -> None:
    """Refuse endpoints that cannot be bound, with a message that says why (ZeroMQ's would not)."""
    for name, endpoint in (("pub", pub), ("ctl", ctl)):
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(f"{name}={endpoint!r}: an endpoint is SCHEME://ADDRESS, e.g. tcp://127.0.0.1:5555")
        scheme, address = endpoint.split("://", 1)
        if scheme not in ENDPOINT_SCHEMES:
            raise ValueError(f"{name}={endpoint!r}: scheme {scheme!r} cannot be bound; use one of "
                             f"{', '.join(ENDPOINT_SCHEMES)}")
        if scheme == "tcp":
            host, _, port = address.rpartition(":")
            if not host or not (port == "*" or (port.isdigit() and int(port) <= 65535)):
                raise ValueError(f"{name}={endpoint!r}: tcp needs HOST:PORT with a port from 0 to 65535 "
                                 "(0 or * for any free port)")
    if pub == ctl and not any_port(pub):
        raise ValueError(f"pub and ctl are both {pub!r}: they are two sockets and need two endpoints")


def any_port(endpoint: str) -> bool:
    """Whether ``endpoint`` leaves its port to the system (``*`` or ``0``): two such endpoints never clash."""
    return endpoint.startswith("tcp://") and endpoint.endswith((":0", ":*"))


def control_beside(pub: str, ctl: str) -> str:
    """The control endpoint that goes with ``pub`` when none is given: ``ctl``, unless it is the fixed default
    and ``pub`` takes any free port: then any free port too, since the process that asked for a free PUB most
    likely runs beside a default trainer, which holds the default control port."""
    return pub if ctl == DEFAULT_CTL and any_port(pub) else ctl


def bind(sock: zmq.Socket, endpoint: str) -> None:
    """Bind, retrying briefly while the address is in use: libzmq releases a closed socket's port
    in its own thread, a moment after ``close`` returns, and the next ``learn()`` binds at once."""
    deadline = time.monotonic() + BIND_RETRY
    while True:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise OSError(f"cannot bind {endpoint}: {exc}") from None
        time.sleep(0.02)
