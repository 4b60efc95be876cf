"""Run configuration: TOML files, ``--set`` overrides, and validation.

Every key is declared once, in the dataclasses below, with its type, default
and limits. The defaults are configs/default.toml's run (tests/test_config.py
holds them equal): an afterstate DQN on the placement environment. Loading
rejects unknown keys, wrong types and out-of-range or non-finite values with a
`ConfigError` that names the key, before anything is trained.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from tetriszmq.stream.protocol import is_run_id
from tetriszmq.stream.relay import side
from tetriszmq.stream.sockets import DEFAULT_CTL, DEFAULT_PUB
from tetriszmq.stream.state import RUN_NAME_MAX


class ConfigError(ValueError):
    """A bad config file, key or value; the message names the key."""


def setting(default: Any, *, min: float | None = None, choices: tuple[str, ...] | None = None,
           doc: str = "") -> Any:
    """A config key's dataclass field: its default and the limits `read_section` checks."""
    factory = (lambda: list(default)) if isinstance(default, list) else None
    meta = {"min": min, "choices": choices, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunSection:
    name: str = setting("default", doc="run directory is <dir>/<name>")
    dir: str = setting("runs")
    seed: int = setting(1, min=1, doc="seeds > 0: tetris-gymnasium ignores seed 0")


@dataclass
class EnvSection:
    kind: str = setting("placement", choices=("raw", "placement"),
                       doc="raw: tetris-gymnasium's 8 key actions; placement: one action places a piece")
    n_envs: int = setting(4, min=1, doc="envs stepped together in one process: one forward pass scores all their "
                                           "candidates (4: 2.4x the placements/s of 1, docs/PERFORMANCE.md)")
    vec_env: str = setting("dummy", choices=("dummy", "subproc"))
    max_pieces: int = setting(2000, min=0, doc="truncate training episodes after this many pieces; 0: never")
    features: list[str] = setting([], doc="placement features by name; empty: the default set")
    reward: str = setting("lines", choices=("score", "lines"),
                         doc="what training maximises: score: tetris-gymnasium's (+1 per piece, 10 x lines^2); "
                             "lines: +1 per piece, 10 per line (placement only)")


@dataclass
class AgentSection:
    algo: str = setting("afterstate-dqn", doc="ppo, dqn, afterstate-dqn, ...: see tetriszmq.agents.ALGOS")
    policy: str = setting("", doc="SB3 policy name; empty: the algorithm's default")
    device: str = setting("cpu")
    torch_threads: int = setting(1, min=1)
    params: dict[str, Any] = field(default_factory=dict, metadata={
        "doc": "keyword arguments of the SB3 algorithm; empty: its defaults (AfterstateDQN's are the measured ones)"})


@dataclass
class TrainSection:
    max_timesteps: int = setting(5_000_000, min=1, doc="total environment steps, counting those before --resume")
    max_minutes: float = setting(0.0, min=0, doc="wall-clock limit of this process; 0: none")
    target_lines: int = setting(0, min=0,
                               doc="stop after the first episode that clears at least this many lines; 0: never")
    checkpoint_every: int = setting(50_000, min=0, doc="timesteps between periodic checkpoints; 0: only latest/final")
    save_replay: bool = setting(True, doc="checkpoints keep an off-policy model's replay buffer (up to 1.4 GB); "
                                          "false: a resume starts with an empty one (sweeps' trials)")


@dataclass
class PublishSection:
    pub: str = setting(DEFAULT_PUB)
    ctl: str = setting(DEFAULT_CTL)
    board_fps: float = setting(30.0, min=0, doc="board frames per second at most; 0: no board frames")
    metrics_every: float = setting(1.0, min=0.05, doc="seconds between metrics messages")
    heartbeat_every: float = setting(0.5, min=0.05, doc="seconds between heartbeats")
    history: int = setting(20_000, min=1, doc="episodes and metrics kept for late joiners")
    hwm: int = setting(1000, min=1, doc="PUB high-water mark, in messages per subscriber")
    relay: str = setting("", doc="a relay's trainers side, STREAM[,CONTROL] (CONTROL: STREAM's port + 1), "
                                 "to connect the stream and control out to as well; empty: none")


@dataclass
class SecuritySection:
    curve_secret_key: str = setting("", doc="the trainer's CURVE secret key file (with curve_allow: for its own "
                                           "sockets; with curve_server_key: towards the relay); empty: no CURVE")
    curve_allow: str = setting("", doc="folder of client public keys allowed to connect")
    curve_server_key: str = setting("", doc="the relay's CURVE public key file (with publish.relay)")
    insecure: bool = setting(False, doc="allow binding a non-loopback address without CURVE")


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    env: EnvSection = field(default_factory=EnvSection)
    agent: AgentSection = field(default_factory=AgentSection)
    train: TrainSection = field(default_factory=TrainSection)
    publish: PublishSection = field(default_factory=PublishSection)
    security: SecuritySection = field(default_factory=SecuritySection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load(path: Path | None, overrides: list[str] = ()) -> Config:
    """Read a TOML file (or the defaults), apply ``section.key=value`` overrides, validate."""
    data = read_toml(path) if path is not None else {}
    for override in overrides:
        _apply_override(data, override)
    return from_dict(data)


def read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's tables; a missing or malformed file is a `ConfigError` naming it."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} is a folder, not a TOML file: {path}") from None
    except PermissionError:
        raise ConfigError(f"{what} is not readable (permission denied): {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def from_dict(data: dict[str, Any]) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("config must be a table")
    hints = typing.get_type_hints(Config)
    unknown = set(data) - set(hints)
    if unknown:
        raise ConfigError(f"unknown section [{sorted(unknown)[0]}]; known: {', '.join(hints)}")
    sections = {name: read_section(name, hints[name], data.get(name, {})) for name in hints}
    config = Config(**sections)
    _check_params(config.agent.params)
    _check_security(config)
    if not (is_run_id(config.run.name) and len(config.run.name) <= RUN_NAME_MAX):  # "-<8 hex>" must still fit
        raise ConfigError(f"run.name: {config.run.name[:100]!r} must be 1 to {RUN_NAME_MAX} letters, digits, . _ -")
    return config


@dataclass(frozen=True)
class Param:
    """What one SB3 keyword argument takes from a config: its kind and, for numbers, its bounds.

    ``kind``: int, float (an int too, as SB3 does), bool, str, dict (a table) or list (of ints >= 1).
    ``above``: a strict lower bound, where SB3 divides by the value or a zero makes no sense (a zero
    learning rate learns nothing; a zero ``exploration_fraction`` is a ZeroDivisionError in SB3's
    linear schedule at the first step).
    """

    kind: type
    min: float | None = None
    max: float | None = None
    above: float | None = None


def _fraction(*, above: float | None = None) -> Param:
    return Param(float, min=None if above is not None else 0, max=1, above=above)


# The `agent.params` whose type and range the algorithms' signatures and docs fix (SB3 2.x's PPO, A2C, DQN
# and `AfterstateDQN`): checked with the rest of the config, before the run directory is made, instead
# of when the model is built (or never: SB3 takes gamma = 2 and diverges). Others reach the constructor as given.
PARAMS: dict[str, Param] = {
    "learning_rate": Param(float, above=0),
    "gamma": _fraction(), "gae_lambda": _fraction(), "tau": _fraction(),
    "exploration_initial_eps": _fraction(), "exploration_final_eps": _fraction(),
    "exploration_fraction": _fraction(above=0),
    **{name: Param(int, min=1) for name in ("buffer_size", "batch_size", "n_steps", "n_epochs",
                                            "target_update_interval", "stats_window_size")},
    "learning_starts": Param(int, min=0), "exploration_steps": Param(int, min=0),
    "gradient_steps": Param(int, min=-1), "sde_sample_freq": Param(int, min=-1),  # -1: SB3's "as many as steps"
    **{name: Param(float, above=0) for name in ("clip_range", "clip_range_vf", "target_kl", "max_grad_norm",
                                                "rms_prop_eps")},
    **{name: Param(float) for name in ("ent_coef", "vf_coef", "game_over_penalty")},
    **{name: Param(bool) for name in ("normalize_advantage", "use_sde", "use_rms_prop", "optimize_memory_usage",
                                      "learner_thread")},
    **{name: Param(dict) for name in ("policy_kwargs", "replay_buffer_kwargs", "rollout_buffer_kwargs")},
    "net_arch": Param(list), "tensorboard_log": Param(str),
    "train_freq": Param(int, min=1),  # or [n, "step" | "episode"]: `_check_train_freq`
}
TRAIN_FREQ_UNITS = ("step", "episode")


def _check_params(params: dict[str, Any]) -> None:
    """The values of `PARAMS` in ``agent.params``; a `ConfigError` names the key, its range and the value."""
    for name, value in params.items():
        key = f"agent.params.{name}"
        if name == "train_freq" and isinstance(value, list):
            _check_train_freq(key, value)
        elif name in PARAMS:
            _check_param(key, PARAMS[name], value)


def _check_param(key: str, param: Param, value: Any) -> None:
    kind = param.kind
    if kind is list:
        if not (isinstance(value, list) and all(type(v) is int and v >= 1 for v in value)):
            raise ConfigError(f"{key}: expected a list of layer sizes (integers >= 1), got {value!r}")
        return
    if not (type(value) is kind or kind is float and type(value) is int):
        expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a table"}
        raise ConfigError(f"{key}: expected {expected[kind]}, got {type(value).__name__} {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    if param.above is not None and value <= param.above:
        upper = f" and <= {param.max:g}" if param.max is not None else ""
        raise ConfigError(f"{key}: must be > {param.above:g}{upper}, got {value!r}")
    if (param.min is not None and value < param.min) or (param.max is not None and value > param.max):
        bounds = f"between {param.min:g} and {param.max:g}" if param.max is not None else f">= {param.min:g}"
        raise ConfigError(f"{key}: must be {bounds}, got {value!r}")


def _check_train_freq(key: str, value: list[Any]) -> None:
    """SB3's ``(frequency, unit)`` form of ``train_freq``, a list in TOML."""
    if not (len(value) == 2 and type(value[0]) is int and value[0] >= 1 and value[1] in TRAIN_FREQ_UNITS):
        raise ConfigError(f"{key}: expected an integer >= 1 or [integer >= 1, \"step\" or \"episode\"], "
                          f"got {value!r}")


def _check_security(config: Config) -> None:
    """The key options that only make sense together, and a relay endpoint that can be connected to."""
    sec = config.security
    if sec.curve_allow and not sec.curve_secret_key:
        raise ConfigError("security.curve_secret_key and security.curve_allow go together")
    if sec.curve_secret_key and not (sec.curve_allow or sec.curve_server_key):
        raise ConfigError("security.curve_secret_key needs security.curve_allow (CURVE on the trainer's own "
                          "sockets) or security.curve_server_key (CURVE towards the relay)")
    if sec.curve_server_key and not (sec.curve_secret_key and config.publish.relay):
        raise ConfigError("security.curve_server_key (the relay's public key) needs publish.relay and "
                          "security.curve_secret_key (this trainer's key pair)")
    if config.publish.relay:
        try:
            side(config.publish.relay, "publish.relay")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def read_section(name: str, cls: type, values: Any) -> Any:
    """Table ``[name]`` as an instance of the dataclass ``cls``, every key checked; `ConfigError` names the key."""
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key {name}.{key}; known: {', '.join(fields)}")
        kwargs[key] = _check(f"{name}.{key}", hints[key], fields[key].metadata, value)
    return cls(**kwargs)


def _check(key: str, hint: Any, meta: typing.Mapping[str, Any], value: Any) -> Any:
    """Return ``value`` converted to the declared type, or raise naming ``key``."""
    origin = typing.get_origin(hint) or hint
    if origin is float and type(value) is int:
        value = float(value)
    if origin is list:
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    elif type(value) is not origin:
        raise ConfigError(f"{key}: expected {origin.__name__}, got {type(value).__name__} {value!r}")
    if origin is float and not math.isfinite(value):  # nan passes every `<` check; inf is no period or rate
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{key}: must be >= {meta['min']}, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{key}: must be one of {', '.join(meta['choices'])}, got {value!r}")
    return value


def _apply_override(data: dict[str, Any], override: str) -> None:
    """Apply ``section.key=value``; the value is read as TOML, else taken as a string."""
    path, sep, raw = override.partition("=")
    keys = path.strip().split(".")
    if not sep or len(keys) < 2 or not all(keys):
        raise ConfigError(f"--set {override!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {override!r}: {key} is not a table")
    node[keys[-1]] = value


def to_toml(config: Config) -> str:
    """Write a config back as TOML, so a run directory records exactly what ran (and `load` reads it back)."""
    return tomli_w.dumps(config.to_dict())


def changes(old: Config, new: Config) -> list[str]:
    """``section.key: old -> new`` for every value of what is trained that differs (not where it is published:
    [publish] and [security] change with each process's ports), ``agent.params`` key by key, in TOML."""
    def flat(config: Config) -> dict[str, Any]:
        values = {f"{section}.{key}": value for section, table in config.to_dict().items()
                  if section not in ("publish", "security") for key, value in table.items() if key != "params"}
        return values | {f"agent.params.{key}": value for key, value in config.agent.params.items()}

    before, after = flat(old), flat(new)
    missing = "(unset)"
    return [f"{key}: {toml_value(before[key]) if key in before else missing} -> "
            f"{toml_value(after[key]) if key in after else missing}"
            for key in sorted(before.keys() | after.keys()) if before.get(key, missing) != after.get(key, missing)]


def toml_value(value: Any) -> str:
    """One value as TOML on one line: the ``VALUE`` of ``--set section.key=VALUE``."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    return tomli_w.dumps({"v": value})[len("v = "):-1]
