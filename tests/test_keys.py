"""`tetriszmq keys DIR` as a user runs it, first and again: deployed key pairs are never replaced."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY

from tetriszmq.stream.security import SecurityError, ServerCurve, make_keys


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


def test_a_key_file_given_in_the_other_halfs_place_is_refused_by_every_command(tmp_path, tetriszmq_here):
    """A server's secret file where its public key goes would work (zmq reads its public half) and spread the
    secret: refused, as is a public file where the caller's own secret key goes; exit 2, nothing started.
    `tetriszmq train` and `ctl` are called in this process (a refusal starts nothing: no torch import per case);
    the viewer and the relay, which would serve on if they did not refuse, run as processes."""
    assert keys(tmp_path, "--names", "relay,client", "--trainers", "node").returncode == 0
    swapped = ["--curve-server-key", str(tmp_path / "relay.key_secret"), "--curve-secret-key",
               str(tmp_path / "client.key_secret")]
    public_only = ["--curve-server-key", str(tmp_path / "relay.key"), "--curve-secret-key",
                   str(tmp_path / "client.key")]
    relay = "tcp://127.0.0.1:6001"
    commands = {
        "train": ["tetriszmq", "train", "--config", str(TINY), "--relay", relay,
                  "--run-dir", str(tmp_path / "r")],
        "ctl": ["tetriszmq", "ctl", "status"],
        "ctl --relay": ["tetriszmq", "ctl", "runs", "--relay", relay],
        "viewer --relay": ["viewer", "--relay", relay, "--port", "0"],
    }
    for name, (module, *args) in commands.items():
        for options, said in (
            (swapped, f"--curve-server-key {tmp_path}/relay.key_secret is a secret key file: give the public key "
                      "file (relay.key) instead"),
            (public_only, f"--curve-secret-key {tmp_path}/client.key holds no secret key (use the .key_secret file "
                          f"of the pair ({tmp_path}/client.key_secret))"),
        ):
            if module == "tetriszmq":
                result = tetriszmq_here(*args, *options)
            else:
                result = subprocess.run([sys.executable, "-m", module, *args, *options], cwd=ROOT,
                                        capture_output=True, text=True, timeout=60)
            assert result.returncode == 2 and said in result.stderr, (name, result.stderr)
            assert "Traceback" not in result.stderr
    relay_public = subprocess.run([sys.executable, "-m", "tetriszmq", "relay", "--curve-secret-key",
                                   str(tmp_path / "relay.key"), "--curve-allow", str(tmp_path / "allowed"),
                                   "--curve-allow-trainers", str(tmp_path / "allowed-trainers")],
                                  cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert relay_public.returncode == 2 and f"--curve-secret-key {tmp_path}/relay.key holds no secret key" in \
        relay_public.stderr, relay_public.stderr
    assert not (tmp_path / "r").exists()


def test_a_damaged_key_is_named_and_key_paths_may_be_strings(tmp_path):
    """A secret key line cut short reached libzmq and came back as 'Invalid argument' from the broker process;
    `ServerCurve(secret_key_file, allow_dir)` with str paths (as the README's Python reads) raised AttributeError."""
    assert keys(tmp_path, "--names", "trainer,viewer").returncode == 0
    curve = ServerCurve(str(tmp_path / "trainer.key_secret"), str(tmp_path / "allowed"))
    curve.load()
    assert curve.secret is not None and len(curve.secret) == 40
    secret = tmp_path / "trainer.key_secret"
    secret.write_text(re.sub(r'secret-key = "(.{40})"', lambda m: f'secret-key = "{m[1][:-3]}"',
                             secret.read_text()))
    with pytest.raises(SecurityError, match="its secret key is not a CURVE key"):
        ServerCurve(secret, tmp_path / "allowed").load()


def test_an_empty_allow_folder_is_warned_of_once(tmp_path, capsys):
    """Nobody could connect, and the ZAP authenticator reads the folder only when it starts."""
    make_keys(tmp_path)
    (tmp_path / "empty").mkdir()
    curve = ServerCurve(tmp_path / "trainer.key_secret", tmp_path / "empty")
    curve.load()
    pickle.loads(pickle.dumps(curve)).load()  # the broker process's copy
    assert capsys.readouterr().err.count("--curve-allow") == 1
    ServerCurve(tmp_path / "trainer.key_secret", tmp_path / "allowed").load()
    assert capsys.readouterr().err == ""
