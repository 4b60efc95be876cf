"""The README's "Streaming into your own SB3 code" recipes run as written, and stretched.

Each runs in a subprocess in a fresh folder, with the endpoints swapped for free ports, while a
subscriber watches its stream.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, Subscriber, free_port

from tetriszmq.stream.protocol import Topic

pytestmark = pytest.mark.slow  # every recipe trains SB3 models in a fresh interpreter

SECTION = "## Streaming into your own SB3 code"


def blocks(language: str) -> list[str]:
    """The section's fenced code blocks in ``language`` ("" for a plain fence), in order."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    fences = re.findall(r"^```(\w*)\n(.*?)^```$", section, re.S | re.M)
    return [body for lang, body in fences if lang == language]


SCRIPT, NOTEBOOK, SUBPROCESS = blocks("python")
(ZOO_CONF,) = blocks("yaml")
(ZOO_COMMAND,) = blocks("")


class Recipe:
    """A recipe running in ``folder`` with its endpoints on free ports, and a subscriber on its stream."""

    def __init__(self, folder: Path, argv: list[str], *files: tuple[str, str]) -> None:
        self.pub, self.ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        self.folder = folder
        folder.mkdir()
        for name, text in files:
            (folder / name).write_text(self.ported(text))
        self.sub = Subscriber(self.pub)
        self.proc = subprocess.Popen(argv, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})

    def ported(self, text: str) -> str:
        return text.replace("tcp://127.0.0.1:5555", self.pub).replace("tcp://127.0.0.1:5556", self.ctl)

    def finish(self, timeout: float = 300) -> tuple[int, str, list[tuple[Topic, dict]]]:
        try:
            output, _ = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        messages = []
        while self.sub.sock.poll(500):
            messages.append(self.sub.recv())
        self.sub.close()
        return self.proc.returncode, output, messages


def statuses(messages: list[tuple[Topic, dict]]) -> list[tuple[str, str]]:
    return [(m["state"], m["reason"]) for t, m in messages if t is Topic.STATUS]


def run_python(folder: Path, source: str) -> tuple[int, str, list[tuple[Topic, dict]]]:
    return Recipe(folder, [sys.executable, "recipe.py"], ("recipe.py", source)).finish()


def test_the_script_recipe_streams_two_learn_calls(tmp_path):
    code, output, messages = run_python(tmp_path / "script", SCRIPT)
    assert code == 0, output
    assert [s for s in statuses(messages) if s[0] == "stopped"][-1] == ("stopped", "training ended")
    episodes = [m for t, m in messages if t is Topic.EPISODE]
    assert episodes and all(m["run"].startswith("cartpole-") and "lines" not in m for m in episodes)


def test_the_script_recipe_stretched_to_an_exception(tmp_path):
    first_learn = "model.learn(3_000, callback=stream)\n"
    failing = SCRIPT.replace(first_learn, "model.learn(3_000, callback=[stream, Fails()])\n")
    assert failing != SCRIPT
    source = "from stable_baselines3.common.callbacks import BaseCallback\n\n" + textwrap.dedent("""
        class Fails(BaseCallback):
            def _on_step(self):
                if self.n_calls == 1000:  # the subscriber, connecting since the bind, is there by now
                    raise RuntimeError("diverged")
                return True
    """) + failing
    code, output, messages = run_python(tmp_path / "failing", source)
    assert code == 1 and "RuntimeError: diverged" in output
    assert statuses(messages)[-1] == ("error", "learn() raised RuntimeError: diverged")


def notebook(cells: list[str]) -> str:
    """A kernel's life: each cell run by IPython's own shell, which shows an exception and goes on."""
    return textwrap.dedent(f"""
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        for cell in {cells!r}:
            shell.run_cell(cell)
        print("kernel still alive")
    """)


def test_the_notebook_recipe_in_ipython_then_an_interrupted_cell_then_another_cell(tmp_path):
    interrupted = NOTEBOOK.replace("model.learn(3_000, callback=stream)",
                                   "model.learn(3_000, callback=[stream, Interrupts()])")
    assert interrupted != NOTEBOOK
    interrupts = textwrap.dedent("""
        from stable_baselines3.common.callbacks import BaseCallback

        class Interrupts(BaseCallback):  # Jupyter's stop button raises KeyboardInterrupt in the kernel
            def _on_step(self):
                if self.n_calls == 100:
                    raise KeyboardInterrupt
                return True
    """)
    recipe = Recipe(tmp_path / "notebook", [sys.executable, "kernel.py"])
    (recipe.folder / "kernel.py").write_text(notebook([recipe.ported(NOTEBOOK), interrupts,
                                                       recipe.ported(interrupted), recipe.ported(NOTEBOOK)]))
    code, output, messages = recipe.finish()
    assert code == 0 and "kernel still alive" in output, output
    journal = [orjson.loads(line) for line in (recipe.folder / "runs/notebook/metrics.jsonl").read_bytes().splitlines()]
    ends = [(m["state"], m["reason"]) for m in journal if m.get("state") in ("stopped", "error")]
    assert ends == [("stopped", "training ended"), ("error", "learn() raised KeyboardInterrupt"),
                    ("stopped", "training ended")]
    assert (recipe.folder / "runs/notebook/run.json").exists()


def test_the_subprocess_env_recipe(tmp_path):
    code, output, messages = run_python(tmp_path / "subproc", SUBPROCESS)
    assert code == 0, output
    assert statuses(messages)[-1] == ("stopped", "training ended")
    assert any(t is Topic.EPISODE for t, _ in messages)


def test_the_rl_zoo3_recipe_trains_saves_its_model_and_streams(tmp_path):
    command = ZOO_COMMAND.split()
    assert command[:3] == ["python", "-m", "rl_zoo3.train"]
    recipe = Recipe(tmp_path / "zoo", [sys.executable, *command[1:]], ("stream.yml", ZOO_CONF))
    code, output, messages = recipe.finish()
    assert code == 0, output
    assert (recipe.folder / "logs/ppo/CartPole-v1_1/CartPole-v1.zip").exists()
    assert [m for t, m in messages if t is Topic.EPISODE]
    assert [s for s in statuses(messages) if s[0] == "stopped"] == [("stopped", "training ended")]
    assert all(m["run"].startswith("zoo-cartpole-") for _, m in messages)
