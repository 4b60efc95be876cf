"""The sweep's space file: what each trial samples, what it is scored on, when it is pruned.

```toml
[set]                                   # --set values of every trial: the budget, anything held fixed
"train.max_minutes" = 3

[space]                                 # config key -> distribution
"agent.params.learning_rate" = { type = "float", low = 1e-5, high = 1e-3, log = true }
"agent.params.train_freq" = { type = "int", low = 16, high = 256, log = true }
"env.features" = { type = "categorical", choices = [[], ["holes", "bumpiness", "lines"]] }

[objective]                             # eval (default): mean lines of `tetriszmq eval` on the final checkpoint
[pruner]                                # median (default), threshold or none
```

`check` validates all of it against the run config before anything starts: every key must be one
`tetriszmq.config` knows (``agent.params.*``: a keyword of the algorithm), and the config must accept
both ends of every range and every choice, so a trial never fails on a value the sweep chose.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from tetriszmq import config as cfg

# The space file's own tables are declared like the run config's sections, and read by the same code.
setting, read_section = cfg.setting, cfg.read_section


class SpaceError(ValueError):
    """A bad space file; the message names the table and key."""


@dataclass(frozen=True)
class Objective:
    metric: str = setting("eval", choices=("eval", "train"),
                         doc="eval: mean lines of `tetriszmq eval` on the final checkpoint (placement configs); "
                             "train: mean lines of the last `window` training episodes")
    games: int = setting(10, min=1, doc="eval: games, seeded seed, seed + 1, ...")
    max_pieces: int = setting(2000, min=1, doc="eval: piece cap per game")
    seed: int = setting(1, min=1)
    window: int = setting(20, min=1, doc="training episodes averaged for the intermediate values")


@dataclass(frozen=True)
class Pruner:
    kind: str = setting("median", choices=("median", "threshold", "none"))
    report_every: int = setting(10_000, min=1, doc="timesteps between intermediate values; the pruner compares "
                                                  "trials at the same step")
    startup_trials: int = setting(2, min=0, doc="median: trials that must complete before any is pruned")
    warmup_steps: int = setting(0, min=0, doc="timesteps before a trial may be pruned")
    lower: float = setting(0.0, doc="threshold: prune a trial whose intermediate value is below this")

    def make(self) -> optuna.pruners.BasePruner:
        if self.kind == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.startup_trials,
                                               n_warmup_steps=self.warmup_steps)
        if self.kind == "threshold":
            return optuna.pruners.ThresholdPruner(lower=self.lower, n_warmup_steps=self.warmup_steps)
        return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class Param:
    """One config key and its distribution."""

    key: str
    type: str
    low: float = 0
    high: float = 0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """Sample this key for ``trial``; returns the config value."""
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return self.value(trial.suggest_categorical(self.key, [_label(c) for c in self.choices]))

    def value(self, stored: Any) -> Any:
        """The config value of what Optuna stored (a list choice is stored as its TOML text)."""
        if self.type != "categorical":
            return stored
        return next(c for c in self.choices if _label(c) == stored)

    def candidates(self) -> list[Any]:
        """Values that bound what this parameter can take: both ends, or every choice."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    objective: Objective = field(default_factory=Objective)
    pruner: Pruner = field(default_factory=Pruner)

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """The trial's ``--set`` arguments: the fixed values, then the sampled ones."""
        return [f"{key}={cfg.toml_value(value)}" for key, value in {**self.fixed, **values}.items()]

    def describe(self) -> dict[str, Any]:
        """Everything that defines the study, stored with it so that every sweep joining it uses the same."""
        return {"params": [vars(p) | {"choices": list(p.choices)} for p in self.params], "set": self.fixed,
                "objective": vars(self.objective), "pruner": vars(self.pruner)}


def load(path: Path) -> Space:
    """Read and structurally validate a space file (not yet against a config: see `check`)."""
    try:
        data = cfg.read_toml(path, "space file")
    except cfg.ConfigError as exc:
        raise SpaceError(str(exc)) from None
    unknown = set(data) - {"set", "space", "objective", "pruner"}
    if unknown:
        raise SpaceError(f"{path}: unknown table [{sorted(unknown)[0]}]; known: set, space, objective, pruner")
    try:
        objective = read_section("objective", Objective, data.get("objective", {}))
        pruner = read_section("pruner", Pruner, data.get("pruner", {}))
    except cfg.ConfigError as exc:
        raise SpaceError(f"{path}: {exc}") from None
    space = data.get("space", {})
    if not isinstance(space, dict) or not space:
        raise SpaceError(f"{path}: [space] must declare at least one parameter")
    params = tuple(_param(key, spec) for key, spec in space.items())
    fixed = _flatten(data.get("set", {}))
    if clash := set(fixed) & {p.key for p in params}:
        raise SpaceError(f"[set] and [space] both give {sorted(clash)[0]}")
    return Space(params, fixed, objective, pruner)


def _param(key: str, spec: Any) -> Param:
    where = f"[space] {key!r}"
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: expected a table like {{ type = \"float\", low = 0.9, high = 0.99 }}")
    kind = spec.get("type")
    allowed = {"float": {"type", "low", "high", "log"}, "int": {"type", "low", "high", "log"},
               "categorical": {"type", "choices"}}
    if kind not in allowed:
        raise SpaceError(f"{where}: type must be float, int or categorical, got {kind!r}")
    if extra := set(spec) - allowed[kind]:
        raise SpaceError(f"{where}: unknown field {sorted(extra)[0]!r} for type {kind}; "
                         f"known: {', '.join(sorted(allowed[kind]))}")
    if kind == "categorical":
        return _categorical(where, key, spec.get("choices"))
    number = int if kind == "int" else (int, float)
    low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
    for name, value in (("low", low), ("high", high)):
        if not isinstance(value, number) or isinstance(value, bool):
            raise SpaceError(f"{where}: {name} must be {'an integer' if kind == 'int' else 'a number'}, "
                             f"got {value!r}")
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: log must be true or false, got {log!r}")
    if low >= high:
        raise SpaceError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise SpaceError(f"{where}: a log range needs low > 0, got {low}")
    return Param(key, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high, log)


def _categorical(where: str, key: str, choices: Any) -> Param:
    if not isinstance(choices, list) or not choices:
        raise SpaceError(f"{where}: choices must be a non-empty list")
    labels = [_label(c) for c in choices]
    if len(set(map(repr, labels))) != len(labels):
        raise SpaceError(f"{where}: choices repeat a value")
    return Param(key, "categorical", choices=tuple(choices))


def _label(choice: Any) -> Any:
    """Optuna stores only scalars: a list or table choice is stored as its TOML text."""
    return choice if isinstance(choice, (str, int, float, bool)) else cfg.toml_value(choice)


def _flatten(table: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"max_minutes": 3}}`` and ``{"train.max_minutes": 3}`` alike -> ``{"train.max_minutes": 3}``."""
    if not isinstance(table, dict):
        raise SpaceError("[set] must be a table of config keys")
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check(space: Space, base: cfg.Config) -> None:
    """Raise `SpaceError` unless the config accepts every key and every value the sweep can set."""
    data = base.to_dict()
    _assign(data, space.fixed)
    _config_of(data, "[set]")
    for param in space.params:
        for value in param.candidates():
            _config_of(_assign(copy.deepcopy(data), {param.key: value}), f"[space] {param.key!r} = {value!r}")
    algos = _candidates(space, data, "agent.algo")
    for key in [*space.fixed, *(p.key for p in space.params)]:
        if key.startswith("agent.params."):
            for algo in algos:
                _check_algo_param(algo, key)
    if space.objective.metric == "eval" and set(_candidates(space, data, "env.kind")) != {"placement"}:
        raise SpaceError("[objective] metric = \"eval\" plays placement games: every trial needs env.kind = "
                         "\"placement\" (or use metric = \"train\")")


def _assign(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    for key, value in values.items():
        *tables, last = key.split(".")
        node = data
        for name in tables:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise SpaceError(f"{key}: {name} is not a table")
        node[last] = copy.deepcopy(value)
    return data


def _config_of(data: dict[str, Any], where: str) -> cfg.Config:
    """The config a trial would run, checked as the trainer checks it before training (env included)."""
    from tetriszmq.tetris.envs import env_factory

    try:
        config = cfg.from_dict(data)
        env_factory(config.env)
        return config
    except cfg.ConfigError as exc:
        raise SpaceError(f"{where}: {exc}") from None


def _candidates(space: Space, data: dict[str, Any], key: str) -> list[Any]:
    """Every value ``key`` can take in a trial."""
    for param in space.params:
        if param.key == key:
            return param.candidates()
    section, name = key.split(".")
    return [data[section][name]]


def _check_algo_param(algo: str, key: str) -> None:
    from tetriszmq import agents

    name = key.removeprefix("agent.params.").split(".")[0]
    try:
        known = _keywords(agents.algo_class(algo))
    except cfg.ConfigError as exc:
        raise SpaceError(str(exc)) from None
    if name not in known:
        raise SpaceError(f"{key}: {algo} has no parameter {name!r}; known: {', '.join(sorted(known))}")


def _keywords(cls: type) -> set[str]:
    """The keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up to the base classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names - {"self", "policy", "env", "_init_setup_model"}
