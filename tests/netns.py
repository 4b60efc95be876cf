"""Two test hosts on one machine: network namespaces joined by a veth pair.

The test creates both namespaces, the link and its addresses, and removes
them afterwards; traffic goes only between these two addresses.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SUBNET = "10.213.{}.{}"


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
