"""`tetriszmq keys DIR` as a user runs it, first and again: deployed key pairs are never replaced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def keys(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tetriszmq", "keys", str(directory), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def contents(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def test_keys_run_again_keeps_every_existing_pair_and_adds_only_the_missing_names(tmp_path):
    first = keys(tmp_path, "--names", "relay,client")
    assert first.returncode == 0, first.stderr
    deployed = contents(tmp_path)
    again = keys(tmp_path, "--names", "relay,client,laptop", "--trainers", "node")
    assert again.returncode == 0, again.stderr
    now = contents(tmp_path)
    assert {name: now[name] for name in deployed} == deployed, "a deployed key pair was replaced"
    assert set(now) - set(deployed) == {"laptop.key", "laptop.key_secret", "node.key", "node.key_secret",
                                        "allowed/laptop.key", "allowed-trainers/node.key"}
    assert again.stdout.splitlines()[:4] == [str(tmp_path / name) for name in ("laptop.key", "laptop.key_secret",
                                                                               "node.key", "node.key_secret")]
    for name in ("relay", "client"):
        assert f"kept the existing pair {tmp_path}/{name}.key(_secret)" in again.stderr


def test_half_a_key_pair_is_a_clear_error_and_nothing_is_replaced(tmp_path):
    assert keys(tmp_path, "--names", "relay,client").returncode == 0
    (tmp_path / "client.key_secret").unlink()
    before = contents(tmp_path)
    result = keys(tmp_path, "--names", "relay,client")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{tmp_path}/client.key exists without client.key_secret" in result.stderr
    assert contents(tmp_path) == before
