"""How well does the default agent play after a fixed wall-clock budget of training on this CPU?

1. Environment speed alone: random legal placements per second, all features included.
2. For each training seed (``--seeds``), trains the config with the real trainer (`tetriszmq train`
   as a subprocess: streaming on, nobody watching) for ``--minutes``; reports placements per second.
3. The same seed again as ``--minutes / 2`` of training, ``kill -9``, and ``--resume`` for the other
   half (the "resumed" arm): a resume that forgot its replay buffer would show here.
4. Evaluates each final checkpoint on ``--games`` seeded games capped at ``--max-pieces`` pieces (both
   cores: `evaluate`'s worker processes), next to Dellacherie and BCTS on the same seeds; and a
   learning curve: a quick evaluation of the periodic checkpoint that was newest at each minute
   (a ``step_*.zip`` file's mtime is when it was written). The replay rows of a final checkpoint
   show whether a resumed run kept its buffer (rows x n_envs ~ timesteps) or started it again.

Usage: python bench/learning.py [--minutes 10] [--seeds 1 2 3] [--games 20] [--max-pieces 10000]
                                [--no-resume-arm] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from harness import ROOT
from harness.machine import loadavg

from tetriszmq import agents
from tetriszmq import config as cfg
from tetriszmq.evaluate import ModelPolicy, default_workers, evaluate
from tetriszmq.stream.checkpoints import REPLAY_ATTR
from tetriszmq.tetris.bcts import Bcts
from tetriszmq.tetris.dellacherie import Dellacherie
from tetriszmq.tetris.placement_env import PlacementTetris


def env_speed(seconds: float, seed: int = 1) -> float:
    """Random legal placements per second of `PlacementTetris` alone (features included)."""
    env = PlacementTetris()
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    placements, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        obs, _, terminated, truncated, _ = env.step(int(rng.choice(np.flatnonzero(obs["mask"]))))
        placements += 1
        if terminated or truncated:
            obs, _ = env.reset()
    return placements / (time.perf_counter() - start)


@dataclass
class Arm:
    """One training run of a seed: straight, or cut by kill -9 and resumed."""

    name: str
    seed: int
    run_dir: Path
    seconds: float = 0.0  # training processes' wall-clock time, start to exit
    clock: list[tuple[float, float]] = field(default_factory=list)  # (process start, minutes trained before it)


def run_trainer(arm: Arm, args: argparse.Namespace, minutes: float, *, resume: bool = False,
                kill_after: float | None = None) -> None:
    """One `tetriszmq train` process; with ``kill_after`` (seconds) it is SIGKILLed then, else runs out its time.

    ``minutes`` is the process's own budget (`train.max_minutes`, counted from its start).
    """
    command = [sys.executable, "-m", "tetriszmq", "train", "--config", str(args.config), "--run-dir",
               str(arm.run_dir), "--quiet", "--pub", "tcp://127.0.0.1:0", "--ctl", "tcp://127.0.0.1:0",
               "--set", f"run.seed={arm.seed}", "--set", f"train.max_minutes={minutes}",
               "--set", "train.max_timesteps=1000000000", "--set", f"train.checkpoint_every={args.checkpoint_every}",
               *[f"--set={o}" for o in args.overrides], *(["--resume"] if resume else [])]
    start = time.time()
    arm.clock.append((start, arm.seconds / 60))
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if kill_after is None:
            _, err = proc.communicate(timeout=minutes * 60 + 600)
            if proc.returncode != 0:
                raise SystemExit(f"{arm.name} seed {arm.seed}: training failed ({proc.returncode}): {err[-2000:]}")
        else:  # killed once its time is up and it has a checkpoint to resume from (a slow start has none)
            latest = arm.run_dir / "checkpoints" / "latest.zip"
            while time.time() < start + kill_after or not latest.exists():
                if proc.poll() is not None:
                    raise SystemExit(f"{arm.name} seed {arm.seed}: the trainer ended before it could be killed")
                time.sleep(0.2)
            proc.kill()
            proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    arm.seconds += time.time() - start


def train_arm(arm: Arm, args: argparse.Namespace) -> None:
    if arm.name == "straight":
        run_trainer(arm, args, args.minutes)
    else:
        run_trainer(arm, args, args.minutes, kill_after=args.minutes * 30)
        run_trainer(arm, args, args.minutes / 2, resume=True)


def minute_checkpoints(arm: Arm, every: float) -> list[tuple[float, Path | None]]:
    """For each ``every`` minutes of training: the newest periodic checkpoint written by then."""
    files = sorted((path.stat().st_mtime, path) for path in (arm.run_dir / "checkpoints").glob("step_*.zip"))
    points, total = [], arm.seconds / 60

    def trained_at(wall: float) -> float:
        start, before = max((c for c in arm.clock if c[0] <= wall), default=arm.clock[0])
        return before + (wall - start) / 60

    for step in range(1, int(total / every + 1e-9) + 1):
        minute = round(step * every, 6)  # 0.15, not the 0.15000000000000002 of a running sum
        done = [path for wall, path in files if trained_at(wall) <= minute]
        points.append((minute, done[-1] if done else None))
    return points


def curve_table(curves: dict[tuple[str, int], list[tuple[float, float | None]]]) -> list[str]:
    """The learning curves side by side, a row per point, labelled with its minute as precise as it was taken
    (``--quick`` takes one every 0.05 minutes)."""
    columns = list(curves)
    lines = [f"{'minute':>7} " + " ".join(f"{f'{name} {seed}':>12}" for name, seed in columns)]
    for i in range(max(len(curve) for curve in curves.values())):
        means = [curves[c][i][1] if i < len(curves[c]) else None for c in columns]
        minute = next(curves[c][i][0] for c in columns if i < len(curves[c]))
        lines.append(f"{minute:>7g} " + " ".join(f"{'-' if m is None else f'{m:,.1f}':>12}" for m in means))
    return lines


def row(name: str, result: dict) -> str:
    return (f"{name:<34} {result['mean']:>9,.1f} {result['median']:>9,.1f} {result['min']:>7,} {result['max']:>7,} "
            f"{result['capped']:>5}/{len(result['lines'])}")


def load_policy(config: cfg.Config, path: Path) -> ModelPolicy:
    return ModelPolicy(agents.load_model(config.agent, path, env=None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, as for `tetriszmq train`")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="training seeds")
    parser.add_argument("--games", type=int, default=20)
    parser.add_argument("--max-pieces", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1, help="evaluation games are seeded seed .. seed + games - 1")
    parser.add_argument("--curve-games", type=int, default=5, help="games of each learning-curve point")
    parser.add_argument("--curve-pieces", type=int, default=2_000, help="piece cap of each learning-curve game")
    parser.add_argument("--checkpoint-every", type=int, default=25_000, help="timesteps between periodic checkpoints")
    parser.add_argument("--no-resume-arm", action="store_true", help="skip the kill -9 and resume arm")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about half a minute")
    args = parser.parse_args()
    curve_every = 1.0
    if args.quick:  # 6 s per arm still writes periodic checkpoints, a kill after the first, and several curve points
        args.minutes, args.seeds, args.games, args.max_pieces = 0.1, args.seeds[:1], 2, 200
        args.curve_games, args.curve_pieces, args.checkpoint_every, curve_every = 1, 100, 200, 0.05
    config = cfg.load(args.config, args.overrides)
    workers = default_workers(args.games, args.max_pieces)

    speed = env_speed(0.5 if args.quick else 10.0)
    arm_names = ["straight"] if args.no_resume_arm else ["straight", "resumed"]
    with tempfile.TemporaryDirectory(prefix="tetriszmq-learning-") as tmp:
        arms = [Arm(name, seed, Path(tmp) / f"{name}-{seed}") for seed in args.seeds for name in arm_names]
        for arm in arms:
            train_arm(arm, args)
        results, curves = {}, {}
        for arm in arms:
            final = arm.run_dir / "checkpoints" / "final.zip"
            model_policy = load_policy(config, final)
            replay = getattr(model_policy.model, REPLAY_ATTR, {}).get("rows", 0)
            results[arm.name, arm.seed] = (model_policy.model.num_timesteps, replay,
                                           evaluate(model_policy, args.games, args.max_pieces, args.seed,
                                                    workers=workers))
            curves[arm.name, arm.seed] = [
                (minute, None if path is None else evaluate(load_policy(config, path), args.curve_games,
                                                            args.curve_pieces, args.seed)["mean"])
                for minute, path in minute_checkpoints(arm, curve_every)]
    references = {name: evaluate(agent(), args.games, args.max_pieces, args.seed, workers=workers)
                  for name, agent in (("dellacherie (hand-tuned)", Dellacherie), ("bcts (Thiery-Scherrer)", Bcts))}
    report(args, config, speed, arms, results, curves, references)


def report(args: argparse.Namespace, config: cfg.Config, speed: float, arms: list[Arm], results: dict, curves: dict,
           references: dict) -> None:
    print(f"\nconfig {args.config.name} {' '.join(args.overrides)}: {config.agent.algo} on {config.env.kind}, "
          f"{args.minutes:g} min of training per arm, seeds {args.seeds}; load average {loadavg()}")
    print(f"environment alone:  {speed:,.0f} placements/s (random legal placements, all features)")
    print(f"\n{'arm':<10} {'seed':>4} {'timesteps':>11} {'replay rows':>12} {'placements/s':>13}")
    for arm in arms:
        timesteps, replay, _ = results[arm.name, arm.seed]
        print(f"{arm.name:<10} {arm.seed:>4} {timesteps:>11,} {replay:>12,} {timesteps / arm.seconds:>13,.0f}")

    print(f"\nlearning curve: mean lines of {args.curve_games} games capped at {args.curve_pieces:,} pieces, "
          "by the newest periodic checkpoint at each minute of training")
    for line in curve_table(curves):
        print(line)

    print(f"\nlines per game, {args.games} games, seeds {args.seed}..{args.seed + args.games - 1}, "
          f"cap {args.max_pieces:,} pieces")
    print(f"{'agent':<34} {'mean':>9} {'median':>9} {'min':>7} {'max':>7} {'capped':>7}")
    for arm in arms:
        print(row(f"{config.agent.algo} {arm.name}, seed {arm.seed}", results[arm.name, arm.seed][2]))
    for name, result in references.items():
        print(row(name, result))
    for name in dict.fromkeys(arm.name for arm in arms):
        means = [results[name, seed][2]["mean"] for seed in args.seeds]
        print(f"\n{name}: mean over seeds {np.mean(means):,.1f}, spread (max - min) {max(means) - min(means):,.1f}, "
              f"max / min {max(means) / max(min(means), 1e-9):.2f}")
    for arm in arms:
        print(f"per game, {arm.name} seed {arm.seed}: {results[arm.name, arm.seed][2]['lines']}")


if __name__ == "__main__":
    main()
