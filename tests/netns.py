"""Two test hosts on one machine (network namespaces joined by a veth pair), and a CURVE trainer on one.

The `hosts` fixture creates both namespaces, the link and its addresses, and removes them
afterwards; traffic goes only between these two addresses. A pytest plugin (conftest.py names it):
test_remote.py and test_remote_viewer.py share its `hosts`, `keys` and `secured_trainer` fixtures;
the namespaces and keys are made once per session.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, TrainerProcess, free_port

from tetriszmq.stream.security import make_keys

SUBNET = "10.213.{}.{}"
LONG = ("--set", "train.max_timesteps=10000000")


@dataclass
class Host:
    name: str
    address: str

    def prefix(self) -> list[str]:
        """Run a command inside this host: ``[*host.prefix(), "python", ...]``."""
        return ["ip", "netns", "exec", self.name]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def unavailable_reason() -> str | None:
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    return None


@contextmanager
def two_hosts() -> Iterator[tuple[Host, Host]]:
    """Yield (server, client) hosts; raises RuntimeError if the namespaces cannot be made."""
    tag = secrets.token_hex(3)
    octet = int(tag[:2], 16) % 250 + 1
    server = Host(f"tzq-srv-{tag}", SUBNET.format(octet, 1))
    client = Host(f"tzq-cli-{tag}", SUBNET.format(octet, 2))
    veth_server, veth_client = f"tzs{tag}", f"tzc{tag}"
    made: list[str] = []
    try:
        for host in (server, client):
            _ip("netns", "add", host.name)
            made.append(host.name)
        _ip("link", "add", veth_server, "type", "veth", "peer", "name", veth_client)
        for host, veth in ((server, veth_server), (client, veth_client)):
            _ip("link", "set", veth, "netns", host.name)
            _ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", veth)
            _ip("-n", host.name, "link", "set", veth, "up")
            _ip("-n", host.name, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        detail = getattr(exc, "stderr", "") or str(exc)
        raise RuntimeError(f"cannot create test network namespaces: {detail.strip()}") from None
    try:
        yield server, client
    finally:
        for name in made:  # deleting a namespace removes its end of the veth pair, and so both
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(scope="session")
def hosts() -> Iterator[tuple[Host, Host]]:
    """(server, client), made once per session; skips the tests that need them where namespaces cannot be made."""
    if reason := unavailable_reason():
        pytest.skip(f"no test network: {reason}")
    try:
        with two_hosts() as pair:
            yield pair
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trainer's and an allowed client's keys; a stranger's pair under stranger/."""
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
def secured_trainer(trainers: Callable[..., TrainerProcess], hosts: tuple[Host, Host], keys: Path
                    ) -> TrainerProcess:
    """A long tiny run on the server host, binding its address, CURVE on, only `keys`' client allowed."""
    server, _ = hosts
    pub, ctl_endpoint = (f"tcp://{server.address}:{free_port()}" for _ in range(2))
    return trainers(*LONG, "--curve-secret-key", str(keys / "trainer.key_secret"),
                    "--curve-allow", str(keys / "allowed"), pub=pub, ctl=ctl_endpoint, prefix=server.prefix())
