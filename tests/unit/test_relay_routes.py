"""Unit: the relay's table of runs (`Routes`): who may claim a run, and where a lineage's requests go.

Hellos go in as the relay's ROUTER hands them over (connection identity, raw body); a scripted
clock stands in for time, so expiry needs no waiting. tests/test_relay.py does the same over real
sockets.
"""

from __future__ import annotations

import orjson
import pytest

from tetriszmq.stream.protocol import ProtocolError
from tetriszmq.stream.relay import Owed, Routes, side

EXPIRE = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def routes(clock: Clock) -> Routes:
    return Routes(EXPIRE, clock)


def hello(run: str, lineage: str = "", started: float | None = None) -> bytes:
    return orjson.dumps({"run": run, "lineage": lineage or run, **({} if started is None else {"started": started})})


def test_a_second_connection_cannot_take_a_live_run(routes):
    assert routes.hello(b"trainer", hello("tiny-aaaaaa")) is None
    refused = routes.hello(b"rogue", hello("tiny-aaaaaa"))
    assert refused is not None and '"tiny-aaaaaa"' in refused and "second connection" in refused
    assert routes.find("tiny-aaaaaa").identity == b"trainer"


def test_a_refused_claim_is_reported_once_and_the_owner_keeps_refreshing(routes, clock):
    routes.hello(b"trainer", hello("tiny-aaaaaa"))
    reports = []
    for _ in range(4):
        clock.now += 1
        reports.append(routes.hello(b"rogue", hello("tiny-aaaaaa")))
        assert routes.hello(b"trainer", hello("tiny-aaaaaa")) is None
    assert sum(report is not None for report in reports) == 1
    assert routes.listing() == [{"run": "tiny-aaaaaa", "lineage": "tiny-aaaaaa", "seen": 0.0}]


def test_a_run_whose_connection_fell_silent_goes_to_the_next_claim(routes, clock):
    routes.hello(b"old-connection", hello("tiny-aaaaaa"))
    clock.now += EXPIRE + 0.1
    assert routes.hello(b"new-connection", hello("tiny-aaaaaa")) is None
    assert routes.find("tiny-aaaaaa").identity == b"new-connection"


def test_a_run_forgotten_as_unreachable_goes_to_the_next_claim(routes):
    routes.hello(b"old-connection", hello("tiny-aaaaaa"))
    routes.forget(routes.find("tiny-aaaaaa"))
    assert routes.hello(b"new-connection", hello("tiny-aaaaaa")) is None
    assert routes.find("tiny-aaaaaa").identity == b"new-connection"


def test_a_lineage_routes_to_its_latest_started_process_not_its_last_speaker(routes, clock):
    routes.hello(b"resumed", hello("tiny-bbbbbb", "tiny-lineage", started=2000.0))
    clock.now += 1
    routes.hello(b"original", hello("tiny-aaaaaa", "tiny-lineage", started=1000.0))  # still running, spoke last
    assert routes.find("tiny-lineage").run == "tiny-bbbbbb"


def test_a_hello_without_a_start_time_counts_from_when_the_relay_first_heard_it(routes, clock):
    routes.hello(b"old", hello("tiny-aaaaaa", "tiny-lineage", started=1.0))
    routes.hello(b"other-implementation", hello("tiny-bbbbbb", "tiny-lineage"))
    clock.now += 1
    routes.hello(b"old", hello("tiny-aaaaaa", "tiny-lineage", started=1.0))
    assert routes.find("tiny-lineage").run == "tiny-bbbbbb"


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"lineage": "x"}', b'{"run": 7}', b'{"run": "a b"}',
                                 b'{"run": "tiny-aaaaaa", "lineage": 3}', b'{"run": "tiny-aaaaaa\\n"}',
                                 b'{"run": "tiny-aaaaaa", "lineage": "a lineage\\nwith lines"}',
                                 b'{"run": "tiny-aaaaaa", "lineage": "' + b"x" * 100_000 + b'"}'])
def test_a_malformed_hello_is_ignored(routes, raw):
    assert routes.hello(b"trainer", raw) is None
    assert routes.listing() == []
    with pytest.raises(ProtocolError, match="routes to none"):
        routes.find("tiny-aaaaaa")


@pytest.mark.parametrize("spec", ["tcp://127.0.0.1:0", "tcp://127.0.0.1:65535", "tcp://127.0.0.1:*"])
def test_a_side_whose_control_port_cannot_follow_its_stream_port_is_refused(spec):
    with pytest.raises(ValueError, match=r"give tcp://HOST:PORT \(1 to 65534\), or STREAM,CONTROL"):
        side(spec, "--trainers")
    assert side(spec.replace(":0", ":5557") + ",tcp://127.0.0.1:5600", "--trainers").control == "tcp://127.0.0.1:5600"


def test_a_lineage_longer_than_a_run_id_is_routed(routes):
    name = "n" * 72  # the run id adds 6 hex digits (79 characters, within the 80 of a run id), the lineage 8 (81)
    assert routes.hello(b"trainer", hello(f"{name}-0123ab", f"{name}-0123abcd")) is None
    assert routes.find(f"{name}-0123abcd").run == f"{name}-0123ab"


def test_a_run_still_saying_hello_outlives_one_that_fell_silent_after_it(routes, clock):
    """Routes are pruned from the least recently heard end: a refresh must move a run to the other end."""
    routes.hello(b"a", hello("tiny-aaaaaa"))
    clock.now += 1
    routes.hello(b"b", hello("tiny-bbbbbb"))
    clock.now += 2
    routes.hello(b"a", hello("tiny-aaaaaa"))
    clock.now += EXPIRE - 1.5  # b silent for EXPIRE + 0.5 s, a for EXPIRE - 1.5 s
    assert [route["run"] for route in routes.listing()] == ["tiny-aaaaaa"]
    with pytest.raises(ProtocolError, match="unknown run"):
        routes.find("tiny-bbbbbb")


def test_a_reply_passes_only_if_that_trainer_owes_that_client_one(clock):
    owed = Owed(within=120, clock=clock)
    client, other = [b"\x00k\x8b\x45\x01", b""], [b"\x00k\x8b\x45\x02", b""]
    assert not owed.settle(b"trainer", client), "nobody asked: an unsolicited reply is dropped"
    owed.expect(b"trainer", client)
    owed.expect(b"trainer", client)  # a DEALER client with two requests out
    assert not owed.settle(b"rogue", client) and not owed.settle(b"trainer", other)
    assert owed.settle(b"trainer", client) and owed.settle(b"trainer", client)
    assert not owed.settle(b"trainer", client), "two requests, two replies, not three"


def test_an_owed_reply_expires_and_the_table_stays_bounded(clock):
    owed = Owed(within=120, limit=3, clock=clock)
    owed.expect(b"trainer", [b"late", b""])
    clock.now += 121
    assert not owed.settle(b"trainer", [b"late", b""])
    for n in range(5):
        owed.expect(b"trainer", [bytes([n]), b""])
    assert len(owed._due) == 3
    assert not owed.settle(b"trainer", [b"\x00", b""]) and owed.settle(b"trainer", [b"\x04", b""])
