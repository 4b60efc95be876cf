"""PROTOCOL.md's control examples are what the trainer's parser answers, word for word."""

from __future__ import annotations

import json
import re

import orjson
import pytest
from conftest import ROOT

from tetriszmq.stream import protocol


def documented_examples() -> list[tuple[bytes, dict]]:
    """The ``request -> reply`` lines of the control section's example block."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    section = text[text.index("## Control requests"):text.index("### `snapshot`")]
    block = re.search(r"```text\n(.*?)```", section, re.S).group(1)
    return [(request.strip().encode(), orjson.loads(reply)) for request, reply in
            (line.split(" -> ") for line in block.splitlines())]


@pytest.mark.parametrize(("request_bytes", "reply"), documented_examples())
def test_the_documented_control_examples_hold(request_bytes, reply):
    if reply["ok"]:
        assert protocol.parse_request([request_bytes]) == orjson.loads(request_bytes)["cmd"]
    else:
        with pytest.raises(protocol.ProtocolError) as error:
            protocol.parse_request([request_bytes])
        assert str(error.value) == reply["error"]


@pytest.mark.parametrize("request_bytes", [
    b'{"cmd": "status", "cmd": "pause"}', b'{"cmd": "pause", "v": 1, "v": 1}',
    b'{"cmd": "stop", "x": {"a": 1, "a": 2}}',
])
def test_a_field_given_twice_is_refused_wherever_it_is(request_bytes):
    with pytest.raises(protocol.ProtocolError, match="repeated fields"):
        protocol.parse_request([request_bytes])


@pytest.mark.parametrize(("value", "shown"), [
    (None, "null"), (True, "true"), (123456789012345678901234567890, "123456789012345678901234567890"),
    ("1", '"1"'), ([1], "[1]"), ({"a": 1}, '{"a": 1}'), ("x" * 100, '"' + "x" * 39 + "..."),
])
def test_a_bad_version_is_quoted_as_json(value, shown):
    with pytest.raises(protocol.ProtocolError) as error:
        protocol.parse_request([json.dumps({"cmd": "status", "v": value}).encode()])  # big integers as written
    assert str(error.value).endswith(f"got {shown}")
