"""`evaluate` in several processes plays the very games one process plays, and reports as they end."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
import torch as th
from conftest import ROOT
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

from tetriszmq.agents.afterstate_dqn import AfterstateDQN
from tetriszmq.evaluate import ModelPolicy, evaluate
from tetriszmq.tetris.bcts import Bcts
from tetriszmq.tetris.dellacherie import Dellacherie
from tetriszmq.tetris.placement_env import PlacementTetris

pytestmark = pytest.mark.slow  # worker processes


@pytest.mark.parametrize("agent", [Dellacherie, Bcts])
def test_two_workers_give_the_single_process_result_game_for_game(agent, tmp_path):
    ended = []
    parallel = evaluate(agent(), games=3, max_pieces=150, seed=4, workers=2, record=tmp_path,
                        on_game=lambda game, result: ended.append(game))
    assert parallel == evaluate(agent(), games=3, max_pieces=150, seed=4, workers=1)
    assert sorted(ended) == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode-1.rec", "episode-2.rec", "episode-3.rec"]


def test_a_trained_model_travels_to_the_workers_and_plays_the_same_games():
    th.set_num_threads(1)
    env = DummyVecEnv([lambda: PlacementTetris(features=("holes", "lines", "bumpiness"), max_pieces=40)])
    model = AfterstateDQN(env=env, seed=2, learning_starts=50, batch_size=16, train_freq=8, buffer_size=1_000,
                          exploration_steps=100, net_arch=(8,))
    model.set_logger(Logger(folder=None, output_formats=[]))
    policy = ModelPolicy(model.learn(200))
    assert evaluate(policy, games=3, max_pieces=60, seed=1, workers=2) == evaluate(policy, games=3, max_pieces=60,
                                                                                  seed=1)


def test_eval_cli_reports_progress_on_stderr_and_keeps_json_alone_on_stdout():
    done = subprocess.run([sys.executable, "-m", "tetriszmq", "eval", "--agent", "bcts", "--games", "2",
                           "--max-pieces", "100", "--workers", "2", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert len(orjson.loads(done.stdout)["lines"]) == 2
    assert sorted(line.split(":")[1] for line in done.stderr.splitlines()) == [" seed 1", " seed 2"]
