"""The documents' examples work as written."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY, TRAINING, free_endpoint, free_port, reap, wait_for
from viewer_support import ViewerProcess


def protocol_client_source() -> str:
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    section = text[text.index("## A client in 20 lines"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_protocol_documents_20_line_client_follows_a_run_to_its_end(trainers):
    source = protocol_client_source()
    assert len([line for line in source.splitlines() if line.strip()]) <= 20
    trainer = trainers("--set", "train.max_timesteps=3000")
    source = source.replace("tcp://127.0.0.1:5555", trainer.pub).replace("tcp://127.0.0.1:5556", trainer.ctl)
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("trainer: {'ok': True")
    assert re.search(r"^episode \d+: \d+ lines, reward", result.stdout, re.M)
    assert trainer.wait(60) == 0


def commands(document: str, heading: str) -> list[str]:
    """The commands of the first code block under ``heading``, without their comments."""
    text = (ROOT / document).read_text()
    block = re.search(r"```\n(.*?)```", text[text.index(heading):], re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def free_pair() -> tuple[str, str]:
    """A PUB endpoint and the port after it for control, as a trainer's defaults pair them."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}"


@pytest.mark.slow
def test_the_readmes_commands_show_two_seeds_under_runs_and_two_remote_trainers(tmp_path):
    """README "Using it", shortened: tiny runs, a free port for the viewers, gpu-a/gpu-b as local trainers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}  # this checkout's code, run in tmp_path
    train_a, train_b, viewer_all, viewer_remote, stop_one = commands("README.md", "## Using it")
    started: list[subprocess.Popen[bytes]] = []

    def run(line: str, *extra: str, cwd: Path = tmp_path) -> subprocess.Popen[bytes]:
        args = shlex.split(line.removesuffix("&").replace("runs/default", "runs/tiny"))
        program = {"tetriszmq": "tetriszmq", "tetriszmq-viewer": "viewer"}[args[0].removeprefix(".venv/bin/")]
        args = [sys.executable, "-m", program, *args[1:], *extra]
        with open(tmp_path / f"{len(started)}.log", "wb") as out:
            started.append(subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT))
        return started[-1]

    def viewer(line: str) -> ViewerProcess:
        proc = run(line.replace("--port 8081", ""), "--port", str(free_port()))
        shown = ViewerProcess(proc, tmp_path / f"{len(started) - 1}.log")
        shown.wait_ready()
        return shown

    def listed(shown: ViewerProcess) -> dict[str, dict]:
        return {r["id"]: r for r in shown.get("/api/runs")["runs"]}

    shorter = ("--set", "train.max_timesteps=10000000", "--quiet")
    try:
        for line in (train_a, train_b):
            run(line.replace("configs/default.toml", str(TINY)), *shorter)
        every = viewer(viewer_all)
        wait_for(lambda: {(r["seed"], r["link"]) for r in listed(every).values()} == {(1, "online"), (2, "online")},
                 timeout=120, what="both seeds listed and followed")
        assert set(listed(every)) == {"tiny", "tiny-2"}  # runs/<run.name>, never overwritten
        assert run(stop_one).wait(60) == 0, "ctl found the trainer of runs/tiny-2 by its run.json"
        wait_for(lambda: listed(every)["tiny-2"]["state"] == "stopped", timeout=60, what="tiny-2 stopped")
        # the other seed trains on (on a busy machine it may still be starting: online before its first step)
        wait_for(lambda: listed(every)["tiny"]["state"] in TRAINING, timeout=60, what="the other seed training")

        (pub_a, ctl_a), (pub_b, ctl_b) = free_pair(), (free_endpoint(), free_endpoint())
        elsewhere = tmp_path / "elsewhere"  # "gpu-a" and "gpu-b": trainers whose run directories are not under runs/
        elsewhere.mkdir()
        for where, pub, ctl in (("gpu-a", pub_a, ctl_a), ("gpu-b", pub_b, ctl_b)):
            run(f".venv/bin/tetriszmq train --config {TINY} --pub {pub} --ctl {ctl} --run-dir {where}", *shorter,
                cwd=elsewhere)
        line = viewer_remote.replace("tcp://gpu-a:5555", pub_a).replace("tcp://gpu-b:5555,tcp://gpu-b:7000",
                                                                         f"{pub_b},{ctl_b}")
        both = viewer(line)
        wait_for(lambda: sum(r["link"] == "online" for r in listed(both).values()) == 3, timeout=120,
                 what="the run under runs/ still training and two remote trainers")
        assert len(listed(both)) == 4 and sum(r["dir"] is None for r in listed(both).values()) == 2

        plain, folders = commands("docs/VIEWER.md", "# tetriszmq viewer")  # the same, from docs/VIEWER.md
        assert plain == viewer_all.removeprefix(".venv/bin/")
        two = viewer(folders.replace("tcp://gpu-a:5555", pub_a).replace("tcp://gpu-b:5555,tcp://gpu-b:7000",
                                                                        f"{pub_b},{ctl_b}"))
        wait_for(lambda: sum(r["link"] == "online" for r in listed(two).values()) == 3, timeout=120,
                 what="runs/ and the remote trainers again, sweeps/ not there yet")
        assert {i for i in listed(two) if not i.startswith("trainer~")} == {"runs~tiny", "runs~tiny-2"}
    finally:
        reap(started)
