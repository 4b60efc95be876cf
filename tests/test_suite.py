"""The README's test commands do what it says: lint first, then pytest with the arguments given."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow  # runs scripts/setup.sh


def readme_quick_command() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.search(r"`(bash scripts/test\.sh -m 'not slow')`", text).group(1).replace("'", "").split(" ", 3)


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(),
                    reason="this checkout has no .venv (scripts/setup.sh makes one; CI always has it)")
def test_the_quick_command_lints_then_selects_only_the_fast_tests():
    bash, script, flag, expression = readme_quick_command()
    done = subprocess.run([bash, script, flag, expression, "--collect-only", "-q"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "All checks passed!" in done.stdout  # ruff ran first, and found nothing
    selected, total = map(int, re.search(r"(\d+)/(\d+) tests collected", done.stdout).groups())
    assert 0 < selected < total
    assert "test_trainer.py" not in done.stdout and "test_page.py" not in done.stdout
