"""Unit: what a late joiner gets from `RunHistory`, and how the journal survives a torn last line."""

from __future__ import annotations

import orjson
import pytest

from tetriszmq.stream import journal
from tetriszmq.stream.history import RunHistory
from tetriszmq.stream.protocol import Topic


def message(topic: Topic, seq: int) -> bytes:
    return orjson.dumps({"topic": topic, "seq": seq})


def test_history_keeps_the_last_status_and_board_and_the_newest_episodes_and_metrics():
    history = RunHistory("run-1", max_items=2)
    for seq, topic in enumerate([Topic.STATUS, Topic.BOARD, Topic.EPISODE, Topic.METRICS, Topic.EPISODE,
                                 Topic.EPISODE, Topic.BOARD, Topic.STATUS, Topic.HEARTBEAT]):
        history.record(topic, seq, message(topic, seq))
    snapshot = orjson.loads(orjson.dumps(history.snapshot()))
    assert snapshot["run"] == "run-1" and snapshot["seq"] == 8  # a heartbeat only advances seq
    assert (snapshot["status"]["seq"], snapshot["board"]["seq"]) == (7, 6)
    assert [m["seq"] for m in snapshot["episodes"]] == [4, 5]  # bounded: the oldest went first
    assert [m["seq"] for m in snapshot["metrics"]] == [3]


def test_an_empty_history_is_a_valid_snapshot_before_any_message():
    assert orjson.loads(orjson.dumps(RunHistory("run-1", 10).snapshot())) == {
        "run": "run-1", "seq": -1, "status": None, "board": None, "episodes": [], "metrics": []}


def test_the_journal_skips_a_torn_last_line_and_appending_cuts_it_off(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"seq":1}\n{"seq":2}\n{"se')
    assert [m["seq"] for m in journal.read(path)] == [1, 2]
    with journal.open_for_append(path) as appended:
        appended.write(b'{"seq":3}\n')
    assert path.read_bytes() == b'{"seq":1}\n{"seq":2}\n{"seq":3}\n'


def test_the_journal_refuses_a_corrupt_line_that_is_not_the_last(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"seq":1}\ngarbage\n{"seq":3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2: corrupt line"):
        journal.read(path)


def test_appending_to_a_clean_or_missing_journal_keeps_every_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with journal.open_for_append(path) as appended:
        appended.write(b'{"seq":1}\n')
    with journal.open_for_append(path) as appended:
        appended.write(b'{"seq":2}\n')
    assert [m["seq"] for m in journal.read(path)] == [1, 2]
