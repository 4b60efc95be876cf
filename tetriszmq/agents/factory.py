"""Agent factory: config name -> stable-baselines3 algorithm.

A new agent joins by adding one line to `ALGOS`: where its class lives and
the policy it uses unless the config names another. Every entry is an SB3
`BaseAlgorithm`, so callbacks, logger, save and load work the same for all.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecEnv

from tetriszmq.config import AgentSection, ConfigError

ALGOS: dict[str, tuple[str, str]] = {
    "ppo": ("stable_baselines3:PPO", "MultiInputPolicy"),
    "a2c": ("stable_baselines3:A2C", "MultiInputPolicy"),
    "dqn": ("stable_baselines3:DQN", "MultiInputPolicy"),
    "afterstate-dqn": ("tetriszmq.agents.afterstate_dqn:AfterstateDQN", "AfterstatePolicy"),
}


def algo_class(name: str) -> type[BaseAlgorithm]:
    if name not in ALGOS:
        raise ConfigError(f"agent.algo: unknown {name!r}; known: {', '.join(ALGOS)}")
    module, _, attr = ALGOS[name][0].partition(":")
    return getattr(importlib.import_module(module), attr)


def build_model(agent: AgentSection, env: VecEnv, seed: int) -> BaseAlgorithm:
    """A fresh model; a bad hyper-parameter is a `ConfigError` naming ``agent.params``."""
    cls = algo_class(agent.algo)
    policy = agent.policy or ALGOS[agent.algo][1]
    try:
        model = cls(policy, env, seed=seed, device=agent.device, verbose=0, **agent.params)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise ConfigError(f"agent.params / agent.policy rejected by {cls.__name__}: {exc}") from None
    return _with_silent_logger(model)


def load_model(agent: AgentSection, path: Path, env: VecEnv | None) -> BaseAlgorithm:
    """Load a checkpoint saved by `tetriszmq.stream.checkpoints`, attached to ``env``."""
    return _with_silent_logger(algo_class(agent.algo).load(path, env=env, device=agent.device))


def _with_silent_logger(model: BaseAlgorithm) -> BaseAlgorithm:
    """A logger with no outputs of its own: `StreamCallback` taps it to publish SB3's values.

    Without one, every ``learn()`` lets SB3 make a ``/tmp/SB3-<date>`` folder that nothing writes to.
    """
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model
