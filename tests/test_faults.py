"""Kills, full disks and torn files: no fault loses a checkpoint or corrupts the journal."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY
from stable_baselines3 import PPO

from tetriszmq.stream import journal, protocol
from tetriszmq.stream.protocol import Topic

KILLS = 20
FAST_CHECKPOINTS = ("--set", "train.max_timesteps=10000000", "--set", "train.checkpoint_every=64")


def kill_at_a_random_moment(trainer, subscribe, rng: random.Random) -> str:
    """SIGKILL the trainer right as it starts saving (odd kills) or at a random time (even kills)."""
    sub = subscribe(trainer.pub, (protocol.TOPIC_FRAMES[Topic.STATUS], protocol.TOPIC_FRAMES[Topic.HEARTBEAT]))
    try:
        sub.until(lambda topic, p: p["state"] == "running", timeout=90)
    except TimeoutError:
        pytest.fail(f"the trainer never said running (exit code {trainer.proc.poll()}):\n{trainer.output()}")
    if rng.random() < 0.5:
        sub.until(lambda topic, p: topic is Topic.STATUS and p["state"] == "saving", timeout=60)
        moment = "while saving"
    else:
        deadline = rng.uniform(0.05, 1.5)
        try:
            sub.until(lambda topic, p: False, timeout=deadline)
        except TimeoutError:
            pass
        moment = f"after {deadline:.2f}s"
    trainer.proc.kill()
    trainer.proc.wait(10)
    return moment


def test_repeated_kill_9_always_leaves_a_loadable_latest_and_resume_continues(trainers, subscribe, tmp_path):
    run_dir = tmp_path / "killed"
    rng = random.Random(7)
    timesteps, episodes, moments = 0, 0, []
    for attempt in range(KILLS):
        resume = ("--resume",) if (run_dir / "checkpoints" / "latest.zip").exists() else ()
        trainer = trainers(*resume, *FAST_CHECKPOINTS, run_dir=run_dir)
        moments.append(kill_at_a_random_moment(trainer, subscribe, rng))
        latest = run_dir / "checkpoints" / "latest.zip"
        if not latest.exists():
            continue  # killed before its first checkpoint: the next start is a fresh run
        model = PPO.load(latest)
        assert model.num_timesteps >= timesteps, f"kill {attempt} ({moments[-1]}) went back in time"
        assert model.tetriszmq_counters["episodes"] >= episodes
        timesteps, episodes = model.num_timesteps, model.tetriszmq_counters["episodes"]
        messages = journal.read(run_dir / "metrics.jsonl")
        assert messages and all(m["v"] == protocol.VERSION for m in messages)
    assert timesteps > 0 and sum(m == "while saving" for m in moments) >= 5
    finished = trainers("--resume", "--set", f"train.max_timesteps={timesteps + 200}", run_dir=run_dir)
    assert finished.wait(120) == 0, finished.output()
    assert PPO.load(run_dir / "checkpoints" / "final.zip").num_timesteps >= timesteps + 200
    assert not list((run_dir / "checkpoints").glob(".*")), "temp files of killed saves are cleaned up"


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 1 MiB tmpfs: too small for a checkpoint of the tiny PPO (about 1.6 MB)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow  # a real trainer process
def test_a_full_disk_stops_training_with_a_clear_error(tiny_disk):
    result = subprocess.run(
        [sys.executable, "-m", "tetriszmq", "train", "--config", str(TINY), "--run-dir", str(tiny_disk / "run"),
         "--pub", "tcp://127.0.0.1:0", "--ctl", "tcp://127.0.0.1:0", "--quiet",
         "--set", "train.max_timesteps=100000"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "No space left on device" in result.stderr
    statuses = [m for m in journal.read(tiny_disk / "run" / "metrics.jsonl") if m["topic"] == "status"]
    assert statuses[-1]["state"] == "error" and "No space left" in statuses[-1]["reason"]
    assert not list((tiny_disk / "run" / "checkpoints").glob(".*")), "no half-written checkpoint left"
