"""Agent factory: config name -> stable-baselines3 algorithm.

A new agent joins by adding one line to `ALGOS`: where its class lives, the
policy it uses unless the config names another, and the environment kinds it
can play. Every entry is an SB3 `BaseAlgorithm`, so callbacks, logger, save
and load work the same for all.
"""

from __future__ import annotations

import importlib
import inspect
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
    """Refuse, before a run starts, an algorithm that is unknown or cannot play the configured env,
    or ``agent.params`` it does not take. The values of `config.PARAMS` are checked when the config is
    loaded; a value of another parameter that the algorithm rejects is found only when the model is built."""
    kinds = _algo(agent.algo).env_kinds
    if env.kind not in kinds:
        raise ConfigError(f"agent.algo = {agent.algo!r} cannot play env.kind = {env.kind!r}; "
                          f"it needs env.kind = {' or '.join(repr(k) for k in kinds)}")
    cls = algo_class(agent.algo)
    taken = _keyword_parameters(cls)
    unknown = sorted(name for name in agent.params if name in RESERVED or taken is not None and name not in taken)
    if unknown:
        known = "" if taken is None else f"; it takes {', '.join(sorted(taken - RESERVED))}"
        raise ConfigError(f"agent.params: {', '.join(unknown)}: not for {cls.__name__} here{known} "
                          "(policy, device and seed are agent.policy, agent.device and run.seed)")


RESERVED = frozenset({"policy", "env", "seed", "device", "verbose"})  # what `build_model` passes itself


def _keyword_parameters(cls: type) -> set[str] | None:
    """The keyword arguments ``cls(...)`` takes, following ``**kwargs`` up the classes that pass them on;
    None if some ``__init__`` takes any keyword."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        names.update(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                     and not p.name.startswith("_"))
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return None


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
    params = dict(agent.params)
    if isinstance(params.get("train_freq"), list):  # SB3's (n, unit) tuple: TOML, hence the config, has lists only
        params["train_freq"] = tuple(params["train_freq"])
    try:
        model = cls(policy, env, seed=seed, device=agent.device, verbose=0, **params)
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
