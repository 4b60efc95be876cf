"""One trial: a real `tetriszmq train` process, watched through its own stream, then scored.

The trainer binds port 0 for PUB and control and names the ports it got in its ``run.json``, so
any number of trials run side by side and a viewer pointed at the runs folder shows each as a run.
The sweep subscribes to the trial's ``episode`` messages: the mean lines of the last ``window``
episodes, at every ``report_every`` timesteps, are the intermediate values the pruner compares.
A pruned trial is stopped through its control socket like ``tetriszmq ctl stop`` (final checkpoint,
exit 0). ``trial.json`` in the run directory records the parameters, state and objective.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import orjson
import zmq

from tetriszmq.stream import protocol
from tetriszmq.stream.atomic import write_atomic
from tetriszmq.stream.control import NoReply, request
from tetriszmq.sweep.space import Space

# If the sweep dies, even by SIGKILL, Linux sends its trainers SIGTERM (a graceful stop: final
# checkpoint), so no orphan trains on. The parent-death signal is set by this launcher, which then
# execs `python -m tetriszmq train ...`: preexec_fn is not safe in the sweep's threads.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "prctl = getattr(ctypes.CDLL(None), 'prctl', None)\n"
    "if prctl is not None: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit('tetriszmq sweep: the sweep is gone')\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


STOP_GRACE = 120.0  # s a trainer gets to exit, after a stop, before it is signalled (see `_reap`)


class TrialError(RuntimeError):
    """A trial whose trainer or evaluation failed; Optuna records it as failed and the sweep goes on."""


class Interrupted(TrialError):
    """The sweep was told to stop while this trial ran."""


@dataclass(frozen=True)
class Sweep:
    """What every trial of one sweep shares."""

    study: str
    config: Path | None
    space: Space
    runs: Path
    stopping: threading.Event

    def run_dir(self, number: int) -> Path:
        return self.runs / self.study / f"trial-{number}"


def objective(sweep: Sweep, trial: optuna.Trial) -> float:
    """Optuna's objective: sample, train, watch (report, maybe prune), score."""
    values = {param.key: param.suggest(trial) for param in sweep.space.params}
    run_dir = sweep.run_dir(trial.number)
    # A trial's checkpoints are for scoring and for picking a winner: not worth its replay buffer, up to 1.4 GB
    # each (a space file's [set] may still turn it back on).
    overrides = ["train.save_replay=false", *sweep.space.overrides(values),
                 f'run.name="{sweep.study}-trial-{trial.number}"']
    for key, value in {"run_dir": str(run_dir), "host": socket.gethostname(), "pid": os.getpid()}.items():
        trial.set_user_attr(key, value)
    record = {"study": sweep.study, "trial": trial.number, "params": values, "set": overrides,
              "state": "running", "started": time.time()}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_record(run_dir, record)
    try:
        value = _train_and_score(sweep, trial, run_dir, overrides)
    except optuna.TrialPruned:
        write_record(run_dir, record | {"state": "pruned", **_finished(record)})
        raise
    except TrialError as exc:
        write_record(run_dir, record | {"state": "failed", "error": str(exc), **_finished(record)})
        raise
    write_record(run_dir, record | {"state": "complete", "objective": value, **_finished(record)})
    return value


def _finished(record: dict[str, Any]) -> dict[str, float]:
    return {"duration": round(time.time() - record["started"], 1)}


def _train_and_score(sweep: Sweep, trial: optuna.Trial, run_dir: Path, overrides: list[str]) -> float:
    proc, log = _launch(sweep.config, run_dir, overrides)
    try:
        outcome, lines = _watch(proc, run_dir, trial, sweep)
    finally:
        code = _reap(proc)
    if code != 0:
        raise TrialError(f"trial {trial.number}: the trainer exited with {code}: {_tail(log)}")
    if outcome == "pruned":
        raise optuna.TrialPruned(f"trial {trial.number}: stopped with a final checkpoint")
    if outcome == "interrupted":
        raise Interrupted(f"trial {trial.number}: the sweep was stopped")
    if sweep.space.objective.metric == "train":
        if not lines:
            raise TrialError(f"trial {trial.number}: no training episode ended")
        return sum(lines) / len(lines)
    return _evaluate(sweep, run_dir)


def _launch(config: Path | None, run_dir: Path, overrides: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    args = ["-m", "tetriszmq", "train", "--run-dir", str(run_dir), "--quiet",
            "--pub", "tcp://127.0.0.1:0", "--ctl", "tcp://127.0.0.1:0"]
    if config is not None:
        args += ["--config", str(config)]
    for override in overrides:
        args += ["--set", override]
    log = run_dir / "train.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(os.getpid()), *args],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc, log


def _watch(proc: subprocess.Popen[bytes], run_dir: Path, trial: optuna.Trial, sweep: Sweep
           ) -> tuple[str, list[int]]:
    """Follow the trial's episodes until the trainer exits; stop it if pruned or if the sweep stops.

    Anything that goes wrong while following (a message we cannot read, a storage that fails a report)
    also stops the trainer through its control socket, so it ends with a final checkpoint, and fails
    this trial only (`TrialError`): the sweep goes on with the next.

    :return: ``finished``, ``pruned`` or ``interrupted``, and the lines of the last ``window`` episodes.
    """
    endpoints = _endpoints(proc, run_dir, sweep.stopping)
    if endpoints is None:
        return ("interrupted" if sweep.stopping.is_set() else "finished"), []
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_FRAMES[protocol.Topic.EPISODE])
    sub.connect(endpoints["pub"])
    try:
        return _follow(proc, sub, endpoints["ctl"], trial, sweep)
    except BaseException as exc:
        _stop(proc, endpoints["ctl"])
        if isinstance(exc, Exception):
            raise TrialError(f"trial {trial.number}: stopped, following its stream failed: "
                             f"{type(exc).__name__}: {exc}") from exc
        raise
    finally:
        sub.close()


def _follow(proc: subprocess.Popen[bytes], sub: zmq.Socket, ctl: str, trial: optuna.Trial, sweep: Sweep
            ) -> tuple[str, list[int]]:
    """`_watch`'s loop: report the mean lines to the pruner, and stop the trainer if pruned or if the sweep stops."""
    lines: deque[int] = deque(maxlen=sweep.space.objective.window)
    every = sweep.space.pruner.report_every
    next_report = every
    while proc.poll() is None:
        if sweep.stopping.is_set():
            _stop(proc, ctl)
            return "interrupted", list(lines)
        if not sub.poll(200):
            continue
        _, episode = protocol.decode_message(sub.recv_multipart())
        lines.append(episode["lines"])
        if episode["timesteps"] >= next_report:
            step = episode["timesteps"] // every * every
            trial.report(sum(lines) / len(lines), step)
            next_report = step + every
            if trial.should_prune():
                _stop(proc, ctl)
                return "pruned", list(lines)
    return "finished", list(lines)


def _endpoints(proc: subprocess.Popen[bytes], run_dir: Path, stopping: threading.Event) -> dict[str, str] | None:
    """The trainer's bound endpoints from its ``run.json``; None if it exits (or the sweep stops) first."""
    path = run_dir / "run.json"
    while proc.poll() is None:
        try:
            endpoints = orjson.loads(path.read_bytes())["endpoints"]
            if endpoints.get("pub") and endpoints.get("ctl"):
                return endpoints
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            pass  # not written yet, or being written
        if stopping.wait(0.1):
            proc.send_signal(signal.SIGTERM)
            return None
    return None


def _stop(proc: subprocess.Popen[bytes], ctl: str) -> None:
    """Ask for a graceful stop (final checkpoint); a trainer that does not answer gets SIGTERM, the same stop."""
    try:
        if request(ctl, protocol.Command.STOP, timeout=5, retries=2).get("ok"):
            return
    except (NoReply, zmq.ZMQError):  # no answer, or an endpoint in run.json that ZeroMQ refuses
        pass
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)


def _reap(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> int:
    """The trainer's exit status: it gets ``grace`` s to finish (a stopped one writes its final checkpoint).

    One still running then gets SIGTERM (its graceful stop; an abort if it was stopping already, hung)
    and as long again; then SIGKILL. Bounded either way, so one trial cannot hang the sweep.
    """
    for last_word in (signal.SIGTERM, signal.SIGKILL):
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.send_signal(last_word)
    return proc.wait()


def _evaluate(sweep: Sweep, run_dir: Path) -> float:
    """The default objective: mean lines of `tetriszmq eval` on the final checkpoint, on fixed seeds."""
    goal = sweep.space.objective
    done = subprocess.run([sys.executable, "-m", "tetriszmq", "eval", "--checkpoint",
                           str(run_dir / "checkpoints" / "final"), "--games", str(goal.games),
                           "--max-pieces", str(goal.max_pieces), "--seed", str(goal.seed), "--json"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise TrialError(f"eval of {run_dir} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return float(orjson.loads(done.stdout)["mean"])


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """``trial.json``, replaced atomically so a reader (the viewer's catalogue) never sees half of it."""
    write_atomic(run_dir / "trial.json", orjson.dumps(record, option=orjson.OPT_INDENT_2))


def _tail(log: Path, chars: int = 800) -> str:
    text = log.read_text(errors="replace").strip()
    return text[-chars:] or "(no output)"
