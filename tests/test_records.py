"""Episode records: every placement episode replays from its seed and actions; damaged files are clear errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback

from tetriszmq.config import EnvSection
from tetriszmq.recorder import EpisodeRecorder, PlacementCallbacks
from tetriszmq.replay import check, simulate
from tetriszmq.tetris import records
from tetriszmq.tetris.dellacherie import Dellacherie
from tetriszmq.tetris.envs import make_vec_env
from tetriszmq.tetris.placement_env import PlacementTetris
from tetriszmq.tetris.records import EpisodeRecord, RecordError


def random_legal(obs: dict, rng: np.random.Generator) -> int:
    return int(rng.choice(np.flatnonzero(obs["mask"])))


def test_episodes_reset_without_a_seed_replay_from_their_own_seed():
    env, rng = PlacementTetris(), np.random.default_rng(0)
    obs, _ = env.reset(seed=7)
    seen = []
    while len(seen) < 5:
        obs, _, terminated, truncated, info = env.step(random_legal(obs, rng))
        if terminated or truncated:
            seen.append(info["episode_record"])
            obs, _ = env.reset()  # as SB3 does after the first reset: no seed
    assert seen[0].seed == 7 and len({r.seed for r in seen}) == 5
    assert all(check(record)["ok"] for record in seen)


def test_sb3_vec_env_auto_resets_hand_over_replayable_records():
    """SB3 seeds only the first reset of a VecEnv; every later episode must still come with a working record."""
    vec = make_vec_env(EnvSection(kind="placement", n_envs=2, max_pieces=40, reward="lines"), seed=11)
    rng = np.random.default_rng(1)
    obs = vec.reset()
    found: list[EpisodeRecord] = []
    while len(found) < 6:
        actions = [random_legal({"mask": mask}, rng) for mask in obs["mask"]]
        obs, _, dones, infos = vec.step(np.array(actions))
        found += [info["episode_record"] for info, done in zip(infos, dones, strict=True) if done]
    vec.close()
    assert {r.seed for r in found[:2]} == {11, 12} and all(r.reward == "lines" for r in found)
    assert all(check(record)["ok"] for record in found), [check(r) for r in found if not check(r)["ok"]]


def dellacherie_game(env: PlacementTetris, seed: int) -> dict:
    """Play one game to its end; the last step's info."""
    obs, _ = env.reset(seed=seed)
    player = Dellacherie(env.feature_names)
    while True:
        obs, _, terminated, truncated, info = env.step(player(obs))
        if terminated or truncated:
            return info


def test_a_record_round_trips_and_a_different_action_fails_the_check():
    env = PlacementTetris(max_pieces=120)
    info = dellacherie_game(env, seed=3)
    record = info["episode_record"]
    assert (record.end, record.pieces, len(record.actions)) == ("piece cap", 120, 120) and record.lines > 0
    assert records.decode(records.encode(record)) == record
    assert set(record.stats) == {"holes", "max_height", "bumpiness"} and record.stats == {
        k: info["episode_stats"][k] for k in record.stats}
    changed = bytearray(record.actions)
    changed[5] = next(a for a in range(40) if a != changed[5] and env.action_space.contains(a))
    assert not check(EpisodeRecord(**{**record.__dict__, "actions": bytes(changed)}))["ok"]


def test_an_episode_longer_than_a_record_keeps_its_beginning_marked_cut():
    env = PlacementTetris(max_pieces=40)
    env.record_limit = 15
    info = dellacherie_game(env, seed=2)
    record = info["episode_record"]
    assert (record.end, record.pieces, len(record.actions)) == ("cut", 15, 15)
    assert info["episode_stats"]["pieces"] == 40
    assert simulate(record)["pieces"] == 15 and check(record)["ok"]


@pytest.mark.parametrize(("damage", "message"), [
    (lambda data: data[:40], "checksum"),
    (lambda data: data[:6], "truncated"),
    (lambda data: b"", "truncated"),
    (lambda data: data[:20] + bytes([data[20] ^ 1]) + data[21:], "checksum"),
    (lambda data: b"PK\x03\x04" + data[4:], "not an episode record"),
    (lambda data: data[:4] + b"\x09" + data[5:], "format 9"),
])
def test_a_damaged_record_is_a_record_error_naming_the_problem(tmp_path, damage, message):
    path = tmp_path / "best.rec"
    records.write(path, EpisodeRecord(seed=1, actions=bytes([20, 21]), lines=0, score=2.0, pieces=2,
                                      end="game over", features=("holes",), max_pieces=0))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(RecordError, match=message):
        records.read(path)


def recording(directory: Path, keep: int) -> EpisodeRecorder:
    """An `EpisodeRecorder` as ``learn()`` drives it, flushing at every episode's end."""
    recorder = EpisodeRecorder(directory, keep=keep, flush_every=0)
    recorder.init_callback(SimpleNamespace(num_timesteps=0, get_env=lambda: None, logger=None))
    recorder.on_training_start({}, {})
    return recorder


def end_episodes(recorder: EpisodeRecorder, lines: list[int]) -> None:
    for n in lines:
        record = EpisodeRecord(seed=1, actions=bytes([20]), lines=n, score=1.0, pieces=1, end="game over",
                               features=(), max_pieces=0)
        recorder.update_locals({"dones": np.ones(1, bool), "infos": [{"episode_record": record}]})
        recorder.on_step()


class Probe(BaseCallback):
    """Notes the ``infos`` of every step it is called on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[dict]] = []

    def _on_step(self) -> bool:
        self.seen.append(self.locals["infos"])
        return True


def test_the_placement_callbacks_run_on_steps_that_end_an_episode_or_owe_a_flush_and_on_no_other(tmp_path):
    recorder, probe = EpisodeRecorder(tmp_path, flush_every=0.05), Probe()
    callbacks = PlacementCallbacks(recorder, probe)
    callbacks.init_callback(SimpleNamespace(num_timesteps=0, get_env=lambda: None, logger=None))
    callbacks.on_training_start({}, {})
    quiet = {"dones": np.zeros(1, bool), "infos": [{}]}

    def step(step_locals: dict) -> None:
        callbacks.update_locals(step_locals)
        callbacks.on_step()

    for _ in range(100):
        step(quiet)
    assert probe.seen == []
    record = EpisodeRecord(seed=1, actions=bytes([20]), lines=3, score=1.0, pieces=1, end="game over",
                           features=(), max_pieces=0)
    step({"dones": np.ones(1, bool), "infos": [{"episode_record": record}]})
    assert probe.seen == [[{"episode_record": record}]]  # called once, with that step's locals
    deadline = time.monotonic() + 30
    while not (tmp_path / "best.rec").exists() and time.monotonic() < deadline:
        step(quiet)  # no episode ends: the flush that fell due still happens
        recorder._writer._jobs.join()
    callbacks.on_training_end()
    assert records.read(tmp_path / "best.rec").lines == 3
    assert all(seen == [{}] for seen in probe.seen[1:])


def test_a_stalled_disk_never_stalls_training_and_a_clean_stop_writes_every_record(tmp_path, monkeypatch):
    disk = threading.Event()
    write = records.write

    def stalled(*args, **kwargs) -> None:
        disk.wait(60)
        write(*args, **kwargs)

    monkeypatch.setattr(records, "write", stalled)
    recorder = recording(tmp_path, keep=3)
    training = threading.Thread(target=end_episodes, args=(recorder, [4, 9, 2, 7, 1, 3, 0, 5]))
    training.start()
    training.join(30)
    stalled_training = training.is_alive()
    disk.set()
    training.join()
    recorder.on_training_end()
    assert not stalled_training, "the training thread waited for the disk"
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "best.rec", "episode-6.rec", "episode-7.rec", "episode-8.rec"]
    assert records.read(tmp_path / "best.rec").episode == 2
    assert records.read(tmp_path / "episode-8.rec").lines == 5


def test_a_write_error_of_the_recorder_ends_training(tmp_path, monkeypatch):
    def full(*args, **kwargs) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(records, "write", full)
    recorder = recording(tmp_path, keep=3)
    end_episodes(recorder, [1])
    with pytest.raises(OSError, match="No space left"):
        recorder.on_training_end()
