"""`tetriszmq sweep`: real sweep processes whose trials are real trainers, on a file journal and on PostgreSQL."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import orjson
import pytest
from conftest import ROOT, free_port, wait_for
from netns import Host

from tetriszmq import cli

TINY_SWEEP = ROOT / "tests" / "tiny_sweep.toml"
SPACE = """
[set]
"train.max_timesteps" = {steps}

[space]
"agent.params.learning_rate" = {{ type = "float", low = 1e-4, high = 1e-2, log = true }}
"agent.params.gamma" = {{ type = "float", low = 0.8, high = 0.99 }}
"env.features" = {{ type = "categorical", choices = [[], ["holes", "bumpiness", "aggregate_height", "lines"]] }}

[objective]
games = 2
max_pieces = 50

[pruner]
{pruner}
"""
NEVER_ENDS = 10**9  # trials that only end when stopped: pruned, or stopped by the test


def space_file(directory: Path, steps: int = 300, pruner: str = "report_every = 100") -> Path:
    path = directory / "space.toml"
    path.write_text(SPACE.format(steps=steps, pruner=pruner))
    return path


def run_sweep(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tetriszmq", "sweep", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def journal_study(runs: Path, name: str) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(runs / name / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def trial_record(run_dir: Path) -> dict:
    return orjson.loads((run_dir / "trial.json").read_bytes())


@pytest.mark.slow
def test_a_sweep_of_four_tiny_trials_with_two_jobs_completes_reports_and_continues(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    space = space_file(tmp_path, pruner='kind = "none"\nreport_every = 100')  # a median pruner may prune one
    common = ["--config", str(TINY_SWEEP), "--space", str(space), "--jobs", "2", "--study", "tiny", "--runs", str(runs)]
    done = run_sweep(*common, "--trials", "4")
    assert done.returncode == 0, done.stderr[-3000:]

    study = journal_study(runs, "tiny")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.intermediate_values, "the trial's own stream reported intermediate values"
        run_dir = runs / "tiny" / f"trial-{trial.number}"
        assert (run_dir / "checkpoints" / "final.zip").exists()
        assert not list((run_dir / "checkpoints").glob("replay/*")), "a trial's checkpoints skip the replay buffer"
        assert orjson.loads((run_dir / "run.json").read_bytes())["endpoints"]["pub"] != "tcp://127.0.0.1:0"
        record = trial_record(run_dir)
        assert record["state"] == "complete" and record["objective"] == trial.value
        assert record["params"]["agent.params.gamma"] == trial.params["agent.params.gamma"]

    report = run_sweep("--study", "tiny", "--report", "--runs", str(runs))
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("study tiny: 4 trials (4 complete)")
    assert len(re.findall(r"^\s+\d\s+complete\s", report.stdout, re.M)) == 4
    best = study.best_trial
    assert f"best: trial {best.number}, objective" in report.stdout
    command = report.stdout.strip().splitlines()[-1]
    assert command.startswith(f"tetriszmq train --config {TINY_SWEEP} --set train.max_timesteps=300 ")
    assert f"agent.params.gamma={best.params['agent.params.gamma']!r}" in command

    again = run_sweep(*common, "--trials", "5")  # a restarted sweep continues the study to its new size
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(t.number for t in journal_study(runs, "tiny").trials) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_a_pruned_trial_is_stopped_through_its_control_socket_with_a_final_checkpoint(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    space = space_file(tmp_path, steps=NEVER_ENDS, pruner='kind = "threshold"\nlower = 1e9\nreport_every = 100')
    done = run_sweep("--config", str(TINY_SWEEP), "--space", str(space), "--trials", "1", "--study", "prune",
                     "--runs", str(runs))
    assert done.returncode == 0, done.stderr[-3000:]
    [trial] = journal_study(runs, "prune").trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [100]
    run_dir = runs / "prune" / "trial-0"
    assert (run_dir / "checkpoints" / "final.zip").exists()
    assert trial_record(run_dir)["state"] == "pruned"
    assert last_status(run_dir)["state"] == "stopped" and "stop" in last_status(run_dir)["reason"]


def last_status(run_dir: Path) -> dict:
    return [m for m in map(orjson.loads, (run_dir / "metrics.jsonl").read_bytes().splitlines())
            if m["topic"] == "status"][-1]


@pytest.mark.slow
def test_a_trial_whose_stream_cannot_be_followed_is_stopped_with_a_final_checkpoint_and_the_sweep_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trial 0's first report fails (a storage gone, say); trial 1 runs as usual."""
    from tetriszmq.sweep import space as space_module
    from tetriszmq.sweep.study import _optimize
    from tetriszmq.sweep.trial import Sweep

    report = optuna.trial.Trial.report

    def failing_report(trial: optuna.trial.Trial, value: float, step: int) -> None:
        if trial.number == 0:
            raise OSError("the storage went away")
        report(trial, value, step)

    monkeypatch.setattr(optuna.trial.Trial, "report", failing_report)
    runs = tmp_path / "runs"
    space = space_module.load(space_file(tmp_path, steps=3000, pruner='kind = "none"\nreport_every = 100'))
    study = optuna.create_study(study_name="watch", direction="maximize")
    assert _optimize(study, Sweep("watch", TINY_SWEEP, space, runs, threading.Event()), 2, 2, 1) == 0
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    failed = runs / "watch" / "trial-0"
    record = trial_record(failed)
    assert record["state"] == "failed"
    assert "following its stream failed: OSError: the storage went away" in record["error"]
    assert (failed / "checkpoints" / "final.zip").exists()
    assert last_status(failed)["state"] == "stopped" and last_status(failed)["reason"] == "stop requested"
    assert last_status(runs / "watch" / "trial-1")["reason"].startswith("max_timesteps 3000 reached")


def test_a_trainer_that_outlives_its_stop_is_signalled_then_killed() -> None:
    from tetriszmq.sweep.trial import _reap

    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout.readline() == "ready\n"
        assert _reap(stubborn, grace=0.2) == -signal.SIGKILL
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
        stubborn.wait(10)
        stubborn.stdout.close()


BAD_SPACES = {
    "unknown key": ('"train.max_secs" = { type = "int", low = 1, high = 2 }', "unknown key train.max_secs"),
    "unknown algorithm parameter": ('"agent.params.lerning_rate" = { type = "float", low = 1e-4, high = 1e-2 }',
                                    "afterstate-dqn has no parameter 'lerning_rate'"),
    "low above high": ('"agent.params.gamma" = { type = "float", low = 0.99, high = 0.9 }',
                       "low (0.99) must be below high (0.9)"),
    "log from zero": ('"agent.params.learning_rate" = { type = "float", low = 0, high = 0.1, log = true }',
                      "a log range needs low > 0"),
    "unknown type": ('"agent.params.gamma" = { type = "flot", low = 0.9, high = 0.99 }',
                     "type must be float, int or categorical"),
    "a bound the config refuses": ('"run.seed" = { type = "int", low = 0, high = 3 }', "run.seed: must be >= 1"),
    "an unknown feature": ('"env.features" = { type = "categorical", choices = [["holes", "nope"]] }',
                           "env.features: unknown nope"),
    "int range of floats": ('"agent.params.train_freq" = { type = "int", low = 1.5, high = 8 }',
                            "low must be an integer"),
    "eval of a raw-board run": ('"env.kind" = { type = "categorical", choices = ["placement", "raw"] }\n'
                                '[set]\n"env.reward" = "score"', 'needs env.kind = "placement"'),
}


@pytest.mark.parametrize("case", BAD_SPACES)
def test_a_bad_space_file_exits_2_naming_the_problem_and_starts_nothing(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line, message = BAD_SPACES[case]
    space = tmp_path / "space.toml"
    space.write_text(f"[space]\n{line}\n")
    runs = tmp_path / "runs"
    code = cli.main(["sweep", "--config", str(TINY_SWEEP), "--space", str(space), "--study", "bad", "--runs",
                     str(runs)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not runs.exists(), "nothing was started or written"


def test_the_shipped_space_file_fits_the_default_config() -> None:
    """The README's sweep command: its space file passes the checks a sweep makes before it starts."""
    from tetriszmq import config as cfg
    from tetriszmq.sweep import space

    shipped = space.load(ROOT / "configs" / "sweep.toml")
    space.check(shipped, cfg.load(ROOT / "configs" / "default.toml"))
    assert {p.key for p in shipped.params} == {f"agent.params.{k}" for k in
                                                 ("learning_rate", "gamma", "train_freq", "target_update_interval")}


def test_an_unreachable_storage_exits_2_before_any_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/optuna"
    code = cli.main(["sweep", "--config", str(TINY_SWEEP), "--space", str(space_file(tmp_path)), "--study", "x",
                     "--storage", url, "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot reach storage postgresql://nobody:***@127.0.0.1" in err and "secret" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("study", ["with space", "line\n", "s" * 60])
def test_a_study_name_that_cannot_name_a_folder_exits_2_before_anything_is_written(
        study: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["sweep", "--config", str(TINY_SWEEP), "--space", str(space_file(tmp_path)), "--study", study,
                     "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "must be 1 to 59 letters, digits, . _ - (it names folders, and its trials' runs)" in err
    assert "{1,80}" not in err  # the run id pattern's own bound contradicted the 59
    assert not (tmp_path / "runs").exists()


def test_a_report_of_a_study_that_is_not_there_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sweep", "--study", "nope", "--report", "--runs", str(tmp_path)]) == 2
    assert "no study journal at" in capsys.readouterr().err


@pytest.mark.parametrize("directions", [["maximize"], ["minimize", "maximize"]])
def test_a_report_of_a_study_made_by_plain_optuna_shows_its_trials(
        directions: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Someone else's study on the same storage: no space recorded, no user attributes on its trials."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    (tmp_path / "theirs").mkdir()
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "theirs" / "optuna.journal")))
    study = optuna.create_study(study_name="theirs", storage=storage, directions=directions)
    results = iter([[1.5, 2.0], optuna.TrialPruned(), RuntimeError("crashed"), [0.5, 3.0]])

    def objective(trial: optuna.Trial) -> list[float] | float:
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        trial.suggest_categorical("net", ["small", None])
        if trial.number == 3:
            trial.suggest_int("layers", 1, 4)
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return result[:len(directions)] if len(directions) > 1 else result[0]

    study.optimize(objective, n_trials=4, catch=(RuntimeError,))
    assert cli.main(["sweep", "--study", "theirs", "--report", "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study theirs: 4 trials (")
    assert re.search(r"^trial\s+state\s+objective\s+duration\s+layers\s+lr\s+net$", out, re.M)
    assert re.search(r"^\s+3\s+complete\s+0\.5\b.*\s[1-4]\s", out, re.M)
    assert re.search(r"^\s+2\s+fail\s", out, re.M) and re.search(r"^\s+1\s+pruned\s", out, re.M)
    best = "best: trial 0, objective 1.5\n" if len(directions) == 1 else "best: trial 3, objective 0.5, 3\n"
    assert out.endswith(best)  # with two objectives, trial 3 dominates trial 0


# --- one study in PostgreSQL, two sweeps on two hosts -----------------------------------------------


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture
def postgres(hosts: tuple[Host, Host]) -> Iterator[str]:
    """A throwaway PostgreSQL cluster listening on the server host's address; yields its URL; always stopped."""
    bin_dir = postgres_bin()
    if bin_dir is None or shutil.which("runuser") is None:
        pytest.skip("Debian's postgresql (and runuser) are not installed: scripts/setup.sh --test installs them")
    server, client = hosts
    root = Path(tempfile.mkdtemp(prefix="tzq-pg-"))  # not under pytest's tmp: the postgres user must reach it
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    shutil.chown(root, "postgres")
    shutil.chown(sockets, "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    try:
        subprocess.run([*as_postgres, bin_dir / "initdb", "-D", data, "--auth=trust", "-U", "postgres"],
                       check=True, capture_output=True, timeout=120)
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {client.address}/32 trust\nhost all all {server.address}/32 trust\n")
        subprocess.run([*server.prefix(), *as_postgres, bin_dir / "pg_ctl", "-D", data, "-l", root / "log", "-w",
                        "-o", f"-c listen_addresses={server.address} -p {port} -k {sockets}", "start"],
                       check=True, capture_output=True, timeout=120)
        yield f"postgresql://postgres@{server.address}:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_sweeps_on_two_hosts_share_one_postgresql_study_without_duplicate_trials(
        postgres: str, hosts: tuple[Host, Host], tmp_path: Path) -> None:
    """Each sweep runs one trial at a time, and no trial ends until the test stops it: so each sweep holds one
    of the study's two trials, and neither starts a third once the study has its two."""
    space = space_file(tmp_path, steps=NEVER_ENDS, pruner='kind = "none"')
    sweeps = {}
    for host in hosts:
        runs = tmp_path / host.name
        args = ["--config", str(TINY_SWEEP), "--space", str(space), "--trials", "2", "--jobs", "1",
                "--study", "shared", "--storage", postgres, "--runs", str(runs)]
        log = open(tmp_path / f"{host.name}.log", "wb")  # closed with the process, in the finally below
        sweeps[host.name] = (runs, subprocess.Popen([*host.prefix(), sys.executable, "-m", "tetriszmq", "sweep",
                                                     *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL), log)
    try:
        run_files = {}
        for name, (runs, proc, _) in sweeps.items():
            wait_for(lambda runs=runs: glob.glob(str(runs / "shared" / "trial-*" / "run.json")), timeout=240,
                     what=f"a trial of the sweep on {name}", alive=lambda proc=proc: proc.poll() is None)
            [run_files[name]] = glob.glob(str(runs / "shared" / "trial-*" / "run.json"))
        for run_file in run_files.values():  # SIGTERM: the trainer's graceful stop, as `ctl stop` would
            wait_for(lambda f=run_file: orjson.loads(Path(f).read_bytes()).get("pid"), timeout=30,
                     tolerate=(orjson.JSONDecodeError,), what="run.json")
            os.kill(orjson.loads(Path(run_file).read_bytes())["pid"], signal.SIGTERM)
        for name, (_, proc, _log) in sweeps.items():
            assert proc.wait(300) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for _, proc, log in sweeps.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
            log.close()

    numbers = {name: sorted(int(p.name.removeprefix("trial-")) for p in (runs / "shared").glob("trial-*"))
               for name, (runs, _, _) in sweeps.items()}
    assert sorted(sum(numbers.values(), [])) == [0, 1], numbers
    assert all(len(n) == 1 for n in numbers.values()), numbers
    server = hosts[0]
    report = subprocess.run([*server.prefix(), sys.executable, "-m", "tetriszmq", "sweep", "--study", "shared",
                             "--storage", postgres, "--report"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("study shared: 2 trials (2 complete)"), report.stdout
