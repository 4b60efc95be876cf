"""Agent factory: config name -> stable-baselines3 algorithm.

A new agent joins by adding one line to `ALGOS`: where its class lives, the
policy it uses unless the config names another, and the environment kinds it
can play. Every entry is an SB3 `BaseAlgorithm`, so callbacks, logger, save
and load work the same for all.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import NamedTuple

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecEnv

from tetriszmq.config import AgentSection, ConfigError, EnvSection


class Algo(NamedTuple):
    path: str  # "module:Class"
    policy: str  # the policy unless the config names one
    env_kinds: tuple[str, ...]  # the `env.kind`s it can play


# SB3's algorithms read any dict observation: on the placement env they see the features and the
# mask (an illegal placement ends the game). The afterstate DQN needs the placement env's features.
ALGOS: dict[str, Algo] = {
    "ppo": Algo("stable_baselines3:PPO", "MultiInputPolicy", ("raw", "placement")),
    "a2c": Algo("stable_baselines3:A2C", "MultiInputPolicy", ("raw", "placement")),
    "dqn": Algo("stable_baselines3:DQN", "MultiInputPolicy", ("raw", "placement")),
    "afterstate-dqn": Algo("tetriszmq.agents.afterstate_dqn:AfterstateDQN", "AfterstatePolicy", ("placement",)),
}


def check_pairing(agent: AgentSection, env: EnvSection) -> None:
    """Refuse, before a run starts, an algorithm that is unknown or cannot play the configured env."""
    kinds = _algo(agent.algo).env_kinds
    if env.kind not in kinds:
        raise ConfigError(f"agent.algo = {agent.algo!r} cannot play env.kind = {env.kind!r}; "
                          f"it needs env.kind = {' or '.join(repr(k) for k in kinds)}")


def algo_class(name: str) -> type[BaseAlgorithm]:
    module, _, attr = _algo(name).path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _algo(name: str) -> Algo:
    if name not in ALGOS:
        raise ConfigError(f"agent.algo: unknown {name!r}; known: {', '.join(ALGOS)}")
    return ALGOS[name]


def build_model(agent: AgentSection, env: VecEnv, seed: int) -> BaseAlgorithm:
    """A fresh model; a bad hyper-parameter is a `ConfigError` naming ``agent.params``."""
    cls = algo_class(agent.algo)
    policy = agent.policy or _algo(agent.algo).policy
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
