"""The bench scripts run and print their tables (quick mode; no assertion on any figure)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.bench]

SCRIPTS = {
    "overhead": (["bench/overhead.py", "--quick", "--config", "configs/ppo.toml"], r"variant\s+steps/s\s+wall ratio"),
    "transport": (["bench/transport.py", "--quick"], r"rate\s+messages\s+p50 ms\s+p99 ms\s+max ms"),
    "latency": (["bench/latency.py", "--quick"], r"server\s+clients\s+samples\s+p50 ms\s+p99 ms\s+max ms"),
    "fanout": (["bench/fanout.py", "--quick"], r"server\s+clients\s+min %\s+p5 %\s+med %"),
    "resync": (["bench/resync.py", "--quick"], r"clients\s+snapshot MB\s+first wave s\s+snapshots/s"),
    "placement_speed": (["bench/placement_speed.py", "--quick"], r"placements/s"),
    "training_speed": (["bench/training_speed.py", "--quick"], r"variant\s+wall/s\s+per CPU s\s+main us"),
    "learning": (["bench/learning.py", "--quick"], r"agent\s+mean\s+median\s+min\s+max\s+capped"),
    "catalogue": (["bench/catalogue.py", "--quick"], r"figure\s+value"),
    "runs_fanout": (["bench/runs_fanout.py", "--quick"], r"trainers\s+mode\s+clients\s+min %"),
    "page": (["bench/page.py", "--quick"], r"figure\s+value"),
    "recording": (["bench/recording.py", "--quick"], r"placement callbacks on_step"),
    "replay_frames": (["bench/replay_frames.py", "--quick"], r"figure\s+value"),
    "sweep": (["bench/sweep.py", "--quick"], r"config\s+eval mean lines"),
    "relay": (["bench/relay.py", "--quick"], r"trainers\s+viewers\s+path\s+msg/s/viewer"),
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_bench_script_runs_in_quick_mode_and_prints_its_table(name: str) -> None:
    args, header = SCRIPTS[name]
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(header, done.stdout), done.stdout[-3000:]
    table = done.stdout[re.search(header, done.stdout).end():]
    assert re.search(r"^\s*\S+.*\d", table, re.M), "the table has no rows"
