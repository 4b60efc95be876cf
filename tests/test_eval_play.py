"""`tetriszmq eval` and `tetriszmq play` as a user runs them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import orjson
import pytest
from conftest import ROOT, free_port

from tetriszmq.stream import protocol
from tetriszmq.stream.control import request
from tetriszmq.stream.protocol import Topic

pytestmark = pytest.mark.slow  # real `tetriszmq eval` and `play` processes


def tetriszmq(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tetriszmq", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_eval_is_reproducible_and_reports_the_lines_table(tetriszmq_here):
    """The first evaluation is a real process, the second (and the table) run in this one: the same games
    either way."""
    args = ("eval", "--agent", "dellacherie", "--games", "2", "--max-pieces", "300", "--seed", "5")
    first, second = tetriszmq(*args, "--json"), tetriszmq_here(*args, "--json")
    assert first.returncode == 0, first.stderr
    result = orjson.loads(first.stdout)
    assert result == orjson.loads(second.stdout), "same seeds, same games"
    assert len(result["lines"]) == 2 and result["min"] > 0
    assert result["capped"] == sum(p >= 300 for p in result["pieces"])
    table = tetriszmq_here(*args)
    assert "lines per game: mean" in table.stdout and "reached the piece cap:" in table.stdout


def test_eval_of_a_missing_checkpoint_is_a_clear_error(tmp_path, tetriszmq_here):
    result = tetriszmq_here("eval", "--checkpoint", str(tmp_path / "nothing.zip"), "--algo", "afterstate-dqn")
    assert result.returncode == 2
    assert "no such checkpoint" in result.stderr


def test_eval_of_a_run_directory_names_the_checkpoint_to_give(tmp_path, tetriszmq_here):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    result = tetriszmq_here("eval", "--checkpoint", str(tmp_path / "run"), "--algo", "afterstate-dqn")
    assert result.returncode == 2 and "Errno" not in result.stderr
    assert (f"--checkpoint {tmp_path / 'run'} is a folder: give a checkpoint file, such as "
            f"{tmp_path / 'run' / 'checkpoints' / 'final'}") in result.stderr


def test_play_streams_a_game_and_obeys_stop(subscribe):
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    game = subprocess.Popen([sys.executable, "-m", "tetriszmq", "play", "--agent", "dellacherie", "--pps", "50",
                             "--pub", pub, "--ctl", ctl], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        sub = subscribe(pub)
        boards = [p for t, p in sub.until(lambda t, p: t is Topic.BOARD and p["step"] >= 5, timeout=60)
                  if t is Topic.BOARD]
        assert all(len(b["board"]) == protocol.BOARD_ROWS for b in boards)
        assert request(ctl, "stop") == {"ok": True, "state": "stopping"}
        out, _ = game.communicate(timeout=30)
        assert game.returncode == 0
        assert orjson.loads(out)["end"] == "stop requested"
        final = sub.until(lambda t, p: t is Topic.STATUS and p["state"] == "stopped", timeout=10)
        assert any(t is Topic.EPISODE for t, _ in final)
    finally:
        game.kill()
        game.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_ends_play_with_its_result_and_no_traceback(subscribe, sig):
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    game = subprocess.Popen([sys.executable, "-m", "tetriszmq", "play", "--agent", "dellacherie", "--pps", "50",
                             "--pub", pub, "--ctl", ctl], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        sub = subscribe(pub)
        sub.until(lambda t, p: t is Topic.BOARD and p["step"] >= 3, timeout=60)
        game.send_signal(sig)
        out, err = game.communicate(timeout=30)
        assert game.returncode == 130, err
        assert orjson.loads(out)["end"] == "interrupted" and b"Traceback" not in err
        final = sub.until(lambda t, p: t is Topic.STATUS and p["state"] == "stopped", timeout=10)
        assert final[-1][1]["reason"] == "interrupted"
    finally:
        game.kill()
        game.wait(10)


def test_eval_progress_gives_each_games_own_seconds_and_play_help_its_one_seed(monkeypatch, capsys):
    """A clock that ticks one second per reading: each game reads it twice, so each took one second."""
    from tetriszmq import cli, evaluate  # noqa: F401  (imported before the clock is replaced)

    ticks = iter(range(1_000_000))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(ticks)))
    assert cli.main(["eval", "--agent", "dellacherie", "--games", "3", "--max-pieces", "20", "--workers", "1"]) == 0
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tetriszmq eval: seed")]
    assert [line.rsplit(", ", 1)[1] for line in progress] == ["1.0 s"] * 3
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        cli.main(["play", "--help"])
    assert "game i" not in capsys.readouterr().out
