"""`tetriszmq replay` and `eval --record` as a user runs them, on records of real runs."""

from __future__ import annotations

import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, TINY_PLACEMENT, free_port, reap, train_to_end

from tetriszmq.stream.control import request
from tetriszmq.stream.protocol import Topic
from tetriszmq.tetris import records


def tetriszmq(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tetriszmq", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def train(run_dir: Path, *extra: str) -> Path:
    return train_to_end(run_dir, *extra, config=TINY_PLACEMENT)


def episodes_streamed(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_bytes().splitlines()
    return [message for message in map(orjson.loads, lines) if message.get("topic") == "episode"]


def test_the_best_episode_of_a_training_replays_to_the_same_lines_score_and_pieces(placement_run):
    result = tetriszmq("replay", placement_run, "--check")
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["ok"] and report["record"] == report["replayed"]
    streamed = episodes_streamed(placement_run)
    best = records.read(placement_run / "episodes" / "best.rec")
    assert best.lines == max(e["lines"] for e in streamed), "best = most lines of every episode of the run"
    assert {"lines": best.lines, "length": best.pieces} == {
        k: streamed[best.episode - 1][k] for k in ("lines", "length")}, "numbered as the stream numbers episodes"


def test_a_run_keeps_its_last_20_episodes_and_each_replays(placement_run, tetriszmq_here):
    kept = records.numbered(placement_run / "episodes")
    total = len(episodes_streamed(placement_run))
    assert kept == list(range(total - 19, total + 1))
    for which in ("last", str(kept[0])):
        result = tetriszmq_here("replay", placement_run, "--episode", which, "--check")
        assert result.returncode == 0 and orjson.loads(result.stdout)["ok"], result.stdout + result.stderr


def test_the_stream_carries_the_episodes_board_stats(placement_run):
    """Mean holes, max height and bumpiness per episode: in each episode message, and as the SB3 logger scalars
    of the metrics messages."""
    metrics = [m for m in map(orjson.loads, (placement_run / "metrics.jsonl").read_bytes().splitlines())
               if m.get("topic") == "metrics"]
    assert any({"tetris/holes", "tetris/max_height", "tetris/bumpiness"} <= set(m["scalars"]) for m in metrics)
    streamed = episodes_streamed(placement_run)
    assert all({"holes", "max_height", "bumpiness"} <= set(e) for e in streamed)
    best = records.read(placement_run / "episodes" / "best.rec")
    assert {k: streamed[best.episode - 1][k] for k in best.stats} == best.stats, "the record's stats, streamed"


def test_a_replay_streams_like_a_run_to_a_subscriber(placement_run, subscribe):
    best = records.read(placement_run / "episodes" / "best.rec")
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    sub = subscribe(pub)
    replay = subprocess.Popen([sys.executable, "-m", "tetriszmq", "replay", str(placement_run), "--pps", "20",
                               "--from-piece", "3", "--pub", pub, "--ctl", ctl], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = sub.until(lambda t, p: t is Topic.STATUS and p["state"] == "stopped", timeout=60)
        out, err = replay.communicate(timeout=30)
    finally:
        reap([replay])
    assert replay.returncode == 0, err
    boards = [p for t, p in seen if t is Topic.BOARD]
    episode = next(p for t, p in seen if t is Topic.EPISODE)
    assert boards and all(b["step"] >= 3 for b in boards), "streaming starts at --from-piece"
    assert [b["step"] for b in boards] == sorted(b["step"] for b in boards)
    assert (boards[-1]["lines"], boards[-1]["step"], boards[-1]["score"]) == (best.lines, best.pieces, best.score)
    assert (episode["episode"], episode["lines"], episode["length"]) == (best.episode, best.lines, best.pieces)
    assert {"holes", "max_height", "bumpiness"} <= set(episode)
    assert orjson.loads(out) == {"lines": best.lines, "pieces": best.pieces, "score": best.score, "end": best.end}


@pytest.mark.parametrize("command", ["replay", "play"])
@pytest.mark.parametrize("ctl", [("--ctl", "tcp://127.0.0.1:*"), ()], ids=["ctl-given", "ctl-follows-pub"])
def test_a_game_on_any_free_port_says_which_and_obeys_control_there(placement_run, subscribe, command, ctl,
                                                                     default_control_port_busy):
    """``--pub tcp://127.0.0.1:*``: the line it prints is the only way to find the stream (no run.json). Without
    ``--ctl`` the control port is any free one too, not the default one a default trainer holds."""
    source = [str(placement_run)] if command == "replay" else ["--agent", "dellacherie"]
    game = subprocess.Popen([sys.executable, "-m", "tetriszmq", command, *source, "--pps", "2",
                             "--pub", "tcp://127.0.0.1:*", *ctl], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert select.select([game.stderr], [], [], 120)[0], f"{command} printed nothing"
        said = game.stderr.readline()
        found = re.search(r"streaming on (tcp://127\.0\.0\.1:\d+), control on (tcp://127\.0\.0\.1:\d+)$", said)
        assert found, said
        sub = subscribe(found.group(1))
        assert sub.until(lambda t, p: t is Topic.BOARD, timeout=60)
        assert request(found.group(2), "stop")["ok"]
        out, err = game.communicate(timeout=60)
    finally:
        reap([game])
    assert game.returncode == 0, err
    assert orjson.loads(out)["end"] == "stop requested"


def test_a_corrupt_or_truncated_record_is_a_clear_error(placement_run, tmp_path, tetriszmq_here):
    run = Path(shutil.copytree(placement_run, tmp_path / "run"))
    best = run / "episodes" / "best.rec"
    best.write_bytes(best.read_bytes()[:-9])
    last = records.episode_path(run / "episodes", records.numbered(run / "episodes")[-1])
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    for args, message in (([], "corrupt or truncated"), (["--episode", "last"], "corrupt or truncated"),
                          (["--episode", "999999"], "no episode '999999'"),
                          (["--from-piece", "100000", "--episode", records.numbered(run / "episodes")[0]],
                           "--from-piece 100000")):
        result = tetriszmq_here("replay", run, *args, "--pub", f"tcp://127.0.0.1:{free_port()}",
                                "--ctl", f"tcp://127.0.0.1:{free_port()}")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.slow  # trains on, then replays: two CLI processes
def test_a_resumed_run_replaces_a_damaged_best_record_instead_of_crashing(placement_run, tmp_path):
    run = Path(shutil.copytree(placement_run, tmp_path / "run"))
    (run / "episodes" / "best.rec").write_bytes(b"TZEP\x01garbage")
    train(run, "--resume", "--set", "train.max_timesteps=800")
    assert records.read(run / "episodes" / "best.rec").episode > len(episodes_streamed(placement_run))
    assert orjson.loads(tetriszmq("replay", run, "--check").stdout)["ok"]


def test_a_raw_board_run_is_refused_with_a_clear_message(finished_run):
    result = tetriszmq("replay", finished_run)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "only placement runs (env.kind = 'placement') record their episodes" in result.stderr
    assert not (finished_run / "episodes").exists()


@pytest.mark.slow  # a real `tetriszmq eval` process
def test_eval_records_every_game_and_each_replays_to_its_reported_lines(tmp_path, tetriszmq_here):
    folder = tmp_path / "eval"
    result = tetriszmq("eval", "--agent", "dellacherie", "--games", "3", "--max-pieces", "80", "--seed", "4",
                       "--json", "--record", folder)
    assert result.returncode == 0, result.stderr
    reported = orjson.loads(result.stdout)
    assert records.numbered(folder) == [1, 2, 3]
    for game in (1, 2, 3):
        check = tetriszmq_here("replay", folder, "--episode", game, "--check")
        assert check.returncode == 0, check.stdout + check.stderr
        replayed = orjson.loads(check.stdout)["replayed"]
        assert (replayed["lines"], replayed["pieces"]) == (reported["lines"][game - 1], reported["pieces"][game - 1])
    assert records.read(records.locate(folder)).lines == reported["max"], "best of a folder without best.rec"


@pytest.mark.slow  # a real `tetriszmq play` process
def test_play_frames_show_the_agents_candidates_and_its_choice(subscribe):
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    sub = subscribe(pub)
    game = subprocess.Popen([sys.executable, "-m", "tetriszmq", "play", "--agent", "dellacherie", "--pps", "50",
                             "--max-pieces", "40", "--pub", pub, "--ctl", ctl], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = sub.until(lambda t, p: t is Topic.STATUS and p["state"] == "stopped", timeout=60)
        game.communicate(timeout=30)
    finally:
        reap([game])
    frames = [p for t, p in seen if t is Topic.BOARD and "chosen" in p]
    assert frames
    for frame in frames:
        candidates = frame["candidates"]
        assert 1 <= len(candidates) <= 5 and candidates[0]["action"] == frame["chosen"], "greedy: picks the best"
        assert [c["score"] for c in candidates] == sorted((c["score"] for c in candidates), reverse=True)
        assert all(len(c["cells"]) == 4 and all(0 <= r < 20 and 0 <= col < 10 for r, col in c["cells"])
                   for c in candidates)
        assert len(orjson.dumps(frame)) < 2048


@pytest.mark.slow  # several CLI processes, each importing torch
def test_the_readmes_replay_commands_work_as_written(placement_run, tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("#### Replay"):]
    block = section[section.index("```\n") + 4:section.index("\n```", section.index("```\n") + 4)]
    run = shutil.copytree(placement_run, tmp_path / "runs" / "default")
    endpoints = {"tcp://127.0.0.1:5555": f"tcp://127.0.0.1:{free_port()}"}
    for line in block.splitlines():
        args = line.split("#")[0].split()
        assert args[0] == ".venv/bin/tetriszmq"
        args = [endpoints.get(a, a) for a in args[1:]]
        args = [str(run) if a == "runs/default" else str(tmp_path / a) if a.startswith("evals/") else a
                for a in args]
        result = tetriszmq(*args, "--ctl", f"tcp://127.0.0.1:{free_port()}") if "--pub" in args else tetriszmq(*args)
        assert result.returncode == 0, f"{line}\n{result.stderr}"


def sweep_folder(study: Path) -> Path:
    """A study's folder as `tetriszmq sweep` leaves it: its journal and a run directory per trial."""
    for number in (0, 1, 10, 2):
        (study / f"trial-{number}").mkdir(parents=True)
        shutil.copy(TINY_PLACEMENT, study / f"trial-{number}" / "config.toml")
    (study / "optuna.journal").write_text("")
    return study


def test_a_sweep_folder_is_named_as_one_with_the_runs_to_replay(tmp_path, tetriszmq_here):
    study = sweep_folder(tmp_path / "study")
    result = tetriszmq_here("replay", study)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (f"{study} is a sweep folder; its runs are trial-0, trial-1, trial-2, trial-10: replay one of them, "
            f"such as `tetriszmq replay {study / 'trial-0'}`") in result.stderr
    eval_result = tetriszmq_here("eval", "--checkpoint", study)
    assert eval_result.returncode == 2 and "Traceback" not in eval_result.stderr, eval_result.stderr
    assert (f"--checkpoint {study} is a sweep folder; its runs are trial-0, trial-1, trial-2, trial-10: give a "
            f"checkpoint file of one, such as {study / 'trial-0' / 'checkpoints' / 'final'}") in eval_result.stderr


def test_a_record_whose_environment_cannot_be_built_is_a_clear_error(tmp_path, tetriszmq_here):
    path = tmp_path / "future.rec"
    records.write(path, records.EpisodeRecord(seed=3, actions=bytes([1, 2]), lines=0, score=2.0, pieces=2, end="cut",
                                              features=("a_feature_of_a_later_version",), max_pieces=10, episode=4))
    result = tetriszmq_here("replay", path, "--check")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "episode 4: its environment cannot be built here: unknown or no features" in result.stderr


def test_an_episode_named_in_other_than_ascii_digits_is_a_clear_error(tmp_path, tetriszmq_here):
    for name in ("episode-3.rec", "episode-٣.rec"):  # the second is no numbered record: "\d" would read it as 3
        records.write(tmp_path / name, records.EpisodeRecord(seed=3, actions=bytes([1, 2]), lines=0, score=2.0,
                                                             pieces=2, end="cut", features=(), max_pieces=10))
    assert records.numbered(tmp_path) == [3]
    for episode in ("²", "٣"):  # str.isdigit() takes both; int() refuses the first and reads the second as 3
        result = tetriszmq_here("replay", tmp_path, "--episode", episode, "--check")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"no episode '{episode}' (best, last, or one of the kept numbers: 3..3)" in result.stderr
