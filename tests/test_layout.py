"""The package's shape is a contract: the streaming pipeline stands alone, old run directories resume."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import ROOT

STREAM = ROOT / "tetriszmq" / "stream"
GAME_SIDE = ("tetriszmq.tetris", "tetriszmq.agents", "tetriszmq.config", "tetriszmq.trainer", "tetriszmq.cli")


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names, wherever the statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_stream_package_imports_only_itself_from_tetriszmq():
    for path in sorted(STREAM.glob("*.py")):
        ours = {name for name in imported_modules(path) if name.startswith("tetriszmq")}
        outside = {name for name in ours if not name.startswith("tetriszmq.stream")}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def stream_imports() -> dict[str, set[str]]:
    """Each module of tetriszmq/stream and the modules of the package it imports, lazy imports included."""
    modules = {path.stem for path in STREAM.glob("*.py")} - {"__init__"}
    return {name: {other for other in modules if f"tetriszmq.stream.{other}" in imported_modules(STREAM / f"{name}.py")}
            for name in modules}


def test_stream_modules_import_one_another_without_a_cycle():
    """A cycle works only while every import of it stays lazy; one moved to the top breaks the package."""
    graph = stream_imports()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path[path.index(name):], name))}"
        if name not in done:
            for other in sorted(graph[name]):
                visit(other, (*path, name))
            done.add(name)

    for name in sorted(graph):
        visit(name, ())


@pytest.mark.slow  # a real training process
def test_stream_callback_runs_on_cartpole_with_the_tetris_side_unimportable(tmp_path):
    """Import and use `StreamCallback` with tetris-gymnasium and our game modules blocked outright."""
    script = f"""
import sys
for name in ("tetris_gymnasium", *{GAME_SIDE!r}):
    sys.modules[name] = None  # any import of these raises ImportError
from stable_baselines3 import PPO
from tetriszmq import StreamCallback
model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, device="cpu")
model.learn(128, callback=StreamCallback(pub="tcp://127.0.0.1:0", ctl="tcp://127.0.0.1:0"))
print("timesteps", model.num_timesteps)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "timesteps 128" in result.stdout


@pytest.mark.slow  # a real training process
def test_a_run_directory_from_the_flat_layout_resumes(tmp_path):
    """tests/data/run-v0.1 was written by afterstate-dqn before the package had subpackages."""
    run_dir = tmp_path / "old"
    shutil.copytree(ROOT / "tests" / "data" / "run-v0.1", run_dir)
    before = orjson.loads(run_dir.joinpath("metrics.jsonl").read_bytes().splitlines()[-1])
    result = subprocess.run(
        [sys.executable, "-m", "tetriszmq", "train", "--config", str(run_dir / "config.toml"), "--run-dir",
         str(run_dir), "--resume", "--quiet", "--set", f"train.max_timesteps={before['timesteps'] + 64}",
         "--pub", "tcp://127.0.0.1:0", "--ctl", "tcp://127.0.0.1:0"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    last = orjson.loads(run_dir.joinpath("metrics.jsonl").read_bytes().splitlines()[-1])
    assert last["state"] == "stopped" and last["timesteps"] == before["timesteps"] + 64
    assert last["episodes"] >= before["episodes"]
    first = orjson.loads(run_dir.joinpath("metrics.jsonl").read_bytes().splitlines()[0])
    assert orjson.loads(run_dir.joinpath("run.json").read_bytes())["lineage"] == first["run"], \
        "a directory from before lineages continues the run its journal began"
    resumed = [m for m in map(orjson.loads, run_dir.joinpath("metrics.jsonl").read_bytes().splitlines())
               if m["run"] == last["run"] and m["topic"] == "status"]
    assert resumed[1]["state"] == "starting" and resumed[1]["timesteps"] == before["timesteps"], \
        "the resumed process announces the checkpoint's counters before it trains"
