"""Every run in one viewer: run folders and live trainers, real processes, the HTTP API and /ws in runs mode."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import TRAINING, free_endpoint, wait_for
from viewer_support import Browser, ViewerProcess, connect

from tetriszmq.stream.control import request
from viewer.series import sidecar

LONG = ("--set", "train.max_timesteps=10000000")


def listed(viewer: ViewerProcess) -> dict[str, dict[str, Any]]:
    return {run["id"]: run for run in viewer.get("/api/runs")["runs"]}


def states(viewer: ViewerProcess) -> dict[str, str]:
    return {ident: run["state"] for ident, run in listed(viewer).items()}


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def journal(run_dir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (run_dir / "metrics.jsonl").read_bytes().splitlines() if line]


async def post(session: aiohttp.ClientSession, viewer: ViewerProcess, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {viewer.token}", **(headers or {})}
    async with session.post(viewer.url + "/api/control", data=orjson.dumps(body), headers=headers) as response:
        return response.status, await response.json()


def run(body) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await body(session)
    asyncio.run(main())


def test_every_run_in_the_folder_is_listed_new_ones_appear_and_stop_acts_on_the_named_run(
        tmp_path, trainers, viewers, finished_run):
    root = tmp_path / "runs"
    root.mkdir()
    for name in ("done-1", "done-2"):
        copy_run(finished_run, root / name)
    seeds = [trainers(*LONG, "--set", f"run.seed={i + 1}", run_dir=root / f"seed-{i}") for i in range(3)]
    viewer = viewers(None, None, "--runs", str(root), "--token", "runs-test")
    wait_for(lambda: {k: v in TRAINING for k, v in states(viewer).items() if k.startswith("seed")}
             == {"seed-0": True, "seed-1": True, "seed-2": True}, timeout=120, what="3 live runs")
    runs = listed(viewer)
    assert sorted(runs) == ["done-1", "done-2", "seed-0", "seed-1", "seed-2"]
    assert [(runs[k]["live"], runs[k]["state"]) for k in ("done-1", "done-2")] == [(False, "stopped")] * 2
    assert {runs[f"seed-{i}"]["seed"] for i in range(3)} == {1, 2, 3}
    assert all(runs[f"seed-{i}"]["link"] == "online" and runs[f"seed-{i}"]["live"] for i in range(3))

    late = trainers(*LONG, run_dir=root / "late")
    wait_for(lambda: listed(viewer).get("late", {}).get("link") == "online", timeout=60, every=0.1,
             what="a trainer started after the viewer")  # the viewer rescans every second
    wait_for(lambda: listed(viewer)["late"]["state"] in TRAINING, timeout=60, what="the late trainer training")

    async def body(session: aiohttp.ClientSession) -> None:
        status, reply = await post(session, viewer, {"cmd": "stop"})
        assert status == 400 and "say which run" in reply["error"]  # several are live
        status, reply = await post(session, viewer, {"cmd": "stop", "run": "seed-1"})
        assert (status, reply) == (200, {"ok": True, "state": "stopping", "run": "seed-1"})
        status, reply = await post(session, viewer, {"cmd": "stop", "run": "done-1"})
        assert status == 409 and "no live trainer" in reply["error"]
        status, reply = await post(session, viewer, {"cmd": "stop", "run": "no-such-run"})
        assert status == 404

    run(body)
    assert seeds[1].wait(60) == 0
    wait_for(lambda: listed(viewer)["seed-1"]["state"] == "stopped", timeout=30, what="seed-1 stopped")
    assert all(t.proc.poll() is None for t in (seeds[0], seeds[2], late))
    runs = listed(viewer)
    assert all(runs[k]["live"] and runs[k]["state"] in TRAINING for k in ("seed-0", "seed-2", "late")), {
        k: (runs[k]["live"], runs[k]["state"]) for k in ("seed-0", "seed-2", "late")}


def test_a_live_runs_history_is_read_when_its_trainer_is_followed_a_finished_ones_when_watched(
        tmp_path, trainers, viewers, finished_run):
    """The page opens on the live runs: their history must be ready before it asks, so their first charts
    wait for no journal read. A finished run is read only when wanted (listing stays cheap)."""
    root = tmp_path / "runs"
    root.mkdir()
    copy_run(finished_run, root / "done")
    trainers(*LONG, run_dir=root / "live")
    wait_for(lambda: (root / "live" / "metrics.jsonl").exists(), timeout=120, what="the trainer's journal")
    viewer = viewers(None, None, "--runs", str(root))
    wait_for(lambda: listed(viewer)["live"]["link"] == "online", timeout=60, what="the live run followed")
    # The read leaves its cache beside the journal: no browser has asked for anything yet.
    wait_for(lambda: sidecar(root / "live" / "metrics.jsonl").exists(), timeout=30, what="the live run's history read")
    assert not sidecar(root / "done" / "metrics.jsonl").exists()
    viewer.get("/api/runs/done")
    assert sidecar(root / "done" / "metrics.jsonl").exists()


def test_a_resumed_run_is_one_run_whose_episodes_continue(tmp_path, trainers, viewers, finished_run):
    root = tmp_path / "runs"
    run_dir = copy_run(finished_run, root / "tiny")
    finished = [m for m in journal(run_dir) if m["topic"] == "episode"]
    viewer = viewers(None, None, "--runs", str(root))

    async def body(session: aiohttp.ClientSession) -> None:
        browser = await connect(session, viewer, runs=True)
        await browser.until(lambda m: m["topic"] == "runs")
        await browser.watch(["tiny"])
        before = await browser.until(lambda m: m["topic"] == "snapshot")
        episodes = before["history"]["episodes"]
        assert episodes["data"][0] == [m["episode"] for m in finished]  # column 0: the episode numbers
        trainers(*LONG, "--resume", run_dir=run_dir)
        after = await browser.until(lambda m: m["topic"] == "snapshot" and m["run"] not in (None, before["run"]),
                                    timeout=120)
        live = await browser.until(lambda m: m["topic"] == "episode" and m["id"] == "tiny", timeout=120)
        numbers = after["history"]["episodes"]["data"][0]
        assert numbers[:len(finished)] == [m["episode"] for m in finished]
        assert live["episode"] > len(finished) and live["run"] == after["run"] == resumed_process(run_dir)
        assert list(listed(viewer)) == ["tiny"] and listed(viewer)["tiny"]["live"]

    run(body)


def test_run_json_names_the_host_so_a_copy_elsewhere_is_not_judged_by_local_pids(finished_run):
    assert orjson.loads((finished_run / "run.json").read_bytes())["host"] == socket.gethostname()


def resumed_process(run_dir: Path) -> str:
    return orjson.loads((run_dir / "run.json").read_bytes())["run"]


def test_a_browser_gets_each_watched_runs_snapshot_first_and_boards_only_where_asked(
        tmp_path, trainers, viewers, finished_run):
    root = tmp_path / "runs"
    copy_run(finished_run, root / "old")
    a, b = (trainers(*LONG, run_dir=root / name) for name in ("a", "b"))
    viewer = viewers(None, None, "--runs", str(root))
    wait_for(lambda: all(listed(viewer).get(k, {}).get("link") == "online" for k in ("a", "b")), timeout=120,
             what="both trainers followed")

    async def body(session: aiohttp.ClientSession) -> None:
        browser = await connect(session, viewer, runs=True)
        first = await browser.until(lambda m: True)
        assert first["topic"] == "runs" and first["full"] and {r["id"] for r in first["runs"]} == {"old", "a", "b"}
        await browser.watch(["a", "b"], boards=["a"])
        for ident in ("a", "b"):
            await browser.until(lambda m, i=ident: m["topic"] == "episode" and m.get("id") == i, timeout=120)
        await browser.watch(["a", "b", "old"], boards=["a"])
        old = await browser.until(lambda m: m["topic"] == "snapshot" and m["id"] == "old")
        assert old["history"]["episodes"]["raw"] == len([m for m in journal(root / "old") if m["topic"] == "episode"])
        assert old["entry"]["state"] == "stopped" and old["board"] is None
        await browser.until(lambda m: m["topic"] == "episode" and m.get("id") == "b" and m["seq"] > 0)
        check_order(browser, {"a": a.run_dir, "b": b.run_dir})
        assert not [m for m in browser.messages if m["topic"] == "board" and m["id"] != "a"]

        await browser.ws.send_str('{"watch": {"runs": 3}}')
        with pytest.raises(ConnectionError, match="CLOSE.* 1003"):
            await browser.until(lambda m: False, timeout=30)

    run(body)


def check_order(browser: Browser, run_dirs: dict[str, Path]) -> None:
    """Per run: nothing before its snapshot, then its history messages exactly as its journal has them."""
    for ident, run_dir in run_dirs.items():
        mine = [m for m in browser.messages if m.get("id") == ident]
        assert mine[0]["topic"] == "snapshot", f"{ident}: {mine[0]['topic']} before its snapshot"
        snapshot = mine[0]
        seqs = [m["seq"] for m in mine[1:] if m["topic"] in ("status", "episode", "metrics")]
        truth = [m["seq"] for m in journal(run_dir) if m["run"] == snapshot["run"] and m["seq"] > snapshot["seq"]]
        common = min(len(seqs), len(truth))  # the journal may lag the stream by a write
        assert common and seqs[:common] == truth[:common], f"{ident}: gaps or duplicates after its snapshot"


def test_broken_run_directories_get_a_clear_note_and_never_break_the_listing(tmp_path, viewers, finished_run):
    root = tmp_path / "runs"
    copy_run(finished_run, root / "good")
    torn = copy_run(finished_run, root / "torn")
    with open(torn / "metrics.jsonl", "ab") as out:
        out.write(b'{"v":1,"topic":"episode","run":"x","se')
    corrupt = copy_run(finished_run, root / "corrupt")
    lines = (corrupt / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (corrupt / "metrics.jsonl").write_bytes(b"".join([*lines[:-3], b"not json at all\n", *lines[-3:]]))
    (copy_run(finished_run, root / "no-run-json") / "run.json").unlink()
    fifo = copy_run(finished_run, root / "fifo")
    (fifo / "metrics.jsonl").unlink()
    os.mkfifo(fifo / "metrics.jsonl")  # a file nothing will ever finish writing: reading it must not hang
    (copy_run(finished_run, root / "latin1") / "config.toml").write_bytes(b'name = "caf\xe9"\n')
    viewer = viewers(None, None, "--runs", str(root))

    runs = listed(viewer)
    assert sorted(runs) == ["corrupt", "fifo", "good", "latin1", "no-run-json", "torn"]
    assert runs["good"]["note"] is None and runs["good"]["state"] == "stopped"
    notes = {ident: runs[ident]["note"] or "" for ident in runs}
    assert "cut short" in notes["torn"]
    assert "1 corrupt line" in notes["corrupt"]
    assert "no run.json" in notes["no-run-json"]
    assert "not a regular file" in notes["fifo"]
    assert "not UTF-8" in notes["latin1"]
    for ident in runs:
        snapshot = viewer.get(f"/api/runs/{ident}")
        assert snapshot["id"] == ident and snapshot["entry"]["note"] == runs[ident]["note"]
    good = viewer.get("/api/runs/good")["history"]
    assert viewer.get("/api/runs/torn")["history"]["episodes"]["raw"] == good["episodes"]["raw"] > 0
    assert viewer.get("/api/runs/corrupt")["history"]["corrupt"] == 1
    assert viewer.get("/api/runs/fifo")["history"]["episodes"]["raw"] == 0


def test_another_sites_page_can_neither_watch_nor_control(tmp_path, viewers, finished_run):
    root = tmp_path / "runs"
    copy_run(finished_run, root / "done")
    viewer = viewers(None, None, "--runs", str(root), "--token", "origin-test")
    trusting = viewers(None, None, "--runs", str(root), "--allow-origin", "https://dash.example.org")
    evil = {"Origin": "https://evil.example"}

    async def body(session: aiohttp.ClientSession) -> None:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(session, viewer, runs=True, headers=evil)
        assert refused.value.status == 403
        status, reply = await post(session, viewer, {"cmd": "stop", "run": "done"}, headers=evil)
        assert status == 403 and "cross-origin" in reply["error"]
        own = await connect(session, viewer, runs=True, headers={"Origin": viewer.url})
        assert (await own.until(lambda m: True))["topic"] == "runs"
        status, _ = await post(session, viewer, {"cmd": "stop", "run": "done"}, headers={"Origin": viewer.url})
        assert status == 409  # past the origin check: the run has no live trainer
        allowed = await connect(session, trusting, runs=True, headers={"Origin": "https://dash.example.org"})
        assert (await allowed.until(lambda m: True))["topic"] == "runs"
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await connect(session, trusting, headers=evil)

    run(body)


def lineage(run_dir: Path) -> str:
    """The run a trainer's process continues, as its run.json says (once the trainer wrote it)."""
    wait_for(lambda: (run_dir / "run.json").exists(), timeout=60, what=f"{run_dir.name}/run.json")
    return orjson.loads((run_dir / "run.json").read_bytes())["lineage"]


def test_a_remote_trainer_is_named_by_its_lineage_and_one_under_runs_is_listed_once(
        tmp_path, trainers, viewers):
    root = tmp_path / "runs"
    root.mkdir()
    remote = trainers(*LONG, run_dir=tmp_path / "elsewhere")
    local = trainers(*LONG, run_dir=root / "local")
    viewer = viewers(None, None, "--runs", str(root), "--trainer", f"{remote.pub},{remote.ctl}",
                     "--trainer", f"{local.pub},{local.ctl}")

    remote_id = f"trainer~{lineage(remote.run_dir)}"

    async def early(session: aiohttp.ClientSession) -> None:
        """A browser watching every run from before the trainers are heard sees them renamed, and stays."""
        browser = await connect(session, viewer, runs=True)
        await browser.watch("*")
        await browser.until(lambda m: m["topic"] == "snapshot" and m["id"] == remote_id, timeout=120)
        await browser.until(lambda m: m["topic"] == "episode" and m["id"] == remote_id, timeout=60)

    run(early)

    def named() -> bool:
        ids = set(listed(viewer))
        return len(ids) == 2 and "local" in ids and any(i.startswith("trainer~tiny-") for i in ids)

    wait_for(named, timeout=120, what="the remote trainer named by its lineage, the local one once")
    ident = next(i for i in listed(viewer) if i.startswith("trainer~"))
    assert ident == remote_id
    entry = listed(viewer)[ident]
    assert entry["dir"] is None and entry["process"] == resumed_process(remote.run_dir) and entry["live"]
    assert {t["id"] for t in viewer.status()["trainers"]} == {ident, "local"}

    async def body(session: aiohttp.ClientSession) -> None:
        status, reply = await post(session, viewer, {"cmd": "pause", "run": ident})
        assert (status, reply["run"], reply["state"]) == (200, ident, "paused")

    run(body)


def test_a_remote_resume_stays_one_run_and_a_new_run_on_its_endpoints_ends_it(tmp_path, trainers, viewers):
    pub, ctl = free_endpoint(), free_endpoint()
    elsewhere = tmp_path / "elsewhere"
    first = trainers(*LONG, run_dir=elsewhere, pub=pub, ctl=ctl)
    viewer = viewers(pub, ctl)
    ident = f"trainer~{lineage(elsewhere)}"
    wait_for(lambda: listed(viewer).get(ident, {}).get("episodes", 0) >= 3, timeout=120, what="the first process")
    assert request(ctl, "stop")["ok"] and first.wait(60) == 0
    wait_for(lambda: listed(viewer)[ident]["state"] == "stopped", timeout=60, what="the stop seen")
    charted = lambda: viewer.get(f"/api/runs/{ident}")["history"]["episodes"]["data"][0]  # noqa: E731
    before = charted()

    resumed = trainers(*LONG, "--resume", run_dir=elsewhere, pub=pub, ctl=ctl)
    wait_for(lambda: listed(viewer)[ident]["process"] == resumed_process(elsewhere) and len(charted()) > len(before),
             timeout=120, what="the resumed process's episodes, in the same run")
    assert list(listed(viewer)) == [ident] and listed(viewer)[ident]["live"]
    numbers = charted()
    assert numbers[:len(before)] == before and numbers[len(before)] == len(before) + 1  # the part before, kept

    resumed.proc.kill()
    resumed.wait()
    fresh = trainers(*LONG, run_dir=tmp_path / "fresh", pub=pub, ctl=ctl)
    new = f"trainer~{lineage(fresh.run_dir)}"
    wait_for(lambda: listed(viewer).get(new, {}).get("state") in TRAINING, timeout=120, what="the new run")
    old = listed(viewer)[ident]
    assert (old["state"], old["live"], old["link"]) == ("crashed", False, None)  # not `running` for ever
    assert old["ended"] is not None and set(listed(viewer)) == {ident, new}


def test_removing_the_folder_of_a_run_followed_through_trainer_leaves_its_trainer_a_run_of_its_own(
        tmp_path, trainers, viewers):
    root = tmp_path / "runs"
    mirror = root / "mirror"  # a run directory naming the remote trainer, as a synced copy of its folder would
    mirror.mkdir(parents=True)
    remote = trainers(*LONG, run_dir=tmp_path / "elsewhere")
    ident = f"trainer~{lineage(remote.run_dir)}"
    shutil.copy(remote.run_dir / "run.json", mirror / "run.json")
    viewer = viewers(None, None, "--runs", str(root), "--trainer", f"{remote.pub},{remote.ctl}")
    wait_for(lambda: {i: r["link"] for i, r in listed(viewer).items()} == {"mirror": "online"}, timeout=120,
             what="the --trainer followed as the run directory naming it")
    shutil.rmtree(mirror)

    async def body(session: aiohttp.ClientSession) -> None:
        browser = await connect(session, viewer, runs=True)
        await browser.watch("*")
        await browser.until(lambda m: m["topic"] == "episode" and m["id"] == ident, timeout=120)

    run(body)
    assert {i: r["link"] for i, r in listed(viewer).items()} == {ident: "online"}
    assert [t["id"] for t in viewer.status()["trainers"]] == [ident]
    assert "Traceback" not in viewer.output()
