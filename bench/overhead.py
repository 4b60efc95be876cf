"""What does streaming cost training? Throughput of the same config and seed, per publishing set-up.

Variants, each a fresh model trained for the same number of steps (the same seed, so the same
work), interleaved round by round and rotated so that no variant always runs first. Two kinds of
figure per variant:

- wall ratio: steps per second against (a) of the same round. On a shared 2-core VM these drift by
  several percent between runs, more than the effect to be measured;
- cost booked inside the run (`CostAccount`): the training thread's time in the callback, the CPU
  time of the process's other Python threads (the broker's listener, mp.Queue's feeder), of libzmq's
  I/O threads and of the broker process, as shares of the run's wall time. The bound is the ratio
  to (a) if the callback's time and the other Python threads' (they hold the GIL) were all lost to
  training; libzmq's threads run without the GIL and the broker process on its own, on the second
  core. It moves far less with the machine's load than wall-clock rates do.

A last line isolates the callback's own per-step cost.

  a  no callback
  b  StreamCallback, nobody subscribed
  c1 StreamCallback, 1 subscriber process
  c10 StreamCallback, 10 subscriber processes
  d  StreamCallback with board frames uncapped (every step)
  t  what `tetriszmq train` runs on a placement env: StreamCallback plus the placement callbacks
     (episode records, board stats, candidates in board frames), 1 subscriber
  e  the design this project replaces: a callback putting metrics and board dicts on a
     multiprocessing.Queue read by another process, at the same caps as ours (e) and on every step (e*)

Usage: python bench/overhead.py [--config configs/default.toml] [--steps N] [--rounds R] [--variants a,b,c1,t] [--quick]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zmq
from harness import ROOT
from harness.processes import free_endpoint
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from tetriszmq import agents
from tetriszmq import config as cfg
from tetriszmq.recorder import placement_callbacks
from tetriszmq.stream.callback import StreamCallback
from tetriszmq.tetris.envs import make_vec_env

Variant = Callable[[], tuple[list[BaseCallback], Callable[[], None]]]  # makes a run's callbacks and their cleanup


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


def other_threads_cpu() -> dict[tuple[int, bool], float]:
    """CPU seconds so far of every thread of this process but the calling one (Linux schedstat, ns).

    Keyed by (thread id, whether it is one of libzmq's own threads): those run C++ without the
    GIL, so on a second core they cost training nothing; Python threads (the broker's listener,
    mp.Queue's feeder) hold the GIL while they run.
    """
    me = threading.get_native_id()
    seconds = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            if int(task.name) != me:
                libzmq = (task / "comm").read_text().startswith("ZMQbg/")
                seconds[int(task.name), libzmq] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended between listing and reading
    return seconds


def process_cpu(pid: int | None) -> float:
    """CPU seconds so far of all threads of process ``pid`` (the broker's; 0 for none or gone)."""
    seconds = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*") if pid is not None else ():
        try:
            seconds += int((task / "schedstat").read_text().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):
            pass
    return seconds


def broker_pid(callbacks: list[BaseCallback]) -> int | None:
    return next((c.broker.pid for c in callbacks if isinstance(c, StreamCallback) and c.broker is not None), None)


class CostAccount(CallbackList):
    """Wraps the callback under test and books, inside the real run, what publishing costs.

    ``in_callback``: seconds the training thread spent in the callback's ``on_step``;
    ``gil_cpu``, ``zmq_cpu`` and ``broker_cpu``: CPU seconds of the process's other Python threads
    (the broker's listener, mp.Queue's feeder), of libzmq's I/O threads and of the broker process
    while training ran, read before the callback's own ``on_training_end`` stops them; ``preempted``: the
    training thread's involuntary context switches (another thread or process took its CPU: where a
    woken broker runs when the other core is busy, see docs/PERFORMANCE.md). Training can lose at most the callback's
    time plus the Python threads' (they take the GIL from it); unlike the wall-clock ratios,
    these do not move with the machine's load.
    """

    def __init__(self, callbacks: list[BaseCallback]) -> None:
        super().__init__(callbacks)  # one list, as the trainer's: a nested CallbackList costs ~0.3 us a step
        self.in_callback = self.gil_cpu = self.zmq_cpu = self.broker_cpu = 0.0
        self.preempted = 0
        self._cpu_at_start: dict[tuple[int, bool], float] = {}
        self._broker = broker_pid(callbacks)

    def _on_training_start(self) -> None:
        super()._on_training_start()
        self._cpu_at_start = other_threads_cpu()
        self.broker_cpu = -process_cpu(self._broker)
        self.preempted = -resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw

    def _on_step(self) -> bool:
        start = time.perf_counter()
        go_on = super()._on_step()
        self.in_callback += time.perf_counter() - start
        return go_on

    def _on_training_end(self) -> None:
        self.preempted += resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
        self.broker_cpu += process_cpu(self._broker)
        for key, seconds in other_threads_cpu().items():
            used = seconds - self._cpu_at_start.get(key, 0.0)
            if key[1]:
                self.zmq_cpu += used
            else:
                self.gil_cpu += used
        super()._on_training_end()


@dataclass
class Run:
    rate: float  # training steps per second, wall clock
    in_callback: float  # share of learn()'s wall time spent in the callback
    gil_cpu: float  # other Python threads' CPU time, as a share of learn()'s wall time
    zmq_cpu: float  # libzmq's I/O threads' CPU time, likewise
    broker_cpu: float  # the broker process's CPU time, likewise
    preempted: float  # the training thread's involuntary context switches per second

    @property
    def cost(self) -> float:
        """What training can lose: its own time in the callback and the time others held the GIL."""
        return self.in_callback + self.gil_cpu


def run_once(config: cfg.Config, steps: int, make_callback: Variant) -> Run:
    """Train a fresh model for ``steps``, timing ``learn`` alone and booking the callback's costs."""
    env = make_vec_env(config.env, config.run.seed)
    model = agents.build_model(config.agent, env, config.run.seed)
    callbacks, cleanup = make_callback()
    account = CostAccount(callbacks)
    start = time.perf_counter()
    model.learn(steps, callback=account)
    elapsed = time.perf_counter() - start
    cleanup()
    env.close()
    return Run(model.num_timesteps / elapsed, account.in_callback / elapsed, account.gil_cpu / elapsed,
               account.zmq_cpu / elapsed, account.broker_cpu / elapsed, account.preempted / elapsed)


def stream(board_fps: float, subscribers: int,
           placement: bool = False) -> Variant:
    """StreamCallback with ``subscribers`` reading it; with ``placement``, next to the trainer's placement
    callbacks (records in a temporary folder, board stats, candidates)."""
    def make() -> tuple[list[BaseCallback], Callable[[], None]]:
        pub = free_endpoint()
        stop = mp.Event()
        readies = [mp.Event() for _ in range(subscribers)]
        procs = [mp.Process(target=subscriber, args=(pub, ready, stop), daemon=True) for ready in readies]
        callback = StreamCallback(pub=pub, ctl=free_endpoint(), board_fps=board_fps)
        callback.bind()  # bind before the clock starts; learn() then uses these sockets
        for proc in procs:
            proc.start()
        for ready in readies:  # every subscriber connected and idle before the clock starts
            ready.wait(120)
        records = tempfile.TemporaryDirectory(prefix="overhead-records-")
        callbacks = [callback, *placement_callbacks(Path(records.name), 0)] if placement else [callback]

        def cleanup() -> None:
            stop.set()
            for proc in procs:
                proc.join(5)
            records.cleanup()
        return callbacks, cleanup
    return make


def queue_design(board_fps: float) -> Variant:
    def make() -> tuple[list[BaseCallback], Callable[[], None]]:
        queue: mp.Queue = mp.Queue()
        ready = mp.Event()
        reader = mp.Process(target=queue_reader, args=(queue, ready), daemon=True)
        reader.start()
        ready.wait(120)

        def cleanup() -> None:
            queue.put(None)
            reader.join(10)
        return [QueueCallback(queue, board_fps)], cleanup
    return make


def no_callback() -> tuple[list[BaseCallback], Callable[[], None]]:
    return [], lambda: None


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


def chosen(variants: dict[str, Variant], keys: list[str]) -> dict[str, Variant]:
    """The variants named by their keys (``c1``, ``e*``), with (a) first: the others' ratios are to it."""
    known = {name.split()[0]: name for name in variants}
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise SystemExit(f"unknown variants {', '.join(unknown)}; known: {', '.join(known)}")
    return {name: make for name, make in variants.items() if name.split()[0] in {"a", *keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=20_000, help="training steps per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default="", help="comma-separated keys (b,c1,t...): only these, and (a)")
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
        **({"t  trainer's callbacks, 1 sub": stream(fps, 1, placement=True)} if config.env.kind == "placement" else {}),
        f"e  mp.Queue, boards at {fps:g}/s": queue_design(fps),
        "e* mp.Queue, board every step": queue_design(math.inf),
    }
    if args.variants:
        variants = chosen(variants, args.variants.split(","))
    runs: dict[str, list[Run]] = {name: [] for name in variants}
    run_once(config, min(args.steps, 500), no_callback)  # warm-up: imports, allocator, caches
    names = list(variants)
    for round_ in range(args.rounds):
        order = names[round_ % len(names):] + names[:round_ % len(names)]  # no variant always runs first
        for name in order:
            runs[name].append(run_once(config, args.steps, variants[name]))
        print(f"round {round_ + 1}/{args.rounds}: "
              + ", ".join(f"{n.split()[0]} {r[-1].rate:.0f}/s" for n, r in runs.items()), flush=True)
    costs = callback_cost(config, 20_000 if args.quick else 300_000)
    base = runs[names[0]]
    step_us = 1e6 / statistics.median(r.rate for r in base)
    print(f"\nper-step cost, {'; '.join(f'{n}: {c:.2f} us' for n, c in costs.items())}; "
          f"difference {costs['StreamCallback'] - costs['empty callback']:.2f} us "
          f"= {(costs['StreamCallback'] - costs['empty callback']) / step_us:.2%} of a {step_us:.0f} us training step")
    print(f"\nconfig {args.config.name}: {config.agent.algo} on {config.env.kind}, {args.steps} steps per run, "
          f"{args.rounds} interleaved rounds, board cap {fps:g}/s; medians over rounds")
    print("wall ratio: steps/s against (a) in the same round. Booked inside each run, as shares of its wall time:")
    print("the training thread's time in the callback, other Python threads' CPU (they hold the GIL), libzmq's")
    print("I/O threads' CPU (C++, no GIL: another core's), the broker process's CPU (another core's, if any);")
    print("bound: the ratio if callback and GIL time beyond (a)'s were lost")
    print("preempted/s: the training thread's involuntary context switches a second; about 30 more than (a)'s when "
          "each hand-off's broker takes training's CPU (the other core busy)")
    print(f"{'variant':<36} {'steps/s':>8} {'wall ratio':>11} {'(min)':>7} {'in callback':>12} "
          f"{'GIL threads':>12} {'zmq I/O':>8} {'broker proc':>12} {'bound':>7} {'preempted/s':>12}")
    base_cost = statistics.median(r.cost for r in base)
    for name in variants:
        rows = runs[name]
        wall = [r.rate / b.rate for r, b in zip(rows, base, strict=True)]
        cost = statistics.median(r.cost for r in rows) - base_cost
        print(f"{name:<36} {statistics.median(r.rate for r in rows):>8,.0f} {statistics.median(wall):>11.3f} "
              f"{min(wall):>7.3f} {statistics.median(r.in_callback for r in rows):>12.2%} "
              f"{statistics.median(r.gil_cpu for r in rows):>12.2%} {statistics.median(r.zmq_cpu for r in rows):>8.2%} "
              f"{statistics.median(r.broker_cpu for r in rows):>12.2%} "
              f"{1 / (1 + max(cost, 0.0)):>7.3f} {statistics.median(r.preempted for r in rows):>12.0f}")


if __name__ == "__main__":
    # Children make their own ZeroMQ contexts, so no plain fork. A fork server imports this script (torch, SB3) once
    # and forks the 14 subscriber and queue-reader processes from it; spawn would import it again in each.
    mp.set_start_method("forkserver")
    main()
