"""`StreamCallback` in other people's SB3 code: any env, subprocess envs, several learn() calls, errors.

Each case runs a real SB3 script in a subprocess (CartPole, no Tetris) and watches its real stream.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, Subscriber, free_port, wait_for

from tetriszmq.stream.callback import ABANDONED, StreamCallback
from tetriszmq.stream.control import NoReply, request
from tetriszmq.stream.protocol import StatusFields, Topic
from tetriszmq.stream.security import ClientCurve, SecurityError, make_keys

PRELUDE = """
import faulthandler
import sys
faulthandler.enable()  # a script the test gives up on is sent SIGABRT: its threads' stacks go to its log
import gymnasium as gym
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.callbacks import BaseCallback
from tetriszmq import StreamCallback
PUB, CTL = sys.argv[1], sys.argv[2]
SMALL = dict(n_steps=128, batch_size=64, n_epochs=1, device="cpu")


def streaming(callback):  # bind now, and go on once the test's subscriber hears the stream (it says so on stdin)
    callback.bind()
    sys.stdin.readline()
    return callback


class Fails(BaseCallback):  # the user's bug: raises `error` once `at` timesteps are done
    def __init__(self, error, at=200):
        super().__init__()
        self.error, self.at = error, at

    def _on_step(self):
        if self.num_timesteps >= self.at:
            raise self.error
        return True
"""


class Script:
    """A Python script in a subprocess, with a subscriber on its stream from before it starts.

    A script that wraps its callback in ``streaming(...)`` waits until the subscriber has heard the
    stream, so that a short run loses nothing to the subscriber's connecting.
    """

    def __init__(self, body: str, tmp_path: Path, *, args: tuple[str, ...] = ()) -> None:
        self.pub, self.ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        self.sub = Subscriber(self.pub)
        self.messages: list[tuple[Topic, dict]] = []
        path = tmp_path / f"script_{free_port()}.py"
        path.write_text(PRELUDE + textwrap.dedent(body))
        self.log = path.with_suffix(".log")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(path), self.pub, self.ctl, *args], cwd=ROOT,
                                         stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                                         start_new_session=True)  # a process group of its own, as in a terminal
        if "streaming(" in body:
            self.messages.append(self.sub.recv(120))
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.flush()

    def until(self, predicate, timeout: float = 120.0) -> list[tuple[Topic, dict]]:
        seen = self.sub.until(predicate, timeout)
        self.messages += seen
        return seen

    def finish(self, timeout: float = 180.0) -> int:
        """Wait for the exit, then read what is left of the stream."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler: where it hangs, in the log
            try:
                self.proc.wait(10)
            finally:
                self.proc.kill()
                self.proc.wait(10)
            raise AssertionError(f"the script did not exit within {timeout}s; its log:\n{self.output()}") from None
        while self.sub.sock.poll(500):
            self.messages.append(self.sub.recv())
        self.sub.close()
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def of(self, topic: Topic) -> list[dict]:
        return [m for t, m in self.messages if t is topic]

    def statuses(self) -> list[tuple[str, str]]:
        return [(m["state"], m["reason"]) for m in self.of(Topic.STATUS)]


@pytest.fixture
def script(tmp_path):
    started: list[Script] = []

    def start(body: str, **kwargs) -> Script:
        started.append(Script(body, tmp_path, **kwargs))
        return started[-1]

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(10)
        s.sub.close()
        print(f"--- the script's output, exit code {s.proc.returncode}:", s.output()[-4000:], sep="\n")  # on failure


def bindable(endpoint: str) -> bool:
    """True if nothing listens on the endpoint's port any more."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", int(endpoint.rsplit(":", 1)[1])))
        except OSError:
            return False
    return True


@pytest.mark.slow  # SubprocVecEnv: two more interpreters importing SB3
def test_subprocess_envs_stream_episodes_and_no_board_when_envs_have_none(script):
    run = script("""
        if __name__ == "__main__":
            env = SubprocVecEnv([lambda: Monitor(gym.make("CartPole-v1"))] * 2)
            model = PPO("MlpPolicy", env, **SMALL)
            model.learn(1024, callback=streaming(StreamCallback(pub=PUB, ctl=CTL)))
            env.close()
            print("done", model.num_timesteps)
    """)
    assert run.finish() == 0, run.output()
    assert "done 1024" in run.output()
    assert run.of(Topic.EPISODE) and not run.of(Topic.BOARD)
    assert run.statuses()[-1] == ("stopped", "training ended")


def test_envs_without_monitor_report_reward_and_length_from_sb3s_own_rewards_and_no_lines(script):
    run = script("""
        class Success(gym.Wrapper):
            def step(self, action):
                obs, reward, terminated, truncated, info = self.env.step(action)
                info["is_success"] = truncated
                return obs, reward, terminated, truncated, info

        env = DummyVecEnv([lambda: Success(gym.make("CartPole-v1"))] * 2)  # no Monitor
        callback = streaming(StreamCallback(pub=PUB, ctl=CTL, info_keys=("is_success",)))
        PPO("MlpPolicy", env, **SMALL).learn(512, callback=callback)
    """)
    assert run.finish() == 0, run.output()
    episodes = run.of(Topic.EPISODE)
    assert episodes
    for episode in episodes:
        assert episode["length"] > 0 and episode["reward"] == episode["length"], "CartPole pays 1 per step"
        assert "lines" not in episode, "not a Tetris run: no lines, rather than a zero"
        assert episode["is_success"] is False


def test_with_four_envs_a_boards_episode_changes_only_when_env_0_starts_a_new_game(script):
    """The board shows env 0's game: its label must not move while the other envs' games end."""
    run = script("""
        from tetriszmq.agents.afterstate_dqn import AfterstateDQN
        from tetriszmq.tetris.placement_env import PlacementTetris

        env = DummyVecEnv([lambda: PlacementTetris(max_pieces=24)] * 4)
        callback = streaming(StreamCallback(pub=PUB, ctl=CTL, board_fps=1000))
        AfterstateDQN(env=env, buffer_size=2_000, learning_starts=100, batch_size=32, exploration_steps=300,
                      seed=1).learn(1_600, callback=callback)
    """)
    assert run.finish() == 0, run.output()
    boards = run.of(Topic.BOARD)
    assert len(boards) > 50 and len(run.of(Topic.EPISODE)) >= 50
    changes = [(a, b) for a, b in zip(boards, boards[1:], strict=False) if a["episode"] != b["episode"]]
    assert changes, "env 0 played several games"
    for before, after in changes:
        assert after["episode"] > before["episode"] and after["step"] < before["step"], (before, after)


def test_an_envs_own_episode_numbers_go_along_with_its_episode_and_never_override_the_messages(script):
    """What `info["episode_stats"]` holds beyond reward, lines and pieces (a Tetris env's board stats) is
    streamed as it is, without the callback knowing it; the envelope and the callback's own fields stay."""
    run = script("""
        class Stats(gym.Wrapper):
            def reset(self, **kwargs):
                self.steps = 0
                return self.env.reset(**kwargs)

            def step(self, action):
                obs, reward, terminated, truncated, info = self.env.step(action)
                self.steps += 1
                if terminated or truncated:
                    info["episode_stats"] = {"reward": 1.0, "lines": 2, "pieces": self.steps, "holes": 0.5,
                                             "episode": -7, "seq": -7, "timesteps": -7, "name": "not a number"}
                return obs, reward, terminated, truncated, info

        env = DummyVecEnv([lambda: Stats(gym.make("CartPole-v1"))])
        PPO("MlpPolicy", env, **SMALL).learn(512, callback=streaming(StreamCallback(pub=PUB, ctl=CTL)))
    """)
    assert run.finish() == 0, run.output()
    episodes = run.of(Topic.EPISODE)
    assert [e["episode"] for e in episodes] == list(range(1, len(episodes) + 1))
    for episode in episodes:
        assert (episode["holes"], episode["lines"], episode["reward"]) == (0.5, 2, 1.0)
        assert episode["length"] > 0 and episode["timesteps"] > 0 and episode["seq"] > 0
        assert "name" not in episode and "pieces" not in episode


def test_on_training_end_twice_as_rl_zoo3_calls_it_is_harmless(script, tmp_path):
    run = script(f"""
        callback = streaming(StreamCallback(pub=PUB, ctl=CTL))
        model = PPO("MlpPolicy", "CartPole-v1", **SMALL)
        try:
            model.learn(256, callback=[callback])
        finally:
            callback.on_training_end()  # rl_zoo3's ExperimentManager.learn does this
        print("saved", model.save({str(tmp_path / "model")!r}) is None)
    """)
    assert run.finish() == 0, run.output()
    assert "saved True" in run.output()
    assert [s for s in run.statuses() if s[0] == "stopped"] == [("stopped", "training ended")]


def journal(run_dir: Path) -> list[dict]:
    return [orjson.loads(line) for line in (run_dir / "metrics.jsonl").read_bytes().splitlines()]


def test_learn_call_after_learn_call_each_callback_journals_runs_that_end(script, tmp_path):
    """Four sequences of learn() calls, one after another in one interpreter (one SB3 start-up), each with
    its own callback, ports and run directory. Read from the journals: a subscriber reconnecting to each new
    run misses its start.

    - several: one callback serves several learn() calls, each a run that ends;
    - raised: learn() raising, then a second learn() with the same callback on the same ports, at once;
    - later: the same, the second learn() after the broker ended the abandoned run by itself (a grace of
      ~2 s): it once found the callback still live and streamed nothing, without a word (a new user's trial);
    - bound: `bind` comes before the learn() it is for: afresh for a learn() that resets the timesteps,
      carried on for one that continues them.
    """
    several, raised, later, bound = (tmp_path / name for name in ("several", "raised", "later", "bound"))
    ports = [f"tcp://127.0.0.1:{free_port()}" for _ in range(6)]
    run = script(f"""
        import time
        PUB2, CTL2, PUB3, CTL3, PUB4, CTL4 = sys.argv[3:9]

        model = PPO("MlpPolicy", "CartPole-v1", **SMALL)
        callback = StreamCallback(pub=PUB, ctl=CTL, run_name="cartpole", run_dir={str(several)!r})
        model.learn(256, callback=callback)
        model.learn(256, callback=callback, reset_num_timesteps=False)
        model.learn(256, callback=callback)

        def raised_and_caught(pub, ctl, run_dir):  # a model and callback whose first learn() raised
            model = PPO("MlpPolicy", "CartPole-v1", **SMALL)
            callback = StreamCallback(pub=pub, ctl=ctl, run_dir=run_dir)
            try:
                model.learn(1024, callback=[callback, Fails(RuntimeError("boom"))])
            except RuntimeError:
                pass
            return model, callback

        model, callback = raised_and_caught(PUB2, CTL2, {str(raised)!r})
        model.learn(256, callback=callback)  # at once: the abandoned run is ended first
        print("again", model.num_timesteps)

        model, callback = raised_and_caught(PUB4, CTL4, {str(later)!r})
        deadline = time.monotonic() + 60
        while callback.broker.running and time.monotonic() < deadline:  # the broker publishes `error` and ends
            time.sleep(0.05)
        assert not callback.broker.running, "the broker did not end the abandoned run by itself"
        model.learn(256, callback=callback)

        model = PPO("MlpPolicy", "CartPole-v1", **SMALL)
        callback = StreamCallback(pub=PUB3, ctl=CTL3, run_dir={str(bound)!r})
        model.learn(256, callback=callback)
        callback.bind()
        model.learn(256, callback=callback)
        callback.bind()
        model.learn(256, callback=callback, reset_num_timesteps=False)
    """, args=tuple(ports))
    assert run.finish(300) == 0, run.output()

    stopped = [m for m in journal(several) if m["topic"] == "status" and m["state"] == "stopped"]
    assert [m["timesteps"] for m in stopped] == [256, 512, 256], "several"
    runs = [m["run"] for m in stopped]
    assert len(set(runs)) == 3 and all(r.startswith("cartpole-") for r in runs), f"several: {runs}"
    assert stopped[1]["episodes"] > stopped[0]["episodes"], "several: a continued learn() continues the counters"
    assert stopped[2]["episodes"] < stopped[1]["episodes"], "several: reset_num_timesteps starts them afresh"

    assert "again 256" in run.output()
    for case in (raised, later):
        ends = [(m["state"], m["reason"]) for m in journal(case) if m.get("state") in ("error", "stopped")]
        assert ends == [("error", ABANDONED), ("stopped", "training ended")], f"{case.name}: caught, unseen"
        assert len({m["run"] for m in journal(case)}) == 2, f"{case.name}: the second learn() is a run of its own"

    messages = journal(bound)
    runs = list(dict.fromkeys(m["run"] for m in messages))
    episodes = [[m["episode"] for m in messages if m["topic"] == "episode" and m["run"] == r] for r in runs]
    assert [e[0] for e in episodes] == [1, 1, episodes[1][-1] + 1], "bound: afresh, afresh, carried on"


def test_learn_raising_in_a_notebook_publishes_error_and_frees_the_ports(script):
    """IPython's shell (what a Jupyter kernel runs) catches the exception and lives on."""
    run = script("""
        import threading
        from IPython.core.interactiveshell import InteractiveShell

        shell = InteractiveShell.instance(user_ns=globals())
        shell.run_cell('''
        model = PPO("MlpPolicy", "CartPole-v1", **SMALL)
        model.learn(1024, callback=[streaming(StreamCallback(pub=PUB, ctl=CTL)), Fails(ValueError("the user's bug"))])
        ''')
        print("cell done", flush=True)
        threading.Event().wait()  # the kernel waits for the next cell
    """)
    errors = run.until(lambda t, m: t is Topic.STATUS and m["state"] == "error")
    assert errors[-1][1]["reason"] == "learn() raised ValueError: the user's bug"
    assert set(typing.get_type_hints(StatusFields)) <= set(errors[-1][1]), "the broker's status is whole"
    wait_for(lambda: bindable(run.pub) and bindable(run.ctl), timeout=10)
    wait_for(lambda: "cell done" in run.output(), timeout=30)  # the cell may end just after the broker did
    assert run.proc.poll() is None, "the kernel lives on"


def test_context_manager_reports_the_exception_at_once(script):
    run = script("""
        model = PPO("MlpPolicy", "CartPole-v1", **SMALL)
        try:
            with streaming(StreamCallback(pub=PUB, ctl=CTL)) as callback:
                model.learn(1024, callback=[callback, Fails(KeyError("missing"))])
        except KeyError:
            print("caught")
    """)
    assert run.finish() == 0, run.output()
    assert run.statuses()[-1] == ("error", "learn() raised KeyError: 'missing'")


def test_an_exception_caught_inside_the_with_block_still_ends_that_run_as_error(script):
    """The run is the learn() that raised, however the script goes on: the same end as without the block."""
    run = script("""
        model = PPO("MlpPolicy", "CartPole-v1", **SMALL)
        with streaming(StreamCallback(pub=PUB, ctl=CTL)) as callback:
            try:
                model.learn(1024, callback=[callback, Fails(KeyError("missing"))])
            except KeyError:
                print("caught")
    """)
    assert run.finish() == 0, run.output()
    assert run.statuses()[-1] == ("error", ABANDONED)


def test_a_script_that_dies_in_learn_publishes_error_with_the_exception(script):
    run = script("""
        model = PPO("MlpPolicy", "CartPole-v1", **SMALL)
        model.learn(1024, callback=[streaming(StreamCallback(pub=PUB, ctl=CTL)), Fails(ZeroDivisionError("no"))])
    """)
    assert run.finish() == 1
    assert "ZeroDivisionError: no" in run.output()
    assert run.statuses()[-1] == ("error", "learn() raised ZeroDivisionError: no")


def test_ctrl_c_in_learn_publishes_error_and_exits(script):
    """A terminal's Ctrl-C goes to the whole process group: the broker process too, which must outlive it to
    publish the run's end."""
    run = script("""
        PPO("MlpPolicy", "CartPole-v1", **SMALL).learn(10_000_000, callback=StreamCallback(pub=PUB, ctl=CTL))
    """)
    run.until(lambda t, m: t is Topic.EPISODE)
    os.killpg(run.proc.pid, signal.SIGINT)
    assert run.finish() != 0
    assert run.statuses()[-1] == ("error", "learn() raised KeyboardInterrupt")


def test_next_to_sb3s_own_callbacks_in_a_callback_list(script, tmp_path):
    run = script(f"""
        from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback, EvalCallback
        model = PPO("MlpPolicy", "CartPole-v1", **SMALL)
        callbacks = CallbackList([
            CheckpointCallback(save_freq=256, save_path={str(tmp_path / "ckpt")!r}),
            streaming(StreamCallback(pub=PUB, ctl=CTL)),
            EvalCallback(Monitor(gym.make("CartPole-v1")), eval_freq=256, n_eval_episodes=2),
        ])
        model.learn(512, callback=callbacks)
    """)
    assert run.finish() == 0, run.output()
    assert run.of(Topic.EPISODE)
    assert run.statuses()[-1] == ("stopped", "training ended")
    assert list((tmp_path / "ckpt").glob("*.zip"))
    assert "eval/mean_reward" in run.of(Topic.METRICS)[-1]["scalars"]


def test_run_dir_holds_a_run_like_the_trainers_and_save_works(script, tmp_path):
    run_dir = tmp_path / "my-run"
    run = script(f"""
        model = PPO("MlpPolicy", "CartPole-v1", **SMALL)
        model.learn(1_000_000, callback=StreamCallback(pub=PUB, ctl=CTL, run_name="pole", run_dir={str(run_dir)!r}))
    """)
    run.until(lambda t, m: t is Topic.EPISODE)
    assert request(run.ctl, "save")["state"] == "saving"
    run.until(lambda t, m: t is Topic.STATUS and m["reason"] == "saved latest.zip")
    request(run.ctl, "stop")
    assert run.finish() == 0, run.output()
    info = orjson.loads((run_dir / "run.json").read_bytes())
    assert info["run"].startswith("pole-") and info["algo"] == "PPO" and info["endpoints"]["pub"] == run.pub
    journaled = journal(run_dir)
    assert journaled[-1]["state"] == "stopped" and journaled[-1]["reason"] == "stop requested"
    assert {m["topic"] for m in journaled} == {"status", "metrics", "episode"}
    assert (run_dir / "checkpoints" / "latest.zip").exists()


def test_metrics_keep_their_cadence_through_a_long_update_and_while_paused(script):
    run = script("""
        # rollouts, each followed by an update of many minibatches: a second or so without an env step;
        # more of them than the test needs, so that its pause lands while training goes on
        model = PPO("MlpPolicy", "CartPole-v1", n_steps=256, batch_size=8, n_epochs=16, device="cpu")
        model.learn(256 * 100, callback=StreamCallback(pub=PUB, ctl=CTL, metrics_every=0.05))
    """)
    run.until(lambda t, m: t is Topic.METRICS and m["timesteps"] == 256)
    seen = run.until(lambda t, m: t is Topic.METRICS and m["timesteps"] > 256, timeout=300)
    in_update = [m for t, m in seen if t is Topic.METRICS and m["timesteps"] == 256]
    assert len(in_update) >= 3, "metrics go on while the training thread is busy in the update"
    assert request(run.ctl, "pause")["state"] == "paused"
    run.until(lambda t, m: t is Topic.STATUS and m["state"] == "paused")
    paused = run.until(lambda t, m: t is Topic.METRICS and m["sps"] == 0.0)
    assert paused and not any(t is Topic.STATUS for t, _ in paused)
    request(run.ctl, "resume")
    run.until(lambda t, m: t is Topic.STATUS and m["state"] == "running" and m["reason"] == "resumed")
    request(run.ctl, "stop")
    assert run.finish() == 0, run.output()
    assert run.statuses()[-1] == ("stopped", "stop requested")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pub": "5555"}, "an endpoint is SCHEME://ADDRESS"),
    ({"pub": "http://127.0.0.1:5555"}, "scheme 'http' cannot be bound"),
    ({"pub": "tcp://127.0.0.1:99999"}, "a port from 0 to 65535"),
    ({"pub": "tcp://127.0.0.1"}, "tcp needs HOST:PORT"),
    ({"pub": "tcp://127.0.0.1:6000", "ctl": "tcp://127.0.0.1:6000"}, "pub and ctl are both"),
])
def test_bad_endpoints_are_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StreamCallback(**kwargs)


@pytest.mark.slow  # two broker processes
def test_callbacks_on_any_free_port_take_a_free_control_port_too(capsys):
    """As the trainer's --ctl: a second callback beside the first (or beside a default trainer) binds, and
    each says where."""
    callbacks = [StreamCallback(pub="tcp://127.0.0.1:*") for _ in range(2)]
    try:
        for callback in callbacks:
            callback.bind()
        endpoints = [callback.state.endpoints for callback in callbacks]
        ports = {e[name].rsplit(":", 1)[1] for e in endpoints for name in ("pub", "ctl")}
        assert len(ports) == 4 and "5556" not in ports, endpoints
        assert all(request(e["ctl"], "status")["state"] == "starting" for e in endpoints)
        said = capsys.readouterr().err
        assert all(f"streaming on {e['pub']}, control on {e['ctl']}" in said for e in endpoints), said
    finally:
        for callback in callbacks:
            callback.close()


def test_a_network_address_without_curve_is_refused_unless_insecure(capsys):
    with pytest.raises(SecurityError, match="insecure=True"):
        StreamCallback(pub="tcp://0.0.0.0:5555")
    StreamCallback(pub="tcp://0.0.0.0:5555", insecure=True)
    assert "WARNING" in capsys.readouterr().err


def test_without_the_tetris_extra_the_game_commands_name_the_missing_extra(tmp_path):
    script = f"""
import sys
sys.modules["tetris_gymnasium"] = None  # as in an install without the [tetris] extra
from tetriszmq.cli import main
sys.exit(main(["train", "--run-dir", {str(tmp_path / "run")!r}]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    assert "pip install 'tetriszmq[tetris]'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_curve_secures_both_sockets_of_the_callback(script, tmp_path):
    make_keys(tmp_path / "keys")
    run = script(f"""
        from pathlib import Path
        from tetriszmq.stream.security import ServerCurve
        keys = Path({str(tmp_path / "keys")!r})
        curve = ServerCurve(keys / "trainer.key_secret", keys / "allowed")
        model = PPO("MlpPolicy", "CartPole-v1", **SMALL)
        model.learn(10_000_000, callback=StreamCallback(pub=PUB, ctl=CTL, curve=curve))
    """)
    client = ClientCurve(tmp_path / "keys" / "trainer.key", tmp_path / "keys" / "client.key_secret")

    def training() -> bool:
        try:
            return request(run.ctl, "status", curve=client, timeout=2, retries=0)["timesteps"] > 0
        except NoReply:
            return False

    wait_for(training, timeout=120)
    assert not run.messages and not run.sub.sock.poll(1000), "a subscriber without keys gets nothing"
    assert request(run.ctl, "stop", curve=client)["state"] == "stopping"
    assert run.finish() == 0, run.output()
