"""The terminal progress line of a headless run.

A daemon thread reads the shared `TrainerState` twice a second, so the
training loop pays nothing for it. On a terminal the line redraws in place;
into a file or pipe it prints a plain line every ten seconds. The bar shows
how far the run is towards whichever of its limits it will reach first:
``train.max_timesteps`` or ``train.max_minutes``.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from tetriszmq.stream.state import TrainerState


class ProgressLine:
    def __init__(self, state: TrainerState, run_dir: Path, max_timesteps: int, max_minutes: float = 0.0,
                 out: TextIO = sys.stderr) -> None:
        self.state = state
        self.max_timesteps = max_timesteps
        self.max_seconds = max_minutes * 60
        self.started = time.monotonic()  # reset by `start`, when the clock of max_minutes starts too
        self.first_step: int | None = None  # the timesteps at `start` (a resumed run's are not this process's)
        self.out = out
        self.tty = out.isatty()
        self.period = 0.5 if self.tty else 10.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tetriszmq-progress", daemon=True)
        print(f"tetriszmq: run {state.run} in {run_dir}", file=out, flush=True)

    def start(self) -> None:
        self.started, self.first_step = time.monotonic(), self.state.timesteps
        endpoints = self.state.endpoints
        relay = f", and through the relay at {endpoints['relay']}" if endpoints.get("relay") else ""
        print(f"tetriszmq: streaming on {endpoints.get('pub')}, control on {endpoints.get('ctl')}{relay}",
              file=self.out, flush=True)
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        self._draw(final=True)

    def line(self, final: bool = False) -> str:
        """The bar and counters; ``final``: the rate is this process's overall one, not the last window's."""
        s = self.state
        share = min(1.0, max(s.timesteps / self.max_timesteps if self.max_timesteps else 0.0,
                             (time.monotonic() - self.started) / self.max_seconds if self.max_seconds else 0.0))
        bar = "#" * int(share * 20)
        return (f"[{bar:<20}] {share:4.0%} | {s.timesteps:,} steps | {s.episodes:,} episodes | "
                f"best {s.best_lines:,} lines | {self._rate(final)}{s.state}")

    def _rate(self, final: bool) -> str:
        """``N steps/s | ``, or nothing while no rate is known: the broker's comes with the first metrics message,
        a second in, so a short run never has one, and a 0 would read as a stalled run."""
        if not final:
            return f"{self.state.sps:,.0f} steps/s | " if self.state.sps else ""
        steps = self.state.timesteps - self.first_step if self.first_step is not None else 0
        seconds = time.monotonic() - self.started
        return f"{steps / seconds:,.0f} steps/s overall | " if steps > 0 and seconds > 0 else ""

    def _run(self) -> None:
        while not self._done.wait(self.period):
            self._draw()

    def _draw(self, final: bool = False) -> None:
        end = "\n" if final or not self.tty else ""
        prefix = "\r\033[K" if self.tty else ""
        print(prefix + self.line(final), end=end, file=self.out, flush=True)
