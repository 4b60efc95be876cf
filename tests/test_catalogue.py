"""The run catalogue: every run directory under --runs, live or finished, listed cheaply and never broken."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import train_to_end, wait_for

from tetriszmq.stream.control import request
from viewer.catalogue import Catalogue, RunEntry, process_alive, read_journal, run_id
from viewer.fanout import Limits
from viewer.runs import Runs, RunsSettings
from viewer.series import load_journal

LONG = ("--set", "train.max_timesteps=10000000")


def listed(*roots: Path) -> dict[str, dict[str, Any]]:
    """``GET /api/runs`` as a browser would parse it, by run id: the viewer's `Runs` after one scan."""
    async def scan() -> dict[str, dict[str, Any]]:
        runs = Runs(RunsSettings(roots=roots), Limits())
        await runs.refresh()
        return runs.listing_entries()

    return orjson.loads(orjson.dumps(asyncio.run(scan())))


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def rchar() -> int:
    """Bytes this process has read through read(2) and friends so far (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_finished_run_is_listed_from_its_files(finished_run: Path):
    journal = [orjson.loads(line) for line in (finished_run / "metrics.jsonl").read_bytes().splitlines()]
    episodes = [m for m in journal if m["topic"] == "episode"]
    run = listed(finished_run.parent)["tiny"]
    assert (run["name"], run["dir"], run["live"], run["state"]) == ("tiny", str(finished_run), False, "stopped")
    assert (run["algo"], run["seed"], run["config"]["agent.params.n_steps"]) == ("ppo", 3, 64)
    assert run["episodes"] == journal[-1]["episodes"] and run["timesteps"] == journal[-1]["timesteps"] >= 400
    assert run["best_lines"] == max(m["lines"] for m in episodes) and run["best_lines_exact"]
    assert run["started"] == journal[0]["t"] and run["ended"] == journal[-1]["t"]
    run_file = orjson.loads((finished_run / "run.json").read_bytes())
    assert run["endpoints"] == run_file["endpoints"] and run["process"] == run_file["run"]
    assert run["note"] is None


def test_runs_are_found_in_the_folder_one_level_deeper_and_as_the_folder_itself(tmp_path: Path, finished_run: Path):
    copy_run(finished_run, tmp_path / "exp1")
    copy_run(finished_run, tmp_path / "sweep" / "trial-3")
    (tmp_path / "sweep" / "notes").mkdir()
    (tmp_path / ".trash").mkdir()
    copy_run(finished_run, tmp_path / ".trash" / "old")
    runs = listed(tmp_path)
    assert sorted(runs) == ["exp1", "sweep~trial-3"]
    assert runs["sweep~trial-3"]["name"] == "sweep/trial-3"
    assert list(listed(tmp_path / "exp1")) == ["exp1"], "--runs pointing at one run directory"


def test_ids_are_url_safe_stable_and_unique_and_several_roots_are_told_apart(tmp_path: Path, finished_run: Path):
    copy_run(finished_run, tmp_path / "a" / "runs" / "seed 1")
    copy_run(finished_run, tmp_path / "a" / "runs" / "seed_1")
    copy_run(finished_run, tmp_path / "b" / "runs" / "seed_1")
    one = listed(tmp_path / "a" / "runs")
    assert sorted(one) == sorted(["seed_1", run_id(["seed 1"])]) and run_id(["seed 1"]).startswith("seed_1-")
    assert one[run_id(["seed 1"])]["name"] == "seed 1"
    assert listed(tmp_path / "a" / "runs").keys() == one.keys(), "the same ids on every scan"
    both = listed(tmp_path / "a" / "runs", tmp_path / "b" / "runs")
    assert len(both) == 3 and all(not set(i) - set("abcdefghijklmnopqrstuvwxyz0123456789_-.~") for i in both)


def test_a_broken_run_directory_gets_a_note_and_never_breaks_the_listing(tmp_path: Path, finished_run: Path):
    torn = copy_run(finished_run, tmp_path / "torn")  # killed while writing an episode
    lines = (torn / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (torn / "metrics.jsonl").write_bytes(b"".join(lines[:-3]) + b'{"v":1,"topic":"episode","run":"x","se')
    corrupt = copy_run(finished_run, tmp_path / "corrupt")
    lines = (corrupt / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (corrupt / "metrics.jsonl").write_bytes(b"".join(lines[:-3] + [b"\x00\xffgarbage\n"] + lines[-3:]))
    (copy_run(finished_run, tmp_path / "no-run-json") / "run.json").unlink()
    bad_json = copy_run(finished_run, tmp_path / "bad-run-json")
    (bad_json / "run.json").write_bytes(b"{not json")
    bad_toml = copy_run(finished_run, tmp_path / "bad-toml")
    (bad_toml / "config.toml").write_text("[run\nname =")
    directory = copy_run(finished_run, tmp_path / "run-json-is-a-folder")
    (directory / "run.json").unlink()
    (directory / "run.json").mkdir()
    fifo = copy_run(finished_run, tmp_path / "journal-is-a-fifo")
    (fifo / "metrics.jsonl").unlink()
    os.mkfifo(fifo / "metrics.jsonl")  # reading it would block for ever
    copy_run(finished_run, tmp_path / "fine")

    runs = listed(tmp_path)
    assert len(runs) == 8 and runs["fine"]["note"] is None
    assert "cut short" in runs["torn"]["note"] and runs["torn"]["state"] == "crashed"
    assert "1 corrupt line" in runs["corrupt"]["note"] and runs["corrupt"]["state"] == "stopped"
    assert "no run.json" in runs["no-run-json"]["note"] and runs["no-run-json"]["state"] == "stopped"
    assert "run.json: unreadable" in runs["bad-run-json"]["note"]
    assert "config.toml: unreadable" in runs["bad-toml"]["note"] and runs["bad-toml"]["algo"] is None
    assert "run.json: not a regular file" in runs["run-json-is-a-folder"]["note"]
    assert "metrics.jsonl: not a regular file" in runs["journal-is-a-fifo"]["note"]


def test_listing_reads_the_ends_of_a_long_journal_not_all_of_it(tmp_path: Path, finished_run: Path):
    run = copy_run(finished_run, tmp_path / "long")
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    episode = orjson.loads(next(line for line in lines if b'"episode"' in line))
    body = b"".join(orjson.dumps({**episode, "seq": 1000 + n, "lines": 7}) + b"\n" for n in range(150_000))
    (run / "metrics.jsonl").write_bytes(lines[0] + body + b"".join(lines[1:]))
    size = (run / "metrics.jsonl").stat().st_size
    catalogue = Catalogue([tmp_path])
    before = rchar()
    entry = catalogue.scan()["long"]
    assert rchar() - before < size / 50, f"read {rchar() - before} of {size} bytes"
    assert entry.state == "stopped" and entry.started == orjson.loads(lines[0])["t"]
    assert entry.best_lines_exact is True, "a status carries the run's best, so the tail alone gives it"
    before = rchar()
    catalogue.scan()
    assert rchar() - before < 4096, "unchanged files are not read again"


def test_the_process_check_sees_through_zombies_and_reused_pids():
    assert process_alive(os.getpid(), time.time())
    assert not process_alive(os.getpid(), started=1000.0), "a process younger than the run.json is another one"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().split(")")[1].split()[0] == "Z", timeout=30)
        assert not process_alive(child.pid, time.time())
    finally:
        child.wait()
    assert not process_alive(child.pid, time.time())


def test_a_run_json_from_another_host_is_not_judged_by_local_pids(tmp_path: Path, finished_run: Path):
    run = copy_run(finished_run, tmp_path / "remote")
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (run / "metrics.jsonl").write_bytes(b"".join(lines[:-1]))  # last status: stopping, not stopped
    run_file = orjson.loads((run / "run.json").read_bytes())
    (run / "run.json").write_bytes(orjson.dumps({**run_file, "pid": os.getpid(), "host": "gpu-box-elsewhere"}))
    entry = listed(tmp_path)["remote"]
    assert (entry["live"], entry["state"]) == (False, "unknown") and "gpu-box-elsewhere" in entry["note"]


def test_live_runs_appear_change_state_and_disappear_as_the_folder_changes(tmp_path: Path, trainers, finished_run):
    """Refreshes as the hub makes them: a new trainer is listed live, a killed one crashed, a stopped one stopped."""
    root = tmp_path / "runs"
    root.mkdir()
    copy_run(finished_run, root / "old")

    async def until(catalogue: Catalogue, run: str, predicate, timeout: float = 60.0) -> RunEntry:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await catalogue.refresh()
            entry = catalogue.entries.get(run)
            if predicate(entry):
                return entry
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{run}: {catalogue.entries.get(run)}")

    async def main() -> None:
        catalogue = Catalogue([root])
        await catalogue.refresh()
        assert list(catalogue.entries) == ["old"]
        killed = trainers(*LONG, run_dir=root / "killed")
        (root / "study").mkdir()
        stopped = trainers(*LONG, run_dir=root / "study" / "stopped")
        entry = await until(catalogue, "killed", lambda e: e is not None and e.live and e.state == "running")
        assert entry.endpoints == {"pub": killed.pub, "ctl": killed.ctl} and entry.pid == killed.proc.pid
        await until(catalogue, "study~stopped", lambda e: e is not None and e.state == "running")
        killed.proc.send_signal(signal.SIGKILL)
        killed.wait()
        await until(catalogue, "killed", lambda e: e.state == "crashed" and not e.live)
        await asyncio.to_thread(request, stopped.ctl, "stop")
        entry = await until(catalogue, "study~stopped", lambda e: e.state == "stopped")
        assert entry.ended is not None and not entry.live
        shutil.rmtree(root / "old")
        await until(catalogue, "old", lambda e: e is None)

    asyncio.run(main())


def test_the_viewers_watch_lists_a_new_run_directory_within_its_period(tmp_path: Path, finished_run: Path):
    async def main() -> dict[str, dict[str, Any]]:
        runs = Runs(RunsSettings(roots=(tmp_path,), every=0.2), Limits())
        await runs.start()
        try:
            await asyncio.to_thread(copy_run, finished_run, tmp_path / "new")
            deadline = time.monotonic() + 30
            while "new" not in runs.listing_entries() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return runs.listing_entries()
        finally:
            await runs.stop()

    assert list(asyncio.run(main())) == ["new"]


def test_a_resumed_run_is_one_run_whose_episodes_continue(tmp_path: Path, finished_run: Path):
    run = copy_run(finished_run, tmp_path / "resumed")
    first = orjson.loads((run / "run.json").read_bytes())["run"]
    before = read_journal(run / "metrics.jsonl")
    train_to_end(run, "--resume", "--set", "train.max_timesteps=800")
    runs = listed(tmp_path)
    assert list(runs) == ["resumed"]
    entry = runs["resumed"]
    assert entry["process"] != first and entry["state"] == "stopped" and entry["timesteps"] >= 800
    assert entry["episodes"] > before.episodes and entry["started"] == read_journal(run / "metrics.jsonl").first_t
    episodes = orjson.loads(load_journal(run / "metrics.jsonl").encode())["episodes"]
    numbers = episodes["data"][episodes["columns"].index("episodes")]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) == entry["episodes"]


@pytest.mark.parametrize("content", [b"", b"\n\n", b"[1,2]\n"])
def test_an_empty_or_odd_journal_summarises_to_nothing(tmp_path: Path, content: bytes):
    (tmp_path / "metrics.jsonl").write_bytes(content)
    journal = read_journal(tmp_path / "metrics.jsonl")
    assert (journal.episodes, journal.state, journal.terminal) == (0, None, False)


def test_a_runs_folder_that_does_not_exist_yet_lists_nothing_until_a_run_appears(tmp_path: Path, finished_run: Path):
    assert listed(tmp_path / "runs") == {}
    copy_run(finished_run, tmp_path / "runs" / "first")
    assert list(listed(tmp_path / "runs")) == ["first"]
