"""Afterstate DQN trains through SB3's own loop, never plays an illegal placement, and survives save/load."""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from tetriszmq.agents.afterstate_dqn import AfterstateDQN, masked_values
from tetriszmq.evaluate import ModelPolicy, evaluate
from tetriszmq.tetris.dellacherie import Dellacherie
from tetriszmq.tetris.features import DELLACHERIE_FEATURES
from tetriszmq.tetris.placement_env import PlacementTetris

FEATURES = ("lines", "holes", "bumpiness", "aggregate_height")
SMALL = dict(learning_starts=100, batch_size=32, buffer_size=2_000, train_freq=1, target_update_interval=100,
             exploration_steps=300, net_arch=(16, 16))


class LegalityLog(gym.Wrapper):
    """Counts the placements the agent chose that the mask forbade."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.steps = self.illegal = 0
        self._mask = np.zeros(0)

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._mask = obs["mask"]
        return obs, info

    def step(self, action):
        self.steps += 1
        self.illegal += int(self._mask[int(action)] == 0)
        obs, *rest = self.env.step(action)
        self._mask = obs["mask"]
        return (obs, *rest)


def vec_env(max_pieces: int = 50) -> DummyVecEnv:
    env = DummyVecEnv([lambda: Monitor(LegalityLog(PlacementTetris(features=FEATURES, max_pieces=max_pieces)))])
    env.seed(1)
    return env


@pytest.fixture(scope="module")
def trained() -> AfterstateDQN:
    th.set_num_threads(1)
    model = AfterstateDQN(env=vec_env(), seed=1, **SMALL)
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default leaves a /tmp/SB3-* folder
    return model.learn(600)


@pytest.mark.slow  # trains a model
def test_a_short_run_updates_the_network_and_only_plays_legal_placements(trained):
    log = trained.env.envs[0].env  # Monitor -> LegalityLog
    assert log.steps == 600
    assert log.illegal == 0  # warm-up and epsilon-random steps included
    assert trained._n_updates == 500
    assert trained.policy.feature_names == FEATURES


def random_observations(seed: int, n: int, legal: float) -> dict[str, np.ndarray]:
    """``n`` envs' observations with random features; each placement legal with probability ``legal``."""
    rng = np.random.default_rng(seed)
    obs = {"features": rng.random((n, 40, len(FEATURES)), dtype=np.float32) * 10,
           "mask": (rng.random((n, 40)) < legal).astype(np.int8)}
    obs["mask"][:, 0] = 1
    return obs


@pytest.mark.slow  # trains a model
def test_greedy_choice_ignores_illegal_placements_even_when_they_score_best(trained):
    obs = random_observations(0, 64, 0.3)
    values = trained.policy.q_net(th.as_tensor(obs["features"])).detach().numpy()
    assert (obs["mask"][np.arange(64), values.argmax(axis=1)] == 0).any()  # unmasked, it would cheat
    actions, _ = trained.predict(obs, deterministic=True)
    assert obs["mask"][np.arange(64), actions].all()
    legal_best = np.where(obs["mask"] > 0, values, -np.inf).argmax(axis=1)
    assert np.array_equal(actions, legal_best)


def test_masked_values_leave_only_legal_placements_for_the_max():
    values = th.tensor([[5.0, 1.0, 3.0]])
    assert masked_values(values, th.tensor([[0, 1, 1]])).amax(dim=1).item() == 3.0


@pytest.mark.slow  # trains a model
def test_save_and_load_give_the_same_greedy_actions(trained, tmp_path):
    trained.save(tmp_path / "model.zip")
    loaded = AfterstateDQN.load(tmp_path / "model.zip")  # no env: feature names come from the checkpoint
    assert loaded.policy.feature_names == FEATURES
    assert loaded.game_over_penalty == trained.game_over_penalty
    env = PlacementTetris(features=FEATURES)
    obs, _ = env.reset(seed=5)
    for _ in range(40):
        action = trained.predict(obs, deterministic=True)[0]
        assert action == loaded.predict(obs, deterministic=True)[0]
        obs, _, terminated, _, _ = env.step(action)
        if terminated:
            obs, _ = env.reset()


@pytest.mark.slow  # trains a model
def test_evaluation_of_a_model_is_reproducible_and_uses_its_features(trained):
    policy = ModelPolicy(trained)
    assert policy.feature_names == FEATURES
    first = evaluate(trained, games=2, max_pieces=60, seed=3)
    assert first == evaluate(policy, games=2, max_pieces=60, seed=3)
    assert len(first["lines"]) == 2 and first["min"] <= first["median"] <= first["max"]


def test_dellacherie_clears_almost_every_row_it_can_on_a_capped_game():
    result = evaluate(Dellacherie(), games=1, max_pieces=300, seed=1)
    assert Dellacherie().feature_names == DELLACHERIE_FEATURES
    assert result["capped"] == 1  # never lost
    assert result["lines"][0] >= 110  # 300 pieces hold 120 rows' worth of cells


def test_per_episode_training_with_several_envs_is_refused_at_construction():
    envs = DummyVecEnv([lambda: PlacementTetris(features=FEATURES)] * 2)
    with pytest.raises(ValueError, match="n_envs"):
        AfterstateDQN(env=envs, train_freq=(1, "episode"))
    AfterstateDQN(env=envs, train_freq=16)


@pytest.mark.parametrize(("n_envs", "steps"), [(1, 128), (4, 32), (3, 42)])
def test_the_default_update_frequency_counts_placements_whatever_the_number_of_envs(n_envs, steps):
    """One update per 128 placements: 4 envs step 4 placements at a time, so every 32 of their steps."""
    envs = DummyVecEnv([lambda: PlacementTetris(features=FEATURES)] * n_envs)
    model = AfterstateDQN(env=envs, buffer_size=1_000)
    assert (model.train_freq.frequency, model.train_freq.unit.value) == (steps, "step")
    assert AfterstateDQN(env=envs, buffer_size=1_000, train_freq=[8, "step"]).train_freq.frequency == 8


@pytest.mark.slow  # trains a model
def test_the_policys_own_predict_chooses_what_sb3s_generic_predict_chooses(trained):
    """`AfterstatePolicy.predict` skips SB3's deep copy and mode switching, and nothing else."""
    from stable_baselines3.common.policies import BasePolicy

    batch = random_observations(1, 8, 0.5)
    single = {"features": batch["features"][0], "mask": batch["mask"][0]}
    for obs in (batch, single):
        ours, _ = trained.policy.predict(obs)
        theirs, _ = BasePolicy.predict(trained.policy, obs, deterministic=True)
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs)
    trained.exploration_rate = 1.0  # the exploring path writes into the array predict returns
    assert single["mask"][int(trained.predict(single, deterministic=False)[0])] == 1


@pytest.mark.slow  # trains a model
def test_acting_values_follow_the_network_through_updates_and_loads(trained, tmp_path):
    """`AfterstateValue.values` (numpy, for acting) equals the torch forward pass, also after its weights change."""
    obs = random_observations(3, 8, 0.5)["features"]
    q_net = trained.q_net

    def same() -> bool:
        with th.no_grad():
            expected = q_net(th.as_tensor(obs)).numpy()
        return np.allclose(q_net.values(obs), expected, rtol=1e-5, atol=1e-5)

    assert same()
    assert np.array_equal(copy.deepcopy(q_net).values(obs), q_net.values(obs))  # its lock is not copied, but made anew
    before = q_net.values(obs)
    trained.learn(50, reset_num_timesteps=False)  # optimiser steps change the weights in place
    assert not np.allclose(q_net.values(obs), before) and same()
    saved = q_net.values(obs)
    trained.save(tmp_path / "model")
    with th.no_grad():
        for parameter in q_net.parameters():
            parameter.zero_()
    assert same()
    trained.set_parameters(str(tmp_path / "model"))
    q_net = trained.q_net
    assert np.array_equal(q_net.values(obs), saved) and same()


def small_model(**kwargs: Any) -> AfterstateDQN:
    model = AfterstateDQN(env=vec_env(), seed=1, **SMALL, **kwargs)
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


@pytest.mark.slow  # trains models
def test_a_learner_thread_makes_the_same_updates_and_finishes_them_before_learn_returns(tmp_path):
    threaded, plain = small_model(learner_thread=True), small_model(learner_thread=False)
    threaded.learn(400)
    plain.learn(400)
    assert threaded._n_updates == plain._n_updates == 300  # one per step after learning_starts = 100
    assert threaded._learner is not None and plain._learner is None
    assert threaded._update_in_flight is None, "learn() returned with an update still running"
    threaded.train(1, 32)  # an update in flight ...
    threaded.save(tmp_path / "model")  # ... is finished before the save, which holds its optimiser step
    assert threaded._update_in_flight is None and threaded._n_updates == 301
    loaded = AfterstateDQN.load(tmp_path / "model")
    for ours, theirs in zip(threaded.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert th.equal(ours, theirs)


@pytest.mark.slow  # trains a model
def test_an_update_that_fails_in_the_learner_thread_fails_learn():
    model = small_model(learner_thread=True)

    def broken(gradient_steps: int, batch_size: int) -> None:
        raise RuntimeError("update failed")

    model._update = broken
    with pytest.raises(RuntimeError, match="update failed"):
        model.learn(300)


def test_the_replay_buffer_holds_what_sb3s_own_store_transition_would_store():
    """Short capped games: ended episodes' terminal observations, in two envs, without SB3's deep copy."""
    from functools import partial

    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

    from tetriszmq.stream.checkpoints import ring_arrays

    def model() -> AfterstateDQN:
        envs = DummyVecEnv([lambda: Monitor(PlacementTetris(features=FEATURES, max_pieces=5))] * 2)
        envs.seed(4)
        made = AfterstateDQN(env=envs, seed=4, learning_starts=1_000, buffer_size=200, train_freq=4)
        made.set_logger(Logger(folder=None, output_formats=[]))
        return made

    ours, theirs = model(), model()
    theirs._store_transition = partial(OffPolicyAlgorithm._store_transition, theirs)
    for model_ in (ours, theirs):
        model_.set_random_seed(4)  # exploration draws from the global generators: each run from the same state
        model_.learn(60)
    assert ours.replay_buffer.pos == theirs.replay_buffer.pos == 32  # 30 steps of 2 envs, in rounds of 4
    for name, array in ring_arrays(ours.replay_buffer).items():
        assert np.array_equal(array, ring_arrays(theirs.replay_buffer)[name]), name
    assert ours.replay_buffer.dones.sum() == 0 and ours.replay_buffer.rewards.any()  # capped, never lost
