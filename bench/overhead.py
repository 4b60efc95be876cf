"""What does streaming cost training? Throughput of the same config and seed, per publishing set-up.

Variants, each a fresh model trained for the same number of steps (the same seed, so the same
work), interleaved round by round and rotated so that no variant always runs first; every figure
is a ratio to (a) from the same round. A last line isolates the callback's own per-step cost:

  a  no callback
  b  StreamCallback, nobody subscribed
  c1 StreamCallback, 1 subscriber process
  c10 StreamCallback, 10 subscriber processes
  d  StreamCallback with board frames uncapped (every step)
  e  the design this project replaces: a callback putting metrics and board dicts on a
     multiprocessing.Queue read by another process, at the same caps as ours (e) and on every step (e*)

Usage: python bench/overhead.py [--config configs/default.toml] [--steps N] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import zmq
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tetriszmq import agents, config as cfg  # noqa: E402
from tetriszmq.callback import StreamCallback  # noqa: E402
from tetriszmq.envs import make_vec_env  # noqa: E402


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def subscriber(endpoint: str, ready: mp.Event, stop: mp.Event) -> None:
    """A SUB process that reads everything, as a viewer would."""
    sock = zmq.Context().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    sock.poll(5000)  # the first heartbeat: connected and subscribed
    ready.set()
    while not stop.is_set():
        if sock.poll(100):
            sock.recv_multipart()
    sock.close(linger=0)


def queue_reader(queue: mp.Queue, ready: mp.Event) -> None:
    ready.set()
    while queue.get() is not None:
        pass


class QueueCallback(BaseCallback):
    """The replaced design: dicts on a multiprocessing.Queue, metrics every second, boards capped."""

    def __init__(self, queue: mp.Queue, board_fps: float) -> None:
        super().__init__()
        self.queue = queue
        self.board_period = 1.0 / board_fps
        self.next_board = self.next_metrics = 0.0

    def _on_step(self) -> bool:
        now = time.monotonic()
        if now >= self.next_board:
            self.next_board = now + self.board_period
            frame = self.training_env.env_method("board_frame", indices=0)[0]
            self.queue.put({"topic": "board", "t": time.time(), **frame})
        if now >= self.next_metrics:
            self.next_metrics = now + 1.0
            self.queue.put({"topic": "metrics", "t": time.time(), "timesteps": self.num_timesteps})
        return True


def run_once(config: cfg.Config, steps: int, make_callback: Callable[[], tuple[object, Callable[[], None]]]) -> float:
    """Train a fresh model for ``steps``; returns steps per second of ``learn`` alone."""
    env = make_vec_env(config.env, config.run.seed)
    model = agents.build_model(config.agent, env, config.run.seed)
    callback, cleanup = make_callback()
    start = time.perf_counter()
    model.learn(steps, callback=callback)
    elapsed = time.perf_counter() - start
    cleanup()
    env.close()
    return model.num_timesteps / elapsed


def stream(board_fps: float, subscribers: int) -> Callable[[], tuple[object, Callable[[], None]]]:
    def make() -> tuple[object, Callable[[], None]]:
        pub = free_endpoint()
        stop = mp.Event()
        readies = [mp.Event() for _ in range(subscribers)]
        procs = [mp.Process(target=subscriber, args=(pub, ready, stop), daemon=True) for ready in readies]
        callback = StreamCallback(pub=pub, ctl=free_endpoint(), board_fps=board_fps)
        callback.broker.start()  # bind before the clock starts; learn() then finds it running
        for proc in procs:
            proc.start()
        for ready in readies:  # every subscriber connected and idle before the clock starts
            ready.wait(120)

        def cleanup() -> None:
            stop.set()
            for proc in procs:
                proc.join(5)
        return callback, cleanup
    return make


def queue_design(board_fps: float) -> Callable[[], tuple[object, Callable[[], None]]]:
    def make() -> tuple[object, Callable[[], None]]:
        queue: mp.Queue = mp.Queue()
        ready = mp.Event()
        reader = mp.Process(target=queue_reader, args=(queue, ready), daemon=True)
        reader.start()
        ready.wait(120)

        def cleanup() -> None:
            queue.put(None)
            reader.join(10)
        return QueueCallback(queue, board_fps), cleanup
    return make


def no_callback() -> tuple[object, Callable[[], None]]:
    return None, lambda: None


class EmptyCallback(BaseCallback):
    def _on_step(self) -> bool:
        return True


def callback_cost(config: cfg.Config, calls: int) -> dict[str, float]:
    """Microseconds per ``on_step`` of an empty callback and of `StreamCallback` (no subscriber).

    The throughput ratios above carry a few percent of run-to-run noise; this isolates the
    callback's own per-step cost, board frames at the configured cap included.
    """
    env = make_vec_env(config.env, config.run.seed)
    model = agents.build_model(config.agent, env, config.run.seed)
    model.set_logger(configure(None, []))
    costs = {}
    for name, callback in (("empty callback", EmptyCallback()),
                           ("StreamCallback", StreamCallback(pub=free_endpoint(), ctl=free_endpoint(),
                                                             board_fps=config.publish.board_fps))):
        callback.init_callback(model)
        callback.on_training_start({}, {})
        callback.update_locals({"dones": np.zeros(env.num_envs, bool), "infos": [{}] * env.num_envs})
        start = time.perf_counter()
        for _ in range(calls):
            callback.on_step()
        costs[name] = (time.perf_counter() - start) / calls * 1e6
        callback.on_training_end()
    env.close()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=20_000, help="training steps per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 600, 1
    config = cfg.load(args.config, args.overrides)
    torch.set_num_threads(config.agent.torch_threads)
    fps = config.publish.board_fps
    variants = {
        "a  no callback": no_callback,
        "b  stream, no subscriber": stream(fps, 0),
        "c1 stream, 1 subscriber": stream(fps, 1),
        "c10 stream, 10 subscribers": stream(fps, 10),
        "d  stream, boards uncapped, 1 sub": stream(math.inf, 1),
        f"e  mp.Queue, boards at {fps:g}/s": queue_design(fps),
        "e* mp.Queue, board every step": queue_design(math.inf),
    }
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    run_once(config, min(args.steps, 500), no_callback)  # warm-up: imports, allocator, caches
    names = list(variants)
    for round_ in range(args.rounds):
        order = names[round_ % len(names):] + names[:round_ % len(names)]  # no variant always runs first
        for name in order:
            rates[name].append(run_once(config, args.steps, variants[name]))
        base = rates[names[0]][-1]
        for name in names:
            ratios[name].append(rates[name][-1] / base)
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{n.split()[0]} {r[-1]:.0f}/s" for n, r in rates.items()),
              flush=True)
    costs = callback_cost(config, 20_000 if args.quick else 300_000)
    step_us = 1e6 / statistics.median(rates["a  no callback"])
    print(f"\nper-step cost, {'; '.join(f'{n}: {c:.2f} us' for n, c in costs.items())}; "
          f"difference {costs['StreamCallback'] - costs['empty callback']:.2f} us "
          f"= {(costs['StreamCallback'] - costs['empty callback']) / step_us:.2%} of a {step_us:.0f} us training step")
    print(f"\nconfig {args.config.name}: {config.agent.algo} on {config.env.kind}, {args.steps} steps per run, "
          f"{args.rounds} interleaved rounds, board cap {fps:g}/s")
    print(f"{'variant':<36} {'steps/s (median)':>17} {'ratio to a (median)':>20} {'min ratio':>10}")
    for name in variants:
        print(f"{name:<36} {statistics.median(rates[name]):>17,.0f} {statistics.median(ratios[name]):>20.3f} "
              f"{min(ratios[name]):>10.3f}")


if __name__ == "__main__":
    mp.set_start_method("spawn")
    main()
