"""The progress line of a headless run: how far it is towards the limit it will reach first."""

from __future__ import annotations

import io
import time
from pathlib import Path

from tetriszmq.progress import ProgressLine
from tetriszmq.stream.state import TrainerState


def test_a_run_limited_by_minutes_shows_the_share_of_its_time():
    state = TrainerState(run="tiny-abcdef", timesteps=1_000)
    progress = ProgressLine(state, Path("runs/tiny"), max_timesteps=100_000_000, max_minutes=1000.0,
                           out=io.StringIO())
    progress.started = time.monotonic() - 45_000  # as if `start` had been called 750 minutes ago
    assert "[###############     ]  75%" in progress.line()


def test_a_run_limited_by_timesteps_shows_the_share_of_its_steps():
    state = TrainerState(run="tiny-abcdef", timesteps=50_000)
    progress = ProgressLine(state, Path("runs/tiny"), max_timesteps=100_000, out=io.StringIO())
    assert "[##########          ]  50%" in progress.line()


def test_the_start_line_names_the_relay_the_trainer_dials_out_to():
    out = io.StringIO()
    state = TrainerState(run="tiny-abcdef", endpoints={"pub": "tcp://127.0.0.1:5555", "ctl": "tcp://127.0.0.1:5556",
                                                       "relay": "tcp://relay-box:5557"})
    progress = ProgressLine(state, Path("runs/tiny"), max_timesteps=100, out=out)
    progress.start()
    progress.close()
    assert ("streaming on tcp://127.0.0.1:5555, control on tcp://127.0.0.1:5556, and through the relay at "
            "tcp://relay-box:5557\n") in out.getvalue()


def test_the_last_line_gives_the_runs_overall_rate_and_no_rate_is_ever_a_zero():
    """A short run ends before the broker's first metrics message gives a rate (``sps`` is still 0)."""
    out = io.StringIO()
    state = TrainerState(run="tiny-abcdef", timesteps=5_000)  # resumed at 5,000
    progress = ProgressLine(state, Path("runs/tiny"), max_timesteps=1_000_000, out=out)
    assert "steps/s" not in progress.line(), "no rate known yet"
    progress.start()
    progress.started -= 100  # as if started 100 s ago
    state.timesteps += 100_000
    progress.close()
    assert out.getvalue().splitlines()[-1].endswith("| 1,000 steps/s overall | starting")


def test_a_run_that_never_started_training_gives_no_rate():
    out = io.StringIO()
    ProgressLine(TrainerState(run="tiny-abcdef", timesteps=5_000), Path("runs/tiny"), max_timesteps=100,
                 out=out).close()
    assert "steps/s" not in out.getvalue()
