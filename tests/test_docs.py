"""The documents' examples work as written."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def protocol_client_source() -> str:
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    section = text[text.index("## A client in 20 lines"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_protocol_documents_20_line_client_follows_a_run_to_its_end(trainers):
    source = protocol_client_source()
    assert len([line for line in source.splitlines() if line.strip()]) <= 20
    trainer = trainers("--set", "train.max_timesteps=3000")
    source = source.replace("tcp://127.0.0.1:5555", trainer.pub).replace("tcp://127.0.0.1:5556", trainer.ctl)
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("trainer: {'ok': True")
    assert re.search(r"^episode \d+: \d+ lines, reward", result.stdout, re.M)
    assert trainer.wait(60) == 0
