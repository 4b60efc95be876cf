"""Test hosts on one machine (network namespaces on one switch), and a CURVE trainer on one.

`lan` creates N namespaces, each joined by a veth pair to a bridge in a switch namespace of its
own, with addresses on one /24, and removes them afterwards; traffic goes only between these
addresses. A pytest plugin (conftest.py names it): test_remote.py and test_remote_viewer.py share
its `hosts` (server, client), `keys` and `secured_trainer` fixtures, test_relay.py its `four_hosts`
(relay, two trainers' nodes, client); the namespaces and keys are made once per session.
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
def lan(roles: tuple[str, ...]) -> Iterator[list[Host]]:
    """Yield one host per role, all on one switch; raises RuntimeError if the namespaces cannot be made."""
    tag = secrets.token_hex(3)
    octet = int(tag[:2], 16) % 250 + 1
    switch = f"tzq-sw-{tag}"
    hosts = [Host(f"tzq-{role}-{tag}", SUBNET.format(octet, i + 1)) for i, role in enumerate(roles)]
    made: list[str] = []
    try:
        for name in (switch, *(host.name for host in hosts)):
            _ip("netns", "add", name)
            made.append(name)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i, host in enumerate(hosts):
            inside, port = f"tzh{i}{tag}", f"tzp{i}{tag}"
            _ip("link", "add", inside, "netns", host.name, "type", "veth", "peer", "name", port, "netns", switch)
            _ip("-n", switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", inside)
            _ip("-n", host.name, "link", "set", inside, "up")
            _ip("-n", host.name, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        _remove(made)
        detail = getattr(exc, "stderr", "") or str(exc)
        raise RuntimeError(f"cannot create test network namespaces: {detail.strip()}") from None
    try:
        yield hosts
    finally:
        _remove(made)


def _remove(namespaces: list[str]) -> None:
    for name in namespaces:  # deleting a namespace removes its ends of the veth pairs, and so both ends
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _session_lan(roles: tuple[str, ...]) -> Iterator[list[Host]]:
    """A fixture's body: the hosts, or a skip that says why they cannot be made here."""
    if reason := unavailable_reason():
        pytest.skip(f"no test network: {reason}")
    try:
        with lan(roles) as made:
            yield made
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def hosts() -> Iterator[list[Host]]:
    """[server, client], made once per session; skips the tests that need them where namespaces cannot be made."""
    yield from _session_lan(("srv", "cli"))


@pytest.fixture(scope="session")
def four_hosts() -> Iterator[list[Host]]:
    """[relay, node A, node B, client], made once per session (skips as `hosts` does)."""
    yield from _session_lan(("rly", "na", "nb", "cli"))


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
