"""The control client's sockets: each attempt's socket is closed, whatever happens to it."""

from __future__ import annotations

import gc
import warnings

import pytest
import zmq
from conftest import free_port

from tetriszmq.stream.control import NoReply, req_socket, request


@pytest.mark.parametrize("endpoint", ["tcp://nonsense", "tcp://127.0.0.1:notaport", "carrier-pigeon://x", ""])
def test_a_malformed_endpoint_raises_and_leaves_no_socket_open(endpoint: str):
    ctx = zmq.Context()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(zmq.ZMQError):
                request(endpoint, "status", timeout=0.1, retries=0, ctx=ctx)
            with pytest.raises(zmq.ZMQError):
                req_socket(ctx, endpoint, None)
            gc.collect()  # pyzmq warns when it collects a socket nobody closed
        # Only sockets count: gc.collect() may also reap an earlier test's unclosed file.
        leaks = [str(w.message) for w in caught
                 if issubclass(w.category, ResourceWarning) and "socket" in str(w.message)]
        assert not leaks, leaks
    finally:
        ctx.term()  # blocks for ever on a socket left open


def test_an_unanswered_request_says_why_and_leaves_no_socket_or_monitor_open():
    ctx = zmq.Context()
    try:
        nowhere = f"tcp://127.0.0.1:{free_port()}"
        with pytest.raises(NoReply, match=r"after 2 attempts of 0\.1s: could not connect"):
            request(nowhere, "status", timeout=0.1, retries=1, ctx=ctx)
    finally:
        ctx.term()  # blocks (until pytest's timeout) on a socket or monitor left open
