"""Unit: which control requests the trainer accepts, and what it answers the rest (no sockets)."""

from __future__ import annotations

import orjson
import pytest

from tetriszmq.stream.protocol import MAX_REQUEST_BYTES, Command, ProtocolError, parse_request


@pytest.mark.parametrize("cmd", list(Command))
def test_every_command_is_accepted_with_or_without_the_version(cmd):
    assert parse_request([orjson.dumps({"cmd": cmd})]) is cmd
    assert parse_request([orjson.dumps({"v": 1, "cmd": cmd})]) is cmd


@pytest.mark.parametrize(("frames", "message"), [
    ([], "expected 1 frame, got 0"),
    ([b'{"cmd":"stop"}', b""], "expected 1 frame, got 2"),
    ([b"\xff\xfe"], "not valid UTF-8 JSON"),
    ([b'{"cmd":'], "not valid UTF-8 JSON"),
    ([b'["stop"]'], "must be a JSON object, got array"),
    ([b'"stop"'], "must be a JSON object, got string"),
    ([b'{"cmd":"stop","extra":1}'], 'unexpected fields: "extra"'),
    ([b'{"v":2,"cmd":"stop"}'], '"v" must be the number 1 (this trainer speaks v1), got 2'),
    ([b'{"v":true,"cmd":"stop"}'], '"v" must be the number 1 (this trainer speaks v1), got true'),
    ([b'{"v":1.0,"cmd":"stop"}'], '"v" must be the number 1 (this trainer speaks v1), got 1.0'),
    ([b'{"cmd":7}'], '"cmd" must be a string, got number'),
    ([b"{}"], '"cmd" is missing'),
    ([b'{"cmd":"STOP"}'], 'unknown command "STOP"; known: stop, status'),
    ([b'{"cmd":"' + b"x" * 100 + b'"}'], 'unknown command "' + "x" * 39 + '...;'),
    ([b" " * (MAX_REQUEST_BYTES + 1)], f"exceeds {MAX_REQUEST_BYTES}"),
])
def test_a_bad_request_is_refused_with_a_message_fit_to_send_back(frames, message):
    with pytest.raises(ProtocolError) as refused:
        parse_request(frames)
    assert message in str(refused.value)
    assert len(str(refused.value)) < 300  # an attacker's long field is cut, not echoed whole
