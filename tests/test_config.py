"""The run config as a user writes it: TOML files, ``--set`` overrides, and the copy a run directory keeps."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, TINY

from tetriszmq import config as cfg

SPACE_FILES = {"sweep.toml"}  # a sweep's search space, not a run config (tests/test_sweep.py checks it)
CONFIG_FILES = sorted(p for p in (ROOT / "configs").glob("*.toml") if p.name not in SPACE_FILES) + [TINY]


@pytest.mark.parametrize("key", ["publish.heartbeat_every", "publish.metrics_every", "publish.board_fps",
                                 "train.max_minutes"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+nan"])
def test_non_finite_floats_are_refused_naming_the_key(key, value):
    with pytest.raises(cfg.ConfigError, match=rf"^{key}: must be a finite number, got {value.lstrip('+')}"):
        cfg.load(None, [f"{key}={value}"])


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_each_shipped_config_round_trips_through_a_run_directory(path: Path, tmp_path: Path):
    config = cfg.load(path)
    written = tmp_path / "config.toml"
    written.write_text(cfg.to_toml(config))
    assert cfg.load(written) == config


@pytest.mark.parametrize("override", [
    'run.dir="C:\\\\runs\\\\\\"quoted\\" \'single\' \\u00e9\\u2603 tab\\t newline\\n end"',
    "run.dir='''a \"\"\" b'''",
    'run.dir="emoji \\U0001F600, delete \\u007f, nul \\u0000"',
    'agent.params.a_scale_of_ones_own=inf',  # a keyword of no algorithm here: checked by its constructor only
    'agent.params.learning_rate=1e-300',
    'agent.params.clip_range=0.1',
    'agent.params.policy_kwargs={net_arch=[64, 64], "odd key = x"={"a.b"=[1, 2.5, "s"]}}',
    'agent.params.train_freq=[4, "step"]',
    'agent.params.empty={}',
    'env.features=["holes", "lines"]',
    'publish.board_fps=1e-9',
    'train.max_minutes=1e9',
])
def test_values_with_special_characters_round_trip(override: str, tmp_path: Path):
    config = cfg.load(None, [override])
    written = tmp_path / "config.toml"
    written.write_text(cfg.to_toml(config))
    assert tomllib.loads(written.read_text()) == config.to_dict()
    assert cfg.load(written) == config


def test_no_config_file_means_configs_default_toml():
    """``tetriszmq train`` with no ``--config`` trains what configs/default.toml says."""
    assert cfg.load(None) == cfg.load(ROOT / "configs" / "default.toml")


def test_the_readmes_configuration_table_gives_the_codes_defaults():
    """Each ``| `section.key` | `default` |`` row of the README says what `load(None)` gives."""
    defaults = cfg.load(None).to_dict()
    rows = re.findall(r"^\| `(\w+)\.(\w+)` \| `([^`|]+)` \|", (ROOT / "README.md").read_text(), re.MULTILINE)
    assert len(rows) >= 20
    for section, key, default in rows:
        assert tomllib.loads(f"v = {default}")["v"] == defaults[section][key], f"{section}.{key}"


@pytest.mark.parametrize(("override", "message"), [
    ('agent.params.learning_rate="abc"', "agent.params.learning_rate: expected a number, got str 'abc'"),
    ("agent.params.learning_rate=0", "agent.params.learning_rate: must be > 0, got 0"),
    ("agent.params.gamma=2", "agent.params.gamma: must be between 0 and 1, got 2"),
    ("agent.params.gamma=nan", "agent.params.gamma: must be a finite number, got nan"),
    ("agent.params.buffer_size=-1", "agent.params.buffer_size: must be >= 1, got -1"),
    ("agent.params.batch_size=32.0", "agent.params.batch_size: expected an integer, got float 32.0"),
    ("agent.params.use_sde=1", "agent.params.use_sde: expected true or false, got int 1"),
    ("agent.params.exploration_fraction=0", "agent.params.exploration_fraction: must be > 0 and <= 1, got 0"),
    ('agent.params.train_freq=[4, "steps"]', 'agent.params.train_freq: expected an integer >= 1 or [integer >= 1, '
                                             '"step" or "episode"], got [4, \'steps\']'),
    ("agent.params.net_arch=[64, 0]", "agent.params.net_arch: expected a list of layer sizes (integers >= 1)"),
])
def test_bad_agent_params_values_are_refused_naming_the_key(override, message):
    with pytest.raises(cfg.ConfigError) as refused:
        cfg.load(None, [override])
    assert message in str(refused.value)


def test_every_checked_agent_param_is_an_algorithms_keyword_and_takes_its_defaults():
    """`config.PARAMS` agrees with the signatures: each name is taken by some algorithm, no default is refused."""
    import inspect

    from tetriszmq.agents import ALGOS, algo_class

    taken: set[str] = set()
    for name in ALGOS:
        for parameter in inspect.signature(algo_class(name)).parameters.values():
            taken.add(parameter.name)
            default = parameter.default
            if parameter.name in cfg.PARAMS and default not in (None, inspect.Parameter.empty):
                value = list(default) if isinstance(default, tuple) else default  # TOML has lists, not tuples
                cfg.load(None, [f"agent.params.{parameter.name}={cfg.toml_value(value)}"])
    assert set(cfg.PARAMS) <= taken


@pytest.mark.parametrize("algo", ["dqn", "afterstate-dqn"])
def test_train_freq_as_a_toml_list_builds_every_off_policy_algorithm(algo):
    """``train_freq = [4, "step"]`` passes the config's check, so SB3's DQN must take it too (it wants a tuple)."""
    from tetriszmq.agents import build_model
    from tetriszmq.tetris.envs import make_vec_env

    config = cfg.load(None, [f"agent.algo={algo!r}", 'agent.params.train_freq=[4, "step"]',
                             "agent.params.buffer_size=100"])
    env = make_vec_env(config.env, config.run.seed)
    try:
        model = build_model(config.agent, env, config.run.seed)
        assert (model.train_freq.frequency, model.train_freq.unit.value) == (4, "step")
    finally:
        env.close()


def test_a_config_path_that_is_a_folder_is_refused_with_a_message_and_no_run_folder(tetriszmq_here, tmp_path):
    """``--config configs`` (the folder, not a file in it) used to end in an IsADirectoryError traceback."""
    done = tetriszmq_here("train", "--config", ROOT / "configs", "--run-dir", tmp_path / "run")
    assert done.returncode == 2
    assert f"config file is a folder, not a TOML file: {ROOT / 'configs'}" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "play"])
def test_a_malformed_endpoint_is_named_as_such_not_as_an_exposure(tetriszmq_here, tmp_path, command):
    """``--pub tcp://bogus:xyz`` was refused as a network address without CURVE, advising --insecure."""
    more = ("--config", TINY, "--run-dir", tmp_path / "run") if command == "train" else ("--agent", "dellacherie")
    done = tetriszmq_here(command, "--pub", "tcp://bogus:xyz", "--ctl", "tcp://127.0.0.1:0", *more)
    assert done.returncode == 2, done.stderr
    assert "tcp needs HOST:PORT with a port from 0 to 65535" in done.stderr and "--insecure" not in done.stderr
