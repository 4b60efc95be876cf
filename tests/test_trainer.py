"""The trainer as a user meets it: a real process, real PUB/REP sockets, real SB3 training."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import typing
from collections.abc import Iterator

import orjson
import pytest
import zmq
from conftest import ROOT, TINY, TrainerProcess, reap, start_trainer, wait_for
from stable_baselines3 import PPO

from tetriszmq.agents.afterstate_dqn import AfterstateDQN
from tetriszmq.stream import protocol
from tetriszmq.stream.control import request
from tetriszmq.stream.protocol import Topic

pytestmark = pytest.mark.slow  # real trainer processes

LONG = ("--set", "train.max_timesteps=10000000")


def status(trainer, timeout: float = 5.0) -> dict:
    return request(trainer.ctl, "status", timeout=timeout, retries=10)


def check_fields(topic: Topic, payload: dict) -> None:
    expected = protocol.FIELDS[topic].__required_keys__
    missing = set(typing.get_type_hints(protocol.Envelope)) | set(expected)
    assert missing <= set(payload), f"{topic} lacks {missing - set(payload)}"
    assert payload["topic"] == topic and payload["v"] == protocol.VERSION


def test_stop_acknowledges_saves_and_exits_zero(trainers, subscribe):
    trainer = trainers(*LONG)
    sub = subscribe(trainer.pub, (protocol.TOPIC_FRAMES[Topic.STATUS],))
    wait_for(lambda: status(trainer)["timesteps"] > 0)
    reply = request(trainer.ctl, "stop")
    assert reply == {"ok": True, "state": "stopping"}
    assert trainer.wait(30) == 0, trainer.output()
    statuses = [p for _, p in sub.until(lambda t, p: p["state"] == "stopped", timeout=10)]
    assert [p["state"] for p in statuses[-4:]] == ["stopping", "saving", "stopping", "stopped"]
    assert statuses[-1]["reason"] == "stop requested"
    model = PPO.load(trainer.run_dir / "checkpoints" / "latest.zip")
    assert model.num_timesteps > 0
    assert (trainer.run_dir / "checkpoints" / "final.zip").exists()


def test_resume_continues_timesteps_and_episodes(trainers):
    first = trainers(*LONG)
    wait_for(lambda: status(first)["episodes"] >= 3)
    request(first.ctl, "stop")
    assert first.wait(30) == 0
    saved = PPO.load(first.run_dir / "checkpoints" / "latest.zip")
    episodes_before = saved.tetriszmq_counters["episodes"]

    second = trainers("--resume", *LONG, run_dir=first.run_dir)
    wait_for(lambda: status(second, timeout=10)["state"] == "running")
    now = status(second)
    assert now["timesteps"] >= saved.num_timesteps
    assert now["episodes"] >= episodes_before
    wait_for(lambda: status(second)["timesteps"] > saved.num_timesteps)
    request(second.ctl, "stop")
    assert second.wait(30) == 0
    resumed = PPO.load(first.run_dir / "checkpoints" / "latest.zip")
    assert resumed.num_timesteps > saved.num_timesteps
    assert resumed.tetriszmq_counters["episodes"] >= episodes_before


def test_a_resume_with_nothing_left_to_train_says_so_and_ends_stopped(trainers, finished_run, tmp_path):
    run_dir = tmp_path / "done"
    shutil.copytree(finished_run, run_dir)
    trained = PPO.load(run_dir / "checkpoints" / "final.zip").num_timesteps
    again = trainers("--resume", "--set", "run.seed=7", run_dir=run_dir)  # tiny.toml's max_timesteps, already reached
    assert again.wait(60) == 0, again.output()
    assert "resume: run.seed: 3 -> 7 (the run recorded the first; repeat its --set to keep it)" in again.output()
    assert [line for line in again.output().splitlines() if line.startswith("resume: ")] == [
        "resume: run.seed: 3 -> 7 (the run recorded the first; repeat its --set to keep it)"], "only what changed"
    assert (f"already at train.max_timesteps (400): nothing to train; to go on, raise it: --set "
            f"train.max_timesteps={2 * trained}") in again.output()
    last = orjson.loads((run_dir / "metrics.jsonl").read_bytes().splitlines()[-1])
    assert (last["state"], last["reason"]) == ("stopped", "max_timesteps 400 already reached")


def test_a_resumed_trainers_first_status_has_the_checkpoints_counters(trainers, finished_run, tmp_path):
    """Not 0 timesteps until the model is loaded: a viewer would draw the run's curve falling back to 0."""
    run_dir = shutil.copytree(finished_run, tmp_path / "resumed")
    saved = PPO.load(run_dir / "checkpoints" / "latest.zip")
    resumed = trainers("--resume", "--set", "train.max_timesteps=600", run_dir=run_dir)
    assert resumed.wait(120) == 0, resumed.output()
    run = orjson.loads((run_dir / "run.json").read_bytes())["run"]
    first = next(m for m in map(orjson.loads, (run_dir / "metrics.jsonl").read_bytes().splitlines()) if m["run"] == run)
    assert (first["topic"], first["state"]) == ("status", "starting")
    assert (first["timesteps"], first["episodes"]) == (saved.num_timesteps, saved.tetriszmq_counters["episodes"])


def test_save_writes_a_loadable_latest_checkpoint(trainers):
    trainer = trainers(*LONG, "--set", "train.checkpoint_every=0")
    latest = trainer.run_dir / "checkpoints" / "latest.zip"
    wait_for(lambda: status(trainer)["timesteps"] > 0)
    assert not latest.exists()
    assert request(trainer.ctl, "save") == {"ok": True, "state": "saving"}
    wait_for(latest.exists)
    assert PPO.load(latest).num_timesteps > 0


def test_headless_run_finishes_and_journals_every_episode(tmp_path):
    run_dir, scratch = tmp_path / "headless", tmp_path / "tmp"
    scratch.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "tetriszmq", "train", "--config", str(TINY), "--run-dir", str(run_dir),
         "--pub", "tcp://127.0.0.1:0", "--ctl", "tcp://127.0.0.1:0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr
    assert not list(scratch.glob("SB3-*")), "SB3's default logger would leave a folder per run"
    assert "episodes" in result.stderr, "the progress line is shown"
    lines = [orjson.loads(line) for line in (run_dir / "metrics.jsonl").read_bytes().splitlines()]
    episodes = [m["episode"] for m in lines if m["topic"] == "episode"]
    assert episodes == list(range(1, len(episodes) + 1)) and episodes
    assert any(m["topic"] == "metrics" for m in lines)
    assert lines[-1]["topic"] == "status" and lines[-1]["state"] == "stopped"
    final = PPO.load(run_dir / "checkpoints" / "final.zip")
    assert final.num_timesteps == 448, "SB3 ends the rollout it is in: 7 of tiny.toml's 64 steps"
    assert lines[-1]["reason"] == "max_timesteps 400 reached at 448 timesteps (the agent ends the rollout it is in)"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.zip"))[:1] == ["step_000000128.zip"]


def test_train_quiet_on_a_one_cpu_machine_trains_the_default_agent(tmp_path):
    """Pinned to one CPU (the default needs no second one), afterstate-dqn trains to its end."""
    cpu = min(os.sched_getaffinity(0))
    run_dir = tmp_path / "one-cpu"
    result = subprocess.run(
        [sys.executable, "-m", "tetriszmq", "train", "--quiet", "--config", str(ROOT / "tests" / "tiny_placement.toml"),
         "--run-dir", str(run_dir), "--pub", "tcp://127.0.0.1:0", "--ctl", "tcp://127.0.0.1:0"],
        cwd=ROOT, capture_output=True, text=True, timeout=180, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert result.returncode == 0, result.stderr
    final = AfterstateDQN.load(run_dir / "checkpoints" / "final.zip")
    assert final.num_timesteps >= 600 and final._n_updates >= (600 - 100) // 16


@pytest.mark.parametrize("override, message", [
    ("train.max_timesteps=-5", "train.max_timesteps: must be >= 1"),
    ("train.nonsense=1", "unknown key train.nonsense"),
    ("publish.board_fps='fast'", "publish.board_fps: expected float"),
    ("env.kind='hexagonal'", "env.kind: must be one of raw, placement"),
    ("env.reward='lines'", "env.reward: 'lines' needs env.kind = 'placement'"),
    ("agent.params.warp_speed=9", "agent.params: warp_speed"),
    ("agent.params.gamma=2", "agent.params.gamma: must be between 0 and 1, got 2"),
    ('agent.params.learning_rate="abc"', "agent.params.learning_rate: expected a number, got str 'abc'"),
    ("env.features=['holes']", "env.features: only the placement env"),
])
def test_bad_config_values_fail_before_training_naming_the_key(tmp_path, tetriszmq_here, override, message):
    run_dir = tmp_path / "bad"
    result = tetriszmq_here("train", "--config", TINY, "--run-dir", run_dir, "--pub", "tcp://127.0.0.1:0",
                            "--ctl", "tcp://127.0.0.1:0", "--set", override)
    assert result.returncode == 2
    assert message in result.stderr
    assert not run_dir.exists(), "a run that never started leaves no run directory"


def test_ctl_without_a_trainer_fails_clearly():
    from conftest import free_port

    result = subprocess.run(
        [sys.executable, "-m", "tetriszmq", "ctl", "status", "--ctl", f"tcp://127.0.0.1:{free_port()}",
         "--timeout", "0.3", "--retries", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert "no reply" in result.stderr and "2 attempts" in result.stderr


def test_ctl_of_a_run_whose_trainer_has_ended_says_so_at_once(finished_run, tetriszmq_here):
    """One short attempt: a message that blamed the connection would be the fault."""
    run = orjson.loads((finished_run / "run.json").read_bytes())["run"]
    last = orjson.loads((finished_run / "metrics.jsonl").read_bytes().splitlines()[-1])
    result = tetriszmq_here("ctl", "status", "--run-dir", finished_run, "--timeout", "0.2", "--retries", "0")
    assert result.returncode == 3
    assert result.stderr == (f"tetriszmq ctl: run {run} in {finished_run} has ended (stopped at {last['timesteps']} "
                             f"timesteps: {last['reason']}): no trainer to ask\n")


def test_a_port_in_use_is_a_clear_error(trainers):
    first = trainers(*LONG)
    status(first, timeout=10)
    second = trainers(*LONG, pub=first.pub)
    assert second.wait(60) == 2
    assert "cannot bind" in second.output()
    assert not second.run_dir.exists(), "a run that never started leaves no folder for viewers to list"


def test_a_trainer_on_any_free_pub_port_takes_a_free_control_port_too(tmp_path, default_control_port_busy):
    """``--pub tcp://127.0.0.1:*`` beside a default trainer: without ``--ctl``, the control port is a free one too
    (the default one is held), and ``ctl --run-dir`` finds it."""
    run_dir = tmp_path / "run"
    trainer = subprocess.Popen([sys.executable, "-m", "tetriszmq", "train", "--config", str(TINY), *LONG, "--quiet",
                                "--pub", "tcp://127.0.0.1:*", "--run-dir", str(run_dir)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for((run_dir / "run.json").exists, 60, what="run.json", alive=lambda: trainer.poll() is None)
        ctl = orjson.loads((run_dir / "run.json").read_bytes())["endpoints"]["ctl"]
        assert ctl.startswith("tcp://127.0.0.1:") and not ctl.endswith((":5556", ":*"))
        stopped = subprocess.run([sys.executable, "-m", "tetriszmq", "ctl", "stop", "--run-dir", str(run_dir)],
                                 cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        assert trainer.wait(60) == 0, trainer.communicate()[0]
    finally:
        reap([trainer])


# --- tests that share one long run ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProcess]:
    """One long run shared by the tests below, which only watch it or poke it and leave it training: each
    trainer start costs an interpreter, torch and a first episode. A test that stops, resumes or reconfigures
    a trainer starts its own. These tests come last, so that this run trains only while they run and takes
    no CPU from the others."""
    trainer = start_trainer(tmp_path_factory.mktemp("training") / "run", *LONG)
    yield trainer
    reap([trainer.proc])


def test_stream_carries_every_topic_with_schema_and_gapless_seq(training, subscribe):
    sub = subscribe(training.pub)
    seen: dict[Topic, dict] = {}
    seqs: list[int] = []

    def record(topic: Topic, payload: dict) -> bool:
        seen[topic] = payload
        seqs.append(payload["seq"])
        return {Topic.BOARD, Topic.EPISODE, Topic.METRICS, Topic.HEARTBEAT, Topic.STATUS} <= set(seen) \
            and "train/loss" in seen[Topic.METRICS]["scalars"]

    sub.until(record, timeout=90)
    for topic, payload in seen.items():
        check_fields(topic, payload)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq must rise by exactly 1 per message"
    board = seen[Topic.BOARD]["board"]
    assert len(board) == protocol.BOARD_ROWS and all(len(row) == protocol.BOARD_COLS for row in board)
    assert {cell for row in board for cell in row} <= {0, *protocol.PIECE_KINDS}
    assert any(cell for row in board for cell in row), "the falling piece is drawn"
    assert all(kind in protocol.PIECE_KINDS for kind in seen[Topic.BOARD]["next"])
    assert seen[Topic.METRICS]["timesteps"] > 0 and "time/fps" in seen[Topic.METRICS]["scalars"]
    assert seen[Topic.EPISODE]["length"] > 0


def test_topic_filter_receives_only_that_topic(training, subscribe):
    sub = subscribe(training.pub, (protocol.TOPIC_FRAMES[Topic.EPISODE],))
    topics = {sub.recv(60)[0] for _ in range(3)}
    assert topics == {Topic.EPISODE}


MALFORMED: list[list[bytes]] = [
    [b"not json"],
    [b"[1, 2, 3]"],
    [b'"stop"'],
    [b"{}"],
    [b'{"cmd": 7}'],
    [b'{"cmd": "launch-missiles"}'],
    [b'{"cmd": "stop", "extra": 1}'],
    [b'{"cmd": "stop", "v": 99}'],
    [b"\xff\xfe\x00garbage"],
    [b'{"cmd": "' + b"x" * 100_000 + b'"}'],
    [b"[" * 5000 + b"]" * 5000],
    [b'{"cmd": "stop"}', b"second frame"],
]


def test_malformed_requests_get_error_replies_and_training_goes_on(training):
    before = status(training, timeout=10)["timesteps"]
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(training.ctl)
    try:
        for frames in MALFORMED:
            sock.send_multipart(frames)
            assert sock.poll(5000), f"no reply to {frames[0][:30]!r}"
            reply = orjson.loads(sock.recv())
            assert reply["ok"] is False and reply["error"], reply
    finally:
        sock.close()
    wait_for(lambda: status(training)["timesteps"] > before)
    assert training.proc.poll() is None


def test_pause_holds_timesteps_and_resume_continues(training):
    wait_for(lambda: status(training)["timesteps"] > 0)
    assert request(training.ctl, "pause")["state"] == "paused"
    wait_for(lambda: status(training)["state"] == "paused")
    held = status(training)["timesteps"]
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_FRAMES[Topic.HEARTBEAT])
    sub.connect(training.pub)
    try:
        beats = [protocol.decode_message(sub.recv_multipart())[1] for _ in range(3)]
    finally:
        sub.close(linger=0)
    assert all(beat["state"] == "paused" and beat["timesteps"] == held for beat in beats)
    request(training.ctl, "resume")
    wait_for(lambda: status(training)["timesteps"] > held)


def test_snapshot_covers_the_run_up_to_its_seq(training, subscribe):
    sub = subscribe(training.pub, (protocol.TOPIC_FRAMES[Topic.EPISODE],))
    sub.recv(60)
    snap = request(training.ctl, "snapshot")
    assert snap["ok"] and snap["run"] == status(training)["run"]
    episodes = [e["episode"] for e in snap["episodes"]]
    assert episodes == list(range(1, len(episodes) + 1)), "history starts at the first episode, no gaps"
    assert all(e["seq"] <= snap["seq"] for e in snap["episodes"])
    assert snap["status"]["state"] in {"running", "saving"}
    assert len(snap["board"]["board"]) == protocol.BOARD_ROWS


def test_ctl_finds_a_trainer_by_its_run_directory(training, tmp_path, tetriszmq_here):
    """What a user does with trainers started on ``*`` ports: their run.json says where they listen."""
    wait_for(lambda: (training.run_dir / "run.json").exists(), 60, what="run.json")
    asked = subprocess.run([sys.executable, "-m", "tetriszmq", "ctl", "status", "--run-dir", str(training.run_dir)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert asked.returncode == 0, asked.stderr
    assert orjson.loads(asked.stdout)["run"] == orjson.loads((training.run_dir / "run.json").read_bytes())["run"]
    nowhere = tetriszmq_here("ctl", "status", "--run-dir", tmp_path)
    assert nowhere.returncode == 2 and f"--run-dir {tmp_path}: no run.json there" in nowhere.stderr
    both = tetriszmq_here("ctl", "status", "--run-dir", training.run_dir, "--relay", "tcp://127.0.0.1:5559")
    assert both.returncode == 2 and "--relay asks the relay: give it --run RUN, not --ctl or --run-dir" in both.stderr
