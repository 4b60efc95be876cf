"""Training placements per second of the default config, and what each way of using the CPUs buys.

Each variant trains a fresh default-config model (SB3's ``learn``, no stream callback) in its own
process: ``--warmup`` placements, then ``--placements`` measured. Variants run in rotation,
``--rounds`` times; the table gives medians. Columns:

- ``wall/s``: placements per second of wall-clock time, what a run gets; it falls with the load.
- ``per CPU s``: placements per second of the process's CPU time (all its threads).
- ``main us``: CPU microseconds of the main thread per placement: with a learner thread, the
  other core's share is not in it, so ``1e6 / main us`` is the rate the main thread would allow
  on an idle machine (an upper bound: it leaves out waits for the GIL).
- ``load``: the load average when the variant's last round ended (2 CPUs: above 2, processes queue).

Usage: python bench/training_speed.py [--rounds 3] [--placements 8000] [--warmup 3000]
                                      [--variants NAME ...] [--root CHECKOUT] [--quick]

``--root``: measure another checkout's code (say, main before a change) with the same script;
its variants cannot set what that code does not have (``learner_thread``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from harness import ROOT
from harness.machine import loadavg

# name -> (config overrides, needs `learner_thread`)
VARIANTS: dict[str, tuple[list[str], bool]] = {
    "1 env": (["env.n_envs=1", 'agent.params.train_freq=[128, "step"]'], False),
    "1 env + learner thread": (["env.n_envs=1", 'agent.params.train_freq=[128, "step"]'], True),
    "4 envs": (["env.n_envs=4", 'agent.params.train_freq=[32, "step"]'], False),
    "4 envs + learner thread": (["env.n_envs=4", 'agent.params.train_freq=[32, "step"]'], True),
    "4 envs, torch 2 threads": (["env.n_envs=4", 'agent.params.train_freq=[32, "step"]', "agent.torch_threads=2"],
                                False),
}


def child(root: str, overrides: list[str], warmup: int, placements: int) -> None:
    """Train and print one JSON line: wall seconds, process CPU seconds, main thread CPU seconds."""
    sys.path.insert(0, root)
    import torch

    from tetriszmq import agents
    from tetriszmq import config as cfg
    from tetriszmq.tetris.envs import make_vec_env

    config = cfg.load(None, overrides)
    torch.set_num_threads(config.agent.torch_threads)
    model = agents.build_model(config.agent, make_vec_env(config.env, config.run.seed), config.run.seed)
    model.learn(warmup)
    wall, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
    model.learn(placements, reset_num_timesteps=False)
    print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                      "main": time.thread_time() - main, "placements": placements}))


def run_variant(root: str, overrides: list[str], warmup: int, placements: int) -> dict[str, float]:
    args = [sys.executable, __file__, "--child", root, str(warmup), str(placements), *overrides]
    out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        root, warmup, placements, *overrides = sys.argv[2:]
        child(root, overrides, int(warmup), int(placements))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--placements", type=int, default=8000)
    parser.add_argument("--warmup", type=int, default=3000)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--root", default=str(ROOT), help="the checkout whose code is measured")
    parser.add_argument("--quick", action="store_true", help="one short round of two variants")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.placements, args.warmup, args.variants = 1, 600, 1100, ["1 env", "4 envs + learner thread"]
    other = os.path.realpath(args.root) != os.path.realpath(ROOT)
    chosen = {name: VARIANTS[name] for name in args.variants if not (other and VARIANTS[name][1])}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
    loads: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, (overrides, thread) in chosen.items():
            extra = [] if other else [f"agent.params.learner_thread={str(thread).lower()}"]
            runs[name].append(run_variant(args.root, overrides + extra, args.warmup, args.placements))
            loads[name] = loadavg()
    print(f"code: {args.root}; {args.rounds} rounds of {args.placements:,} placements after {args.warmup:,}")
    print(f"{'variant':<26} {'wall/s':>8} {'per CPU s':>10} {'main us':>8}  load")
    for name, results in runs.items():
        wall = statistics.median(r["placements"] / r["wall"] for r in results)
        cpu = statistics.median(r["placements"] / r["cpu"] for r in results)
        main_us = statistics.median(1e6 * r["main"] / r["placements"] for r in results)
        print(f"{name:<26} {wall:>8,.0f} {cpu:>10,.0f} {main_us:>8,.0f}  {loads[name]}")


if __name__ == "__main__":
    main()
