"""What a run does before it starts and after it ends: refuse what cannot train, leave the process as it found it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY

from tetriszmq import agents
from tetriszmq import config as cfg
from tetriszmq.stream import journal
from tetriszmq.tetris.envs import make_vec_env
from tetriszmq.trainer import RunOptions, train

ANY_PORTS = ["publish.pub='tcp://127.0.0.1:0'", "publish.ctl='tcp://127.0.0.1:0'"]


@pytest.mark.slow  # a real `tetriszmq train` process: its exit status, as a shell sees it
def test_afterstate_dqn_on_the_raw_board_is_refused_before_anything_starts(tmp_path: Path):
    run_dir = tmp_path / "never"
    result = subprocess.run(
        [sys.executable, "-m", "tetriszmq", "train", "--config", str(TINY), "--run-dir", str(run_dir),
         "--pub", "tcp://127.0.0.1:0", "--ctl", "tcp://127.0.0.1:0",
         "--set", "agent.algo='afterstate-dqn'", "--set", "agent.params={}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "agent.algo" in result.stderr and "env.kind" in result.stderr and "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_an_unknown_algorithm_is_refused_before_anything_starts(tmp_path: Path):
    config = cfg.load(TINY, ["agent.algo='sarsa'"])
    with pytest.raises(cfg.ConfigError, match="agent.algo: unknown 'sarsa'"):
        train(config, RunOptions(run_dir=tmp_path / "never", quiet=True))
    assert not (tmp_path / "never").exists()


def test_config_errors_found_without_building_anything_leave_no_run_directory(tmp_path: Path):
    for override, message in [("env.features=['holes', 'wells']", "env.features: unknown wells"),
                              ("agent.params.warp_speed=9", "agent.params: warp_speed: not for PPO")]:
        config = cfg.load(TINY, [*ANY_PORTS, "env.kind='placement'", override])
        with pytest.raises(cfg.ConfigError, match=message):
            train(config, RunOptions(run_dir=tmp_path / "never", quiet=True))
        assert not (tmp_path / "never").exists()


def last_status(run_dir: Path) -> dict:
    return [m for m in journal.read(run_dir / "metrics.jsonl") if m["topic"] == "status"][-1]


def test_a_model_that_cannot_be_built_ends_the_run_as_error_saying_why(tmp_path: Path):
    config = cfg.load(TINY, [*ANY_PORTS, "agent.params.batch_size=1"])  # PPO asserts batch_size > 1
    with pytest.raises(cfg.ConfigError, match="rejected by PPO"):
        train(config, RunOptions(run_dir=tmp_path / "run", quiet=True))
    status = last_status(tmp_path / "run")
    assert status["state"] == "error" and "rejected by PPO" in status["reason"]


def test_a_checkpoint_that_cannot_be_loaded_ends_the_run_as_error_and_exits_1(tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest.zip").write_bytes(b"not a zip file")
    assert train(cfg.load(TINY, ANY_PORTS), RunOptions(run_dir=run_dir, resume=True, quiet=True)) == 1
    status = last_status(run_dir)
    assert status["state"] == "error" and "zip" in status["reason"]
    assert "cannot load the model: ValueError" in capsys.readouterr().err


@pytest.mark.parametrize("algo, params", [("ppo", "{n_steps=64, batch_size=64, n_epochs=1}"), ("a2c", "{}"),
                                          ("dqn", "{learning_starts=64}")])
def test_key_action_algorithms_also_train_on_the_placement_env(algo: str, params: str):
    """SB3's own algorithms read the placement features and mask as a dict observation (an illegal placement
    ends the game), so they may be compared with the afterstate DQN on the same env."""
    config = cfg.load(None, [f"agent.algo='{algo}'", f"agent.params={params}"])
    agents.check_pairing(config.agent, config.env)
    model = agents.build_model(config.agent, make_vec_env(config.env, seed=1), seed=1)
    model.learn(128)
    assert model.num_timesteps >= 128


def test_train_gives_back_the_signal_handlers_it_found(tmp_path: Path):
    """`train()` is callable from a program with its own SIGINT and SIGTERM handlers; both come back."""
    def mine(signum: int, frame: object) -> None:
        raise AssertionError("not during this test")

    before = {sig: signal.signal(sig, mine) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        config = cfg.load(TINY, ["train.max_timesteps=64", "publish.pub='tcp://127.0.0.1:0'",
                                 "publish.ctl='tcp://127.0.0.1:0'"])
        assert train(config, RunOptions(run_dir=tmp_path / "run", quiet=True)) == 0
        assert {sig: signal.getsignal(sig) for sig in before} == {signal.SIGINT: mine, signal.SIGTERM: mine}
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
