"""Fixtures that start real trainers on free ports and always reap them; the suite's markers.

Shared fixtures reach test modules only through this file: its own (`trainers`, `subscribe`, `tetriszmq_here`,
`default_control_port_busy`) and those of the plugins named in `pytest_plugins` (`viewers` from viewer_support.py;
`hosts`, `keys`, `secured_trainer` from netns.py). Free ports and waits come from bench/harness/processes.py, one
definition for tests and benches (pyproject puts bench/ on the tests' path).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq
from harness import ROOT
from harness.processes import free_endpoint, free_port, wait_for

from tetriszmq.stream import protocol

# what test modules import
__all__ = ["ROOT", "TINY", "TINY_PLACEMENT", "TRAINING", "free_endpoint", "free_port", "wait_for"]

pytest_plugins = ["viewer_support", "netns"]

TINY = ROOT / "tests" / "tiny.toml"
TINY_PLACEMENT = ROOT / "tests" / "tiny_placement.toml"
TRAINING = ("running", "saving")  # states of a trainer that is training: tiny.toml checkpoints every 128 steps
# A test that requests one of these (directly or through another fixture) starts real processes
# (`finished_run`: one real training per session; `script`: test_callback.py's SB3 script in a subprocess).
SLOW_FIXTURES = frozenset({"trainers", "viewers", "finished_run", "placement_run", "script"})
NETNS_FIXTURES = frozenset({"hosts", "four_hosts"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the fixtures they use, so a new test that starts a trainer is `slow` without being told."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & NETNS_FIXTURES:
            item.add_marker(pytest.mark.netns)
        if used & (SLOW_FIXTURES | NETNS_FIXTURES):
            item.add_marker(pytest.mark.slow)


@dataclass
class TrainerProcess:
    """A `tetriszmq train` subprocess and where to reach it."""

    proc: subprocess.Popen[bytes]
    pub: str
    ctl: str
    run_dir: Path
    log: Path
    args: list[str] = field(default_factory=list)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_trainer(run_dir: Path, *extra: str, config: Path = TINY, pub: str | None = None,
                  ctl: str | None = None, prefix: list[str] = ()) -> TrainerProcess:
    pub = pub or free_endpoint()
    ctl = ctl or free_endpoint()
    args = [*prefix, sys.executable, "-m", "tetriszmq", "train", "--config", str(config), "--pub", pub, "--ctl", ctl,
            "--run-dir", str(run_dir), "--quiet", *extra]
    log = run_dir.parent / f"{run_dir.name}.{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return TrainerProcess(proc, pub, ctl, run_dir, log, args)


@pytest.fixture
def trainers(tmp_path: Path) -> Iterator[Callable[..., TrainerProcess]]:
    """Start trainers with ``trainers(*extra_args, ...)``; all are killed at teardown."""
    started: list[TrainerProcess] = []

    def start(*extra: str, run_dir: Path | None = None, **kwargs: object) -> TrainerProcess:
        trainer = start_trainer(run_dir or tmp_path / f"run{len(started)}", *extra, **kwargs)
        started.append(trainer)
        return trainer

    yield start
    reap(trainer.proc for trainer in started)
    for trainer in started:  # pytest shows this only for a test that failed
        tail = trainer.log.read_text(errors="replace").splitlines()[-40:]
        print(f"--- the end of {trainer.log.name}, exit code {trainer.proc.returncode}:", *tail, sep="\n")


def reap(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """Kill whatever is still running and collect every exit status."""
    for proc in processes:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


class Subscriber:
    """A real SUB socket on a trainer's stream."""

    def __init__(self, endpoint: str, topics: tuple[bytes, ...] = (b"",)) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(endpoint)

    def recv(self, timeout: float = 30.0) -> tuple[protocol.Topic, dict]:
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no message within {timeout}s")
        return protocol.decode_message(self.sock.recv_multipart())

    def until(self, predicate: Callable[[protocol.Topic, dict], bool], timeout: float = 60.0
              ) -> list[tuple[protocol.Topic, dict]]:
        """Every message received up to and including the first that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            message = self.recv(max(0.01, deadline - time.monotonic()))
            seen.append(message)
            if predicate(*message):
                return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def subscribe() -> Iterator[Callable[..., Subscriber]]:
    subs: list[Subscriber] = []

    def make(endpoint: str, topics: tuple[bytes, ...] = (b"",)) -> Subscriber:
        sub = Subscriber(endpoint, topics)
        subs.append(sub)
        return sub

    yield make
    for sub in subs:
        sub.close()


@pytest.fixture
def default_control_port_busy() -> Iterator[None]:
    """The default control port, 127.0.0.1:5556, held as a default trainer holds it: by this fixture when it is
    free, else by whatever holds it already."""
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", 5556))
            holder.listen()
        except OSError:
            pass  # held already: busy either way
        yield


def train_to_end(run_dir: Path, *extra: str, config: Path = TINY) -> Path:
    """Train ``config`` (tests/tiny.toml) into ``run_dir`` to its end (seconds); fail with the trainer's output."""
    trainer = start_trainer(run_dir, *extra, config=config)
    try:
        code = trainer.wait(180)
    finally:
        reap([trainer.proc])
    assert code == 0, trainer.output()
    return run_dir


@pytest.fixture
def tetriszmq_here(capsys: pytest.CaptureFixture[str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``tetriszmq_here(*args)``: `tetriszmq ARGS` called in this process and read like a finished process, for
    the cases a command settles before it starts anything (bad input, checks): no interpreter and torch import
    per call. An uncaught exception, the traceback a user would see, fails the test. Each command keeps tests
    that run it as a real process."""
    from tetriszmq import cli

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        code = cli.main([*map(str, args)])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of a finished real training (tiny.toml); copy it before changing it."""
    return train_to_end(tmp_path_factory.mktemp("finished") / "tiny")


@pytest.fixture(scope="session")
def placement_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished real training of tests/tiny_placement.toml (600 placements, episode records kept); copy it
    before changing it."""
    return train_to_end(tmp_path_factory.mktemp("placement") / "run", config=TINY_PLACEMENT)
