"""A trainer on one network host, clients on another, with and without the right CURVE keys."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, TRAINING, free_port
from netns import Host, two_hosts, unavailable_reason

from tetriszmq.stream.security import make_keys

LONG = ("--set", "train.max_timesteps=10000000")


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[Host, Host]]:
    if reason := unavailable_reason():
        pytest.skip(f"no test network: {reason}")
    try:
        with two_hosts() as pair:
            yield pair
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    make_keys(directory)
    make_keys(directory / "stranger", ("stranger-trainer", "stranger"))
    return directory


def client_keys(keys: Path, name: str = "client") -> list[str]:
    secret = keys / f"{name}.key_secret" if name == "client" else keys / "stranger" / f"{name}.key_secret"
    return ["--curve-server-key", str(keys / "trainer.key"), "--curve-secret-key", str(secret)]


def run_in(host: Host, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*host.prefix(), sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def probe(host: Host, endpoint: str, *extra: str, messages: int = 5, timeout: float = 10) -> dict:
    result = run_in(host, "tests/probe.py", endpoint, "--messages", str(messages), "--timeout", str(timeout),
                    *extra)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def ctl(host: Host, cmd: str, endpoint: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_in(host, "-m", "tetriszmq", "ctl", cmd, "--ctl", endpoint, "--timeout", "2", "--retries", "0",
                  *extra)


@pytest.fixture
def secured_trainer(trainers, hosts, keys):
    server, _ = hosts
    pub, ctl_endpoint = (f"tcp://{server.address}:{free_port()}" for _ in range(2))
    return trainers(*LONG, "--curve-secret-key", str(keys / "trainer.key_secret"),
                    "--curve-allow", str(keys / "allowed"), pub=pub, ctl=ctl_endpoint, prefix=server.prefix())


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
