"""The viewer lists a run's episode records and replays any of them as board frames, from real trainings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from conftest import ROOT, TINY_PLACEMENT, wait_for

from tetriszmq.replay import start
from tetriszmq.stream.control import request
from tetriszmq.tetris import records


def fetch(url: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def simulated_frames(record: records.EpisodeRecord) -> list[dict[str, Any]]:
    """The game of ``record`` played here, board by board, as the route's frames."""
    env, _ = start(record)
    frames = []
    for action in [*record.actions, None]:
        frame = env.board_frame()
        frames.append({"step": frame["step"], "board": "".join(str(v) for row in frame["board"] for v in row),
                       "lines": frame["lines"], "score": frame["score"]})
        if action is not None:
            env.step(action)
    return frames


def runs_folder(tmp_path: Path, placement_run: Path, finished_run: Path) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(placement_run, root / "placed")
    shutil.copytree(finished_run, root / "raw")
    return root


def test_a_runs_records_are_listed_and_any_one_replays_frame_by_frame_from_any_piece(
        tmp_path, placement_run, finished_run, viewers):
    root = runs_folder(tmp_path, placement_run, finished_run)
    viewer = viewers(None, None, "--runs", str(root))
    episodes = root / "placed" / "episodes"
    snapshot = viewer.get("/api/runs/placed")
    listed = viewer.get("/api/runs/placed/episodes")
    assert snapshot["records"] == listed["records"] and snapshot["records_note"] is None
    names = [r["name"] for r in listed["records"]]
    assert names == ["best", *(f"episode-{n}" for n in reversed(records.numbered(episodes)))]
    best = records.read(episodes / "best.rec")
    assert {k: listed["records"][0][k] for k in ("episode", "lines", "score", "pieces", "seed")} == {
        "episode": best.episode, "lines": best.lines, "score": best.score, "pieces": best.pieces, "seed": best.seed}

    status, whole = fetch(f"{viewer.url}/api/runs/placed/episodes/best?from=0&count=1000")
    assert status == 200, whole
    expected = simulated_frames(best)
    assert [{k: f[k] for k in ("step", "board", "lines", "score")} for f in whole["frames"]] == expected
    assert whole["record"]["frames"] == best.pieces + 1 and expected[-1]["lines"] == best.lines
    assert [f.get("action") for f in whole["frames"]] == [*best.actions, None]
    for first in (best.pieces * 2 // 3, 1, best.pieces - 3, 0):  # scrubbing back and forth: resumes anywhere
        status, chunk = fetch(f"{viewer.url}/api/runs/placed/episodes/best?from={first}&count=7")
        assert status == 200 and chunk["frames"] == whole["frames"][first:first + 7], first
    last = records.numbered(episodes)[-1]
    status, by_number = fetch(f"{viewer.url}/api/runs/placed/episodes/episode-{last}?count=1")
    assert status == 200 and by_number["record"]["episode"] == last


def test_a_raw_board_run_says_it_keeps_no_records_and_bad_requests_get_clear_errors(
        tmp_path, placement_run, finished_run, viewers):
    viewer = viewers(None, None, "--runs", str(runs_folder(tmp_path, placement_run, finished_run)))
    raw = viewer.get("/api/runs/raw")
    assert raw["records"] == [] and "raw-board run" in raw["records_note"]
    status, body = fetch(f"{viewer.url}/api/runs/raw/episodes/best")
    assert status == 409 and "raw-board run" in body["error"]
    for path, code, words in [
        ("/api/runs/nobody/episodes", 404, "no run nobody"),
        ("/api/runs/placed/episodes/best?from=100000", 400, "the episode has frames 0.."),
        ("/api/runs/placed/episodes/best?count=0", 400, "count must be"),
        ("/api/runs/placed/episodes/best?from=-1", 400, "from must be a whole number"),
        ("/api/runs/placed/episodes/worst", 400, "expected best, last"),
        ("/api/runs/placed/episodes/episode-1", 404, "no episode '1'"),
        ("/api/runs/placed/episodes/best?from=%C2%B2", 400, "from must be a whole number"),  # "²" isdigit()
        ("/api/runs/placed/episodes/%C2%B2", 400, "expected best, last"),
    ]:
        status, body = fetch(viewer.url + path)
        assert (status, body["ok"]) == (code, False) and words in body["error"], (path, body)


def test_a_corrupt_or_truncated_record_is_a_clear_error_and_the_others_still_replay(
        tmp_path, placement_run, finished_run, viewers):
    root = runs_folder(tmp_path, placement_run, finished_run)
    episodes = root / "placed" / "episodes"
    data = (episodes / "best.rec").read_bytes()
    (episodes / "best.rec").write_bytes(data[:12] + b"X" + data[13:])  # a flipped byte in the header
    newest = records.numbered(episodes)[-1]
    truncated = records.episode_path(episodes, newest)
    truncated.write_bytes(truncated.read_bytes()[:-9])
    fifo = records.episode_path(episodes, newest - 1)
    fifo.unlink()
    os.mkfifo(fifo)  # nothing will ever write it: reading it must not hang the viewer
    future = records.episode_path(episodes, newest - 2)  # well formed, but for an env this version cannot build
    records.write(future, replace(records.read(future), features=("a_feature_of_a_later_version",)))
    viewer = viewers(None, None, "--runs", str(root))
    listed = {r["name"]: r for r in viewer.get("/api/runs/placed/episodes")["records"]}
    assert "checksum mismatch" in listed["best"]["error"]
    assert "corrupt or truncated" in listed[f"episode-{newest}"]["error"]
    assert "not a regular file" in listed[f"episode-{newest - 1}"]["error"]
    for name in ("best", f"episode-{newest}", "last"):
        status, body = fetch(f"{viewer.url}/api/runs/placed/episodes/{name}")
        assert status == 422 and "corrupt or truncated episode record" in body["error"], (name, body)
    status, body = fetch(f"{viewer.url}/api/runs/placed/episodes/episode-{newest - 1}")
    assert status == 422 and "not a regular file" in body["error"]
    status, body = fetch(f"{viewer.url}/api/runs/placed/episodes/episode-{newest - 2}")
    assert status == 422 and "its environment cannot be built here: unknown or no features" in body["error"], body
    status, body = fetch(f"{viewer.url}/api/runs/placed/episodes/episode-{newest - 3}?count=3")
    assert status == 200 and len(body["frames"]) == 3
    assert viewer.get("/healthz") == {"ok": True} and viewer.proc.poll() is None


def test_a_live_placement_trainers_snapshot_lists_the_records_it_keeps(trainers):
    trainer = trainers("--set", "train.max_timesteps=10000000", "--set", "publish.board_fps=0", config=TINY_PLACEMENT)

    kept: list[dict[str, Any]] = []

    def listed() -> bool:
        kept[:] = request(trainer.ctl, "snapshot", timeout=5, retries=5).get("records") or []
        return len(kept) >= 3

    wait_for(listed, timeout=120, what="records in the snapshot", alive=lambda: trainer.proc.poll() is None)
    episodes = trainer.run_dir / "episodes"
    assert kept[0]["name"] == "best"
    for entry in kept:
        record = records.read(episodes / f"{entry['name']}.rec")
        assert {k: entry[k] for k in ("episode", "lines", "score", "pieces", "seed", "end")} == {
            "episode": record.episode, "lines": record.lines, "score": record.score, "pieces": record.pieces,
            "seed": record.seed, "end": record.end}
        assert entry["when"] > 0
    numbers = [entry["episode"] for entry in kept[1:]]
    assert numbers == sorted(numbers, reverse=True), "newest first"


def test_the_viewer_imports_the_game_only_when_a_replay_asks_for_it():
    """Every viewer start would otherwise pay numba's import (~0.4 s of CPU) for replays most never serve."""
    probe = ("import sys, viewer.__main__, viewer.app; "
             "print(sorted({'numba', 'tetriszmq.tetris.placement_env'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=60).stdout.strip() == "[]"
