"""Unit: run ids and run names are checked as whole strings, and every run name the config takes makes valid ids.

A run id names a run on the wire, in a relay's table and in folders: `protocol.is_run_id` is its one
check. The config's ``run.name`` is shorter, as the trainer adds ``-<6 hex>`` for the process's run
id and ``-<8 hex>`` for a new lineage.
"""

from __future__ import annotations

import orjson
import pytest

from tetriszmq import config as cfg
from tetriszmq.stream import protocol
from tetriszmq.stream.protocol import ProtocolError, Topic
from tetriszmq.stream.state import RUN_NAME_MAX, lineage_of
from viewer.hub import Hub, HubSettings


def test_a_run_id_with_a_final_newline_is_refused_where_a_message_is_sealed():
    assert protocol.is_run_id("tiny-0123ab")
    with pytest.raises(ProtocolError, match="must match"):
        protocol.envelope_prefix(Topic.STATUS, "tiny-0123ab\n")


def test_a_message_whose_run_has_a_final_newline_is_dropped_as_malformed_by_the_viewer():
    hub = Hub(HubSettings(trainer="tcp://127.0.0.1:1", ctl="tcp://127.0.0.1:2"))
    payload = orjson.dumps({"v": protocol.VERSION, "topic": "status", "run": "tiny-0123ab\n", "seq": 1, "t": 1.0})
    hub.on_frames([protocol.TOPIC_FRAMES[Topic.STATUS], payload])
    assert hub.counters["malformed"] == 1 and hub.counters["messages"] == 0


@pytest.mark.parametrize("name", ["tiny\n", "n" * (RUN_NAME_MAX + 1), "n" * 80, ""])
def test_a_run_name_that_cannot_make_run_ids_is_a_config_error(name):
    with pytest.raises(cfg.ConfigError, match=rf"^run\.name: .* must be 1 to {RUN_NAME_MAX} letters"):
        cfg.load(None, [f"run.name={orjson.dumps(name).decode()}"])


def test_the_longest_run_name_makes_a_run_id_and_a_lineage_that_are_run_ids():
    name = cfg.load(None, [f"run.name={'n' * RUN_NAME_MAX}"]).run.name
    protocol.envelope_prefix(Topic.STATUS, f"{name}-0123ab")  # the run id the trainer makes
    lineage = lineage_of(None, name)
    assert protocol.is_run_id(lineage) and len(lineage) == protocol.RUN_ID_MAX
