"""A resumed off-policy run forgets nothing: its replay buffer, RNG states and counters come back.

The buffer is saved as append-only segments beside the checkpoint (tetriszmq/stream/checkpoints.py);
these tests check it row for row, across ring wrap-around, a kill between the segments and the zip,
and a real trainer killed with SIGKILL and resumed.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch as th
from conftest import TINY_PLACEMENT, wait_for
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

from tetriszmq.agents.afterstate_dqn import AfterstateDQN
from tetriszmq.stream.checkpoints import REPLAY_ATTR, Checkpoints, buffer_rows, ring_arrays
from tetriszmq.stream.control import request
from tetriszmq.tetris.placement_env import PlacementTetris

SMALL = dict(learning_starts=50, batch_size=16, train_freq=8, exploration_steps=100, net_arch=(8,))


def model(buffer_size: int, seed: int = 1, features: tuple[str, ...] | None = ("holes", "lines"),
          n_envs: int = 1) -> AfterstateDQN:
    env = DummyVecEnv([lambda: PlacementTetris(features=features, max_pieces=40)] * n_envs)
    env.seed(seed)
    made = AfterstateDQN(env=env, seed=seed, buffer_size=buffer_size, **SMALL)
    made.set_logger(Logger(folder=None, output_formats=[]))
    return made


def load(path: Path, buffer_size: int, features: tuple[str, ...] | None = ("holes", "lines"),
         n_envs: int = 1) -> AfterstateDQN:
    """A checkpoint with an empty buffer of ``buffer_size``, on an env with the features it was trained on."""
    env = model(buffer_size, features=features, n_envs=n_envs).get_env()
    return AfterstateDQN.load(path, env=env, buffer_size=buffer_size)


def assert_same_buffer(a: AfterstateDQN, b: AfterstateDQN) -> None:
    assert (a.replay_buffer.pos, a.replay_buffer.full) == (b.replay_buffer.pos, b.replay_buffer.full)
    for name, array in ring_arrays(a.replay_buffer).items():
        assert np.array_equal(array, ring_arrays(b.replay_buffer)[name]), name


@pytest.mark.parametrize("buffer_size, steps, n_envs", [(1_000, [130, 170, 90], 1), (100, [130, 40, 250, 10], 1),
                                                        (300, [130, 170, 90, 250], 4)])
def test_the_buffer_comes_back_row_for_row_after_saves_in_pieces_and_ring_wraps(tmp_path, buffer_size, steps, n_envs):
    """Three or four saves, each writing only its new rows; with a small ring they also lap it (4 envs: the default)."""
    th.set_num_threads(1)
    trained = model(buffer_size, n_envs=n_envs)
    checkpoints = Checkpoints(tmp_path / "checkpoints", every=0)
    for n in steps:
        trained.learn(n, reset_num_timesteps=False)
        checkpoints.save(trained, {"episodes": 1})
    restored = load(checkpoints.latest, buffer_size, n_envs=n_envs)
    Checkpoints(tmp_path / "checkpoints", every=0).restore(restored)
    assert buffer_rows(restored) == min(trained.num_timesteps, buffer_size) == buffer_rows(trained)
    assert_same_buffer(restored, trained)
    segments = sorted((tmp_path / "checkpoints" / "replay").iterdir())
    assert len(segments) == len(getattr(restored, REPLAY_ATTR)["segments"]), "overwritten rows' files are pruned"


def test_a_kill_between_the_segments_and_the_zip_resumes_the_zips_own_buffer(tmp_path):
    """The segments of the save that was cut off are orphans: neither loaded nor kept."""
    trained = model(1_000)
    checkpoints = Checkpoints(tmp_path / "checkpoints", every=0)
    trained.learn(150)
    checkpoints.save(trained, {})
    saved = {name: array.copy() for name, array in ring_arrays(trained.replay_buffer).items()}
    trained.learn(120, reset_num_timesteps=False)
    checkpoints.replay.write(trained.replay_buffer, trained.num_timesteps)  # ... and the process dies here
    restored = load(checkpoints.latest, 1_000)
    Checkpoints(tmp_path / "checkpoints", every=0).restore(restored)
    assert buffer_rows(restored) == 152  # learn(150) collects in rounds of train_freq = 8 steps
    for name, array in ring_arrays(restored.replay_buffer).items():
        assert np.array_equal(array, saved[name]), name
    assert len(list((tmp_path / "checkpoints" / "replay").iterdir())) == 1


def test_a_resume_draws_what_the_saved_process_would_have_drawn_next(tmp_path):
    trained = model(1_000)
    trained.learn(60)
    checkpoints = Checkpoints(tmp_path / "checkpoints", every=0)
    checkpoints.save(trained, {})
    expected = (random.random(), np.random.rand(), th.rand(1).item())
    restored = load(checkpoints.latest, 1_000)  # SB3's load seeds every generator with the run's seed
    Checkpoints(tmp_path / "checkpoints", every=0).restore(restored)
    assert (random.random(), np.random.rand(), th.rand(1).item()) == expected


def test_opening_a_checkpoints_folder_removes_killed_saves_but_not_a_live_processs(tmp_path):
    """Two processes on one run folder (a resume started while the old trainer still saves): the new one
    cleans up what killed writers left, never the temp file the live one is writing."""
    directory = tmp_path / "checkpoints"
    (directory / "replay").mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    with subprocess.Popen(["sleep", "600"]) as writer:
        try:
            live = [directory / f".latest.zip.{writer.pid}.tmp", directory / "replay" / f".rows-1.npy.{writer.pid}.tmp"]
            left = [directory / f".latest.zip.{gone.pid}.tmp", directory / "replay" / f".rows-2.npy.{gone.pid}.tmp",
                    directory / "replay" / "rows-000000000000-000000000010.npy"]  # a segment no zip names
            for path in live + left:
                path.write_bytes(b"partial")
            Checkpoints(directory, every=0).replay.prune()
            assert [path.exists() for path in live + left] == [True, True, False, False, False]
        finally:
            writer.kill()


@pytest.mark.slow  # real trainer processes
def test_kill_9_mid_run_then_resume_keeps_the_buffer_and_continues_the_counts(trainers):
    every = ("--set", "train.checkpoint_every=150", "--set", "agent.params.buffer_size=100000")
    first = trainers("--set", "train.max_timesteps=10000000", *every, config=TINY_PLACEMENT)
    latest = first.run_dir / "checkpoints" / "latest.zip"
    wait_for(lambda: request(first.ctl, "status", timeout=5, retries=10)["timesteps"] >= 600, timeout=180)
    first.proc.kill()
    first.proc.wait(10)
    killed = load(latest, 100_000, None)
    rows = getattr(killed, REPLAY_ATTR)["rows"]
    assert rows >= 449

    second = trainers("--resume", "--set", f"train.max_timesteps={killed.num_timesteps + 300}", *every,
                      run_dir=first.run_dir, config=TINY_PLACEMENT)
    assert second.wait(180) == 0, second.output()
    final = load(first.run_dir / "checkpoints" / "final.zip", 100_000, None)
    Checkpoints(first.run_dir / "checkpoints", every=0).restore(final)
    assert final.num_timesteps >= killed.num_timesteps + 300
    assert buffer_rows(final) >= rows + 299  # the rows before the kill are still there, the new ones after
    assert final.tetriszmq_counters["episodes"] > killed.tetriszmq_counters["episodes"]
    Checkpoints(first.run_dir / "checkpoints", every=0).restore(killed)  # its segments are still named
    for name, array in ring_arrays(killed.replay_buffer).items():
        assert np.array_equal(array[:rows], ring_arrays(final.replay_buffer)[name][:rows]), name


def test_checkpoints_without_the_buffer_write_and_name_no_segments_and_restore_says_so(tmp_path):
    """``train.save_replay = false``; a run resumed from a checkpoint with a buffer must not name its segments."""
    trained = model(1_000)
    trained.learn(130)
    Checkpoints(tmp_path / "with", every=0).save(trained, {})
    assert getattr(trained, REPLAY_ATTR)["rows"] == buffer_rows(trained) > 0
    without = Checkpoints(tmp_path / "without", every=0, save_replay=False)
    without.save(trained, {})
    assert not (tmp_path / "without" / "replay").exists() or not any((tmp_path / "without" / "replay").iterdir())
    restored = load(without.latest, 1_000)
    assert getattr(restored, REPLAY_ATTR) is None
    assert without.restore(restored) is False and buffer_rows(restored) == 0
    assert Checkpoints(tmp_path / "with", every=0).restore(load(tmp_path / "with" / "latest.zip", 1_000)) is True


@pytest.mark.slow  # real trainer processes
def test_a_checkpoint_saved_without_its_buffer_resumes_with_an_empty_one_and_says_so(trainers):
    lean = ("--set", "train.save_replay=false")
    first = trainers(*lean, config=TINY_PLACEMENT)
    assert first.wait(180) == 0, first.output()
    checkpoints = first.run_dir / "checkpoints"
    assert not (checkpoints / "replay").exists() or not any((checkpoints / "replay").iterdir())
    stopped_at = load(checkpoints / "final.zip", 100, None).num_timesteps

    second = trainers("--resume", "--set", f"train.max_timesteps={stopped_at + 300}", *lean, run_dir=first.run_dir,
                      config=TINY_PLACEMENT)
    assert second.wait(180) == 0, second.output()
    assert (f"holds no replay buffer (saved with train.save_replay = false): it starts empty, and updates resume "
            f"after 100 new steps, at timestep {stopped_at + 100}") in second.output()
    final = load(checkpoints / "final.zip", 100, None)
    assert final.num_timesteps >= stopped_at + 300 and final.learning_starts == stopped_at + 100


def test_sb3s_own_dqn_and_its_dict_buffer_come_back_too(tmp_path):
    from stable_baselines3 import DQN

    env = DummyVecEnv([lambda: PlacementTetris(features=("holes", "lines"), max_pieces=30)])
    trained = DQN("MultiInputPolicy", env, buffer_size=500, learning_starts=50, seed=1).learn(300)
    Checkpoints(tmp_path, every=0).save(trained, {})
    restored = DQN.load(tmp_path / "latest.zip", env=env)
    Checkpoints(tmp_path, every=0).restore(restored)
    assert "observations.features" in ring_arrays(trained.replay_buffer)
    assert buffer_rows(restored) == 300
    for name, array in ring_arrays(trained.replay_buffer).items():
        assert np.array_equal(array, ring_arrays(restored.replay_buffer)[name]), name
