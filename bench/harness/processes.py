"""Free ports, waiting for a condition, and spawned children that are always reaped.

Only the standard library: tests/conftest.py imports `free_port`, `free_endpoint` and `wait_for`
from here, so tests and benches pick ports and poll the same way.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

SPAWN = mp.get_context("spawn")  # children make their own ZeroMQ contexts and event loops


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and never one this process handed out before.

    The kernel picks a free port at random, so two calls in a row can pick the same one (about 1 in
    14,000): a trainer given it for both its sockets could not bind the second.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def free_endpoint() -> str:
    """A ZeroMQ TCP endpoint on a free loopback port."""
    return f"tcp://127.0.0.1:{free_port()}"


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, every: float = 0.05, *, what: str = "condition",
             alive: Callable[[], bool] | None = None, tolerate: tuple[type[Exception], ...] = ()) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds.

    ``alive``: fail at once when it says the process being waited for has exited, rather than at
    the timeout. ``tolerate``: exceptions that mean "not yet" (a server that is not listening yet).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except tolerate:
            pass
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not met within {timeout:g}s")
        time.sleep(every)


def reap(proc: Any, grace: float) -> None:
    """Wait ``grace`` seconds for a `multiprocessing` child to end, then terminate it, then kill it."""
    proc.join(grace)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()


@contextmanager
def spawned(target: Callable[..., None], *args: Any) -> Iterator[tuple[Any, Connection]]:
    """A spawned child ``target(*args, pipe)`` with a pipe; told to stop on the way out, and reaped."""
    ours, theirs = SPAWN.Pipe()
    proc = SPAWN.Process(target=target, args=(*args, theirs), daemon=True)
    proc.start()
    try:
        yield proc, ours
    finally:
        try:
            ours.send("stop")
        except OSError:
            pass
        reap(proc, 10)
