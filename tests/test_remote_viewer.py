"""A viewer on one network host watching a CURVE trainer on another, with and without the right keys.

The viewer serves its page on 127.0.0.1 inside its own host, as it does by default, so its clients
(tests/viewer_probe.py) run in that host too. The hosts, keys and trainer are tests/netns.py's fixtures.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from conftest import ROOT, TRAINING, free_port, wait_for
from netns import client_keys, ctl, probe
from viewer_support import ViewerProcess

pytestmark = pytest.mark.slow


def test_a_viewer_with_the_allowed_key_relays_the_stream_and_stops_the_trainer(secured_trainer, hosts, keys,
                                                                             viewers):
    _, client = hosts
    viewer = viewers(secured_trainer.pub, secured_trainer.ctl, *client_keys(keys), prefix=tuple(client.prefix()))
    lines = viewer.watch(seconds=60, live=40)
    last = max(i for i, line in enumerate(lines) if line["topic"] == "snapshot")
    snapshot, live = lines[last], [line for line in lines[last + 1:] if line["seq"] is not None]
    assert snapshot["run"] is not None and snapshot["link"] == "online"
    assert [line["seq"] for line in live] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(live)))
    assert {line["topic"] for line in live} >= {"board", "heartbeat"}
    trainer = viewer.status()["trainer"]
    assert (trainer["link"], trainer["handshake"], trainer["run"]) == ("online", None, snapshot["run"])

    ident = viewer.status()["trainer"]["id"]
    assert viewer.control("stop") == {"status": 200, "reply": {"ok": True, "state": "stopping", "run": ident}}
    assert secured_trainer.wait(60) == 0


def test_a_viewer_without_an_allowed_key_gets_nothing_and_cannot_stop_training(secured_trainer, hosts, keys,
                                                                              viewers):
    _, client = hosts
    in_client = tuple(client.prefix())
    refused = {
        "security mismatch": viewers(secured_trainer.pub, secured_trainer.ctl, prefix=in_client),
        "refused this viewer's CURVE key": viewers(secured_trainer.pub, secured_trainer.ctl,
                                                   *client_keys(keys, "stranger"), prefix=in_client),
    }
    before = orjson.loads(ctl(client, "status", secured_trainer.ctl, *client_keys(keys)).stdout)["timesteps"]

    def try_viewer(viewer: ViewerProcess) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return viewer.watch(seconds=3), viewer.control("stop")

    with ThreadPoolExecutor(len(refused)) as pool:
        outcomes = dict(zip(refused, pool.map(try_viewer, refused.values()), strict=True))
    for problem, (lines, stop) in outcomes.items():
        viewer = refused[problem]
        assert lines == [{"topic": "snapshot", "seq": -1, "run": None, "link": "waiting"}], problem
        assert stop["status"] == 504 and "no reply" in stop["reply"]["error"] and problem in stop["reply"]["error"]
        trainer = viewer.status()["trainer"]
        assert (trainer["link"], trainer["messages"], trainer["run"]) == ("waiting", 0, None)
        assert problem in trainer["handshake"]
        assert problem in viewer.output()  # said once in its log, not only on request

    assert probe(client, secured_trainer.pub, *client_keys(keys), messages=20, timeout=60)["received"] == 20
    after = orjson.loads(ctl(client, "status", secured_trainer.ctl, *client_keys(keys)).stdout)
    assert after["state"] in TRAINING and after["timesteps"] > before
    assert secured_trainer.proc.poll() is None


def run_viewer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "viewer", "--port", str(free_port()), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_serving_the_page_beyond_loopback_needs_insecure(viewers, tmp_path):
    for host in ("0.0.0.0", "::", ""):
        refused = run_viewer("--host", host)
        assert refused.returncode == 2, host
        assert "refusing to serve on" in refused.stderr and "--insecure" in refused.stderr
    viewer = viewers("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "--host", "0.0.0.0", "--insecure")
    wait_for(lambda: "WARNING: serving on 0.0.0.0 over plain HTTP" in viewer.output(), timeout=10)
    assert viewer.get("/healthz") == {"ok": True}


def test_curve_options_that_cannot_work_stop_the_viewer_before_it_serves(keys):
    for args, message in [
        (["--curve-server-key", str(keys / "trainer.key")], "go together"),
        (["--curve-server-key", str(keys / "trainer.key"), "--curve-secret-key", str(keys / "client.key")],
         "holds no secret key"),
        (["--curve-server-key", str(keys / "missing.key"), "--curve-secret-key", str(keys / "client.key_secret")],
         "cannot read CURVE key"),
    ]:
        result = run_viewer(*args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "open http" not in result.stdout
