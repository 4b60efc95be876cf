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
    'agent.params.max_grad_norm=inf',
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
