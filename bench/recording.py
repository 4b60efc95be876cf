"""What do episode records, board stats and candidates cost a placement run?

Prints, on the config's env and agent (default: configs/default.toml):

- microseconds per call of the parts that run on every step: the env's record keeping
  (an action byte, the board stats of the board left) inside ``PlacementTetris.step``, and
  ``on_step`` of the trainer's placement callbacks (`tetriszmq.recorder`) when no episode ends;
- the cost of one episode's end: staging a record, and one flush of the last 20 records: the
  training thread's time (handing them to the writer thread) and the time until they are on disk
  (atomic write + fsync, in the writer thread);
- a board frame with and without candidates (the agent's values of the current piece), and
  its size: at ``publish.board_fps`` frames a second this is the share of training time they take;
- training throughput, interleaved rounds, StreamCallback with one subscriber alone (a) and
  with the placement callbacks, candidates included (b): the ratio b / a.

Usage: python bench/recording.py [--config configs/default.toml] [--steps N] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
from stable_baselines3.common.callbacks import CallbackList

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import stream  # noqa: E402
from tetriszmq import agents  # noqa: E402
from tetriszmq import config as cfg  # noqa: E402
from tetriszmq.recorder import EpisodeRecorder, model_scorer, placement_callbacks  # noqa: E402
from tetriszmq.tetris.envs import make_vec_env  # noqa: E402
from tetriszmq.tetris.placement_env import PlacementTetris  # noqa: E402


def per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def env_parts(config: cfg.Config) -> None:
    env = PlacementTetris(features=config.env.features or None)
    env.reset(seed=1)
    env.step(int(np.flatnonzero(env._obs["mask"])[0]))
    # board stats cost no call of their own: a lock reads them from its afterstate's features
    print(f"env record keeping per step: action byte {per_call(lambda: env._actions.append(3), 100_000):.2f} us")
    env.reset(seed=1)
    step = per_call(lambda: env.step(int(np.flatnonzero(env._obs["mask"])[0])) if env._pieces < 150
                    else env.reset(seed=1), 3_000)
    print(f"env step (first legal placement, all included): {step:.0f} us")


def callback_parts(config: cfg.Config, model, steps: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        callbacks = CallbackList(placement_callbacks(Path(folder), 0))
        callbacks.init_callback(model)
        callbacks.on_training_start({}, {})
        callbacks.update_locals({"dones": np.zeros(model.n_envs, bool), "infos": [{}] * model.n_envs})
        quiet = per_call(callbacks.on_step, steps)
        env = PlacementTetris(features=config.env.features or None, max_pieces=2000)
        obs, _ = env.reset(seed=1)
        while True:
            obs, _, terminated, truncated, info = env.step(int(np.flatnonzero(obs["mask"])[0]))
            if terminated or truncated:
                break
        recorder: EpisodeRecorder = callbacks.callbacks[0].recorder
        done = {"dones": np.ones(1, bool), "infos": [info]}
        callbacks.update_locals(done)
        ended = per_call(lambda: recorder._episodes_ended(done["dones"], done["infos"]), 1_000)
        training, written = flushes(recorder, 50)
        callbacks.on_training_end()
    print(f"placement callbacks on_step, no episode ending: {quiet:.2f} us; an episode ending: {ended:.1f} us")
    print(f"a flush of {recorder.keep} records ({len(info['episode_record'].actions)} placements each), at most "
          f"once per {recorder.flush_every:g} s: {training * 1000:.3f} ms of the training thread, "
          f"{written * 1000:.1f} ms until written and fsynced")


def flushes(recorder: EpisodeRecorder, count: int) -> tuple[float, float]:
    """Mean seconds per flush of every recent record: in the training thread, and until on disk."""
    training = written = 0.0
    for _ in range(count):
        recorder._files.clear()
        start = time.perf_counter()
        recorder.flush()
        handed = time.perf_counter()
        recorder._writer._jobs.join()
        training, written = training + handed - start, written + time.perf_counter() - start
    return training / count, written / count


def frame_parts(config: cfg.Config, model) -> None:
    env = PlacementTetris(features=config.env.features or None)
    env.reset(seed=1)
    plain = per_call(env.board_frame, 2_000)
    env.set_scorer(model_scorer(model))
    with_candidates = per_call(env.board_frame, 2_000)
    size = len(orjson.dumps({**env.board_frame(chosen=int(env._piece.actions[0])), "episode": 1}))
    fps = config.publish.board_fps
    print(f"board frame: {plain:.0f} us plain, {with_candidates:.0f} us with 5 candidates ({size} bytes JSON); "
          f"at {fps:g} frames/s the candidates take {(with_candidates - plain) * fps / 1e4:.2f}% of training time")


def throughput(config: cfg.Config, steps: int, rounds: int) -> None:
    rates: dict[str, list[float]] = {"a stream": [], "b stream + placement callbacks": []}
    for r in range(rounds):
        for name in sorted(rates, reverse=bool(r % 2)):
            env = make_vec_env(config.env, config.run.seed)
            model = agents.build_model(config.agent, env, config.run.seed)
            callbacks, cleanup = stream(config.publish.board_fps, 1)()
            with tempfile.TemporaryDirectory() as folder:
                extra = placement_callbacks(Path(folder), 0) if name.startswith("b") else []
                start = time.perf_counter()
                model.learn(steps, callback=CallbackList([*callbacks, *extra]))
                rates[name].append(model.num_timesteps / (time.perf_counter() - start))
            cleanup()
            env.close()
    a, b = (statistics.median(v) for v in rates.values())
    print(f"training, {steps} steps x {rounds} rounds, median steps/s: a {a:.0f}, b {b:.0f}; ratio b/a {b / a:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.toml")
    parser.add_argument("--steps", type=int, default=4_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a few hundred steps, one round (a smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 300, 1
    config = cfg.load(args.config, ["agent.params.buffer_size=100000"])
    model = agents.build_model(config.agent, make_vec_env(config.env, config.run.seed), config.run.seed)
    env_parts(config)
    callback_parts(config, model, 1_000 if args.quick else 100_000)
    frame_parts(config, model)
    throughput(config, args.steps, args.rounds)


if __name__ == "__main__":
    main()
