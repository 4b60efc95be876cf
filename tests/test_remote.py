"""A trainer on one network host, clients on another, with and without the right CURVE keys."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from conftest import ROOT, TRAINING, free_port
from netns import client_keys, ctl, probe

pytestmark = pytest.mark.slow


def test_allowed_key_streams_and_stops_across_hosts(secured_trainer, hosts, keys):
    _, client = hosts
    seen = probe(client, secured_trainer.pub, *client_keys(keys), messages=10, timeout=60)
    assert seen["received"] == 10 and "heartbeat:" in seen["topics"]
    status = ctl(client, "status", secured_trainer.ctl, *client_keys(keys))
    assert status.returncode == 0, status.stderr
    assert orjson.loads(status.stdout)["ok"] is True
    stop = ctl(client, "stop", secured_trainer.ctl, *client_keys(keys))
    assert orjson.loads(stop.stdout) == {"ok": True, "state": "stopping"}
    assert secured_trainer.wait(60) == 0


def test_missing_or_unknown_keys_get_nothing_and_training_continues(secured_trainer, hosts, keys):
    _, client = hosts
    assert probe(client, secured_trainer.pub, *client_keys(keys), messages=1, timeout=60)["received"] == 1
    assert probe(client, secured_trainer.pub, messages=1, timeout=3)["received"] == 0
    assert probe(client, secured_trainer.pub, *client_keys(keys, "stranger"), messages=1, timeout=3
                 )["received"] == 0
    for extra in ([], client_keys(keys, "stranger")):
        refused = ctl(client, "stop", secured_trainer.ctl, *extra)
        assert refused.returncode == 3 and "no reply" in refused.stderr
    before = orjson.loads(ctl(client, "status", secured_trainer.ctl, *client_keys(keys)).stdout)["timesteps"]
    assert probe(client, secured_trainer.pub, *client_keys(keys), messages=20, timeout=60)["received"] == 20
    after = orjson.loads(ctl(client, "status", secured_trainer.ctl, *client_keys(keys)).stdout)
    assert after["state"] in TRAINING and after["timesteps"] > before
    assert secured_trainer.proc.poll() is None


def test_binding_beyond_loopback_without_curve_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tetriszmq", "train", "--config", "tests/tiny.toml", "--run-dir", str(tmp_path / "r"),
         "--pub", f"tcp://0.0.0.0:{free_port()}", "--ctl", f"tcp://127.0.0.1:{free_port()}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "refusing to bind tcp://0.0.0.0" in result.stderr and "--insecure" in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("keys", "said"), [
    (("--curve-secret-key", "missing.key_secret", "--curve-allow", "tests"),
     "cannot read CURVE key missing.key_secret"),
    (("--curve-secret-key", "tests/tiny.toml", "--curve-allow", "tests"), "cannot read CURVE key tests/tiny.toml"),
    (("--curve-secret-key", "missing.key_secret", "--curve-allow", "nowhere"),
     "--curve-allow nowhere: not a folder of client public keys"),
])
def test_key_files_the_trainer_cannot_use_exit_2_before_the_run_directory(tmp_path, keys, said):
    result = subprocess.run(
        [sys.executable, "-m", "tetriszmq", "train", "--config", "tests/tiny.toml", "--run-dir", str(tmp_path / "r"),
         "--pub", f"tcp://0.0.0.0:{free_port()}", "--ctl", f"tcp://0.0.0.0:{free_port()}", *keys],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and said in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "r").exists()
