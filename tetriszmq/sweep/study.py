"""The study: where it is stored, how a sweep joins it, and its report.

Storage: a URL with ``://`` is an Optuna RDB URL (``postgresql://user@db-box/optuna`` through
psycopg 3, SQLAlchemy's default PostgreSQL driver; ``sqlite:///sweeps.db``); anything else is a
journal file (Optuna's ``JournalFileBackend``); none is ``<runs>/<study>/optuna.journal``.

A sweep that dies loses only its running trials. On an RDB storage every running trial beats a
heartbeat every `HEARTBEAT` seconds; one silent for `GRACE` seconds is marked failed by the next
sweep that asks for a trial, and re-queued once with the same parameters (Optuna's
``RetryHeartbeatStaleTrialCallback``), to run as a new trial in whichever sweep asks next. A
journal has no heartbeat: a sweep starting on one fails and re-queues the running trials whose
sweep (same host) is gone. Either way a restarted sweep continues the study.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import optuna
import orjson
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from tetriszmq import config as cfg
from tetriszmq.stream.protocol import is_run_id
from tetriszmq.stream.state import RUN_NAME_MAX
from tetriszmq.sweep import space as space_file
from tetriszmq.sweep.trial import Sweep, TrialError, objective

HEARTBEAT, GRACE, RETRIES = 20, 90, 1
SCHEMA_ATTEMPTS = 5
FAILURES = 3  # trials in a row that fail stop the sweep: a broken config fails every trial alike
CLAIMED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
STUDY_NAME_MAX = RUN_NAME_MAX - len("-trial-99999")  # a trial's run.name is "<study>-trial-<n>"

# Heartbeats, journals and the retry callback are marked experimental; we rely on them knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class _NoTraceback(logging.Filter):
    """A failed trial's `TrialError` says what went wrong (with the trainer's last output): no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TrialError):
            record.exc_info = None
        return True


logging.getLogger("optuna.study._optimize").addFilter(_NoTraceback())  # where Optuna logs failed trials


class StorageError(RuntimeError):
    """A storage that cannot be opened, or a study that is not there or does not match."""


def open_storage(url: str | None, runs: Path, study: str, *, create: bool = True) -> optuna.storages.BaseStorage:
    """The study's storage, connected; `StorageError` (password hidden) if it cannot be reached."""
    if url is None or "://" not in url:
        path = Path(url) if url else runs / study / "optuna.journal"
        if not create and not path.exists():
            raise StorageError(f"no study journal at {path}: give --storage, or --runs where the sweep ran")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise StorageError(f"cannot open the journal {path}: {exc}") from None
    return _rdb_storage(url)


def _rdb_storage(url: str) -> RDBStorage:
    connect = {"connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else {}
    error: Exception | None = None
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return RDBStorage(url, engine_kwargs=connect, heartbeat_interval=HEARTBEAT, grace_period=GRACE,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=RETRIES))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # Sweeps started together on an empty database race to create Optuna's tables; the
            # loser finds them made on its next attempt.
            error = exc
            time.sleep(0.5 * (attempt + 1))
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
            error = exc
            break
    detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    raise StorageError(f"cannot reach storage {_hide_password(url)}: {detail}")


def _hide_password(url: str) -> str:
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def sweep(config: Path | None, space_path: Path, trials: int, jobs: int, study_name: str, storage_url: str | None,
          runs: Path) -> int:
    """Validate everything, join or create the study, run this sweep's trials, print the report."""
    if not is_run_id(study_name) or len(study_name) > STUDY_NAME_MAX:
        raise StorageError(f"--study {study_name[:100]!r} must be 1 to {STUDY_NAME_MAX} letters, digits, . _ - "
                           "(it names folders, and its trials' runs)")
    if trials < 1 or jobs < 1:
        raise StorageError("--trials and --jobs must be at least 1")
    base = cfg.load(config)
    space = space_file.load(space_path)
    space_file.check(space, base)
    storage = open_storage(storage_url, runs, study_name)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                                pruner=space.pruner.make(), load_if_exists=True)
    _claim_or_match(study, _definition(space, base, config))
    _fail_orphans(study, storage)
    remaining = trials - len(study.get_trials(deepcopy=False, states=CLAIMED))
    outcome = _optimize(study, Sweep(study_name, config, space, runs, threading.Event()), trials, remaining, jobs)
    report_study(study, sys.stdout)
    return outcome


def _definition(space: space_file.Space, base: cfg.Config, config: Path | None) -> dict[str, Any]:
    """What a sweep joining the study must agree on; the config file's path is only shown in the report."""
    trained = {section: getattr(base, section) for section in ("env", "agent", "train")}
    return orjson.loads(orjson.dumps({"space": space.describe(), "config": {k: vars(v) for k, v in trained.items()},
                                      "config_path": str(config) if config else None}))


def _claim_or_match(study: optuna.Study, definition: dict[str, Any]) -> None:
    """The first sweep records the study's space and config; a later one must bring the same."""
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", definition)
        return
    for part, what in (("space", "space file"), ("config", "config")):
        if stored[part] != definition[part]:
            raise StorageError(f"study {study.study_name!r} was started with another {what}: use the same, "
                               "or a new --study")


def _fail_orphans(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """Fail and re-queue the running trials of a dead sweep on this host (a journal has no heartbeat)."""
    if isinstance(storage, RDBStorage):
        optuna.storages.fail_stale_trials(study)  # Optuna's heartbeat says who is gone
        return
    host = socket.gethostname()
    for trial in study.get_trials(states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("host") == host and not _alive(trial.user_attrs.get("pid")):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)(study, trial)


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        pass
    return True


def _optimize(study: optuna.Study, run: Sweep, trials: int, remaining: int, jobs: int) -> int:
    if remaining <= 0:
        print(f"tetriszmq sweep: study {run.study!r} already has {trials} trials", file=sys.stderr)
        return 0

    def stop_when_asked(study: optuna.Study, trial: FrozenTrial) -> None:
        if run.stopping.is_set():
            study.stop()

    failures: list[bool] = []

    def stop_after_failures(study: optuna.Study, trial: FrozenTrial) -> None:
        failures.append(trial.state == TrialState.FAIL)
        if failures[-FAILURES:] == [True] * FAILURES:
            print(f"tetriszmq sweep: {FAILURES} trials in a row failed; stopping", file=sys.stderr)
            study.stop()

    callbacks = [optuna.study.MaxTrialsCallback(trials, states=CLAIMED), stop_when_asked, stop_after_failures]
    first = len(study.trials)
    with _stop_on_signals(run.stopping):
        study.optimize(functools.partial(objective, run), n_trials=remaining, n_jobs=jobs, catch=(TrialError,),
                       callbacks=callbacks)
    mine = [t for t in study.get_trials(deepcopy=False)[first:] if t.user_attrs.get("pid") == os.getpid()]
    if run.stopping.is_set():
        print("tetriszmq sweep: stopped; its running trials were stopped and marked failed", file=sys.stderr)
        return 1
    if mine and all(t.state == TrialState.FAIL for t in mine):
        print(f"tetriszmq sweep: no trial succeeded; see {run.runs / run.study}/trial-*/train.log", file=sys.stderr)
        return 1
    return 0


@contextmanager
def _stop_on_signals(stopping: threading.Event) -> Iterator[None]:
    """Ctrl-C or SIGTERM: stop the running trials gracefully and ask for no more; a second Ctrl-C aborts."""
    def handler(signum: int, frame: object) -> None:
        if stopping.is_set():
            raise KeyboardInterrupt
        print("tetriszmq sweep: stopping the running trials (Ctrl-C again to abort)", file=sys.stderr)
        stopping.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def report(study_name: str, storage_url: str | None, runs: Path, out: TextIO | None = None) -> int:
    """Print the study's report to ``out`` (default: the current ``sys.stdout``); `StorageError` if it is not there."""
    storage = open_storage(storage_url, runs, study_name, create=False)
    names = optuna.get_all_study_names(storage)
    if study_name not in names:
        raise StorageError(f"no study {study_name!r} in {_hide_password(storage_url or str(runs))}; "
                           f"studies there: {', '.join(names) or 'none'}")
    report_study(optuna.load_study(study_name=study_name, storage=storage), out or sys.stdout)
    return 0


def report_study(study: optuna.Study, out: TextIO) -> None:
    """The trials table (number, state, objective, duration, parameters) and the best trial's command line.

    A study that no ``tetriszmq sweep`` made (no space recorded) gets the same table, with the
    parameters its trials have, and its best trials instead of a command line.
    """
    definition = study.user_attrs.get("sweep")
    ours = _space_params(definition)
    trials = study.get_trials(deepcopy=False)
    keys = [p.key for p in ours] if ours is not None else sorted({key for t in trials for key in t.params})
    by_key = {p.key: p for p in ours or ()}
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    out.write(f"study {study.study_name}: {len(trials)} trials ("
              + ", ".join(f"{n} {state}" for state, n in counts.items() if n) + ")\n")
    header = ["trial", "state", "objective", "duration", *_short_names(keys)]
    rows = [[str(t.number), t.state.name.lower(), _values(t), _duration(t),
             *(_cell(t, key, by_key) for key in keys)]
            for t in trials]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.write("  ".join(cell.rjust(w) if i < 4 else cell.ljust(w) for i, (cell, w) in
                            enumerate(zip(row, widths, strict=True))).rstrip() + "\n")
    if not any(t.state == TrialState.COMPLETE for t in trials):
        out.write("no complete trial yet\n")
    elif ours is None or len(study.directions) > 1:
        out.write("best: " + "; ".join(f"trial {t.number}, objective {_values(t)}" for t in study.best_trials) + "\n")
    else:
        out.write(_best_command(study.best_trial, ours, definition) + "\n")


def _space_params(definition: Any) -> list[space_file.Param] | None:
    """The parameters a sweep recorded with its study; None for a study made some other way."""
    try:
        return [space_file.Param(**(p | {"choices": tuple(p["choices"])})) for p in definition["space"]["params"]]
    except (KeyError, TypeError):
        return None


def _best_command(best: FrozenTrial, params: list[space_file.Param], definition: dict[str, Any]) -> str:
    """``best: ...`` and the ``tetriszmq train`` line that trains with the best trial's parameters."""
    values = {p.key: p.value(best.params[p.key]) for p in params}
    sets = {**definition["space"]["set"], **values}
    config = definition.get("config_path")
    command = ["tetriszmq", "train", *(["--config", config] if config else [])]
    for key, value in sets.items():
        command += ["--set", f"{key}={cfg.toml_value(value)}"]
    return f"best: trial {best.number}, objective {best.value:.4g}\n{shlex.join(command)}"


def _cell(trial: FrozenTrial, key: str, params: dict[str, space_file.Param]) -> str:
    """A trial's parameter as the config takes it (our categorical choices are stored as their TOML)."""
    if key not in trial.params:
        return ""
    stored = trial.params[key]
    return _show(params[key].value(stored) if key in params else stored)


def _values(trial: FrozenTrial) -> str:
    """The objective (or a multi-objective study's objectives)."""
    return ", ".join(f"{value:.4g}" for value in trial.values or ())


def _short_names(keys: list[str]) -> list[str]:
    """Column names: the last part of each key, unless two keys share it."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return [short if last.count(short) == 1 else key for short, key in zip(last, keys, strict=True)]


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "none" if value is None else cfg.toml_value(value)


def _duration(trial: FrozenTrial) -> str:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return ""
    seconds = int((trial.datetime_complete - trial.datetime_start).total_seconds())
    return f"{seconds // 60}m{seconds % 60:02d}s"


