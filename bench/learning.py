"""How well does the default agent play after a fixed wall-clock budget of training on this CPU?

1. Environment speed alone: random legal placements per second, all features included.
2. Trains `configs/default.toml` with the real trainer (streaming on, nobody watching) for
   ``--minutes`` of wall-clock time; reports placements per second end to end.
3. Evaluates the final checkpoint on ``--games`` seeded games capped at ``--max-pieces`` pieces, next
   to the hand-tuned Dellacherie agent on the same seeds.

Usage: python bench/learning.py [--minutes 10] [--games 20] [--max-pieces 10000] [--seed 1] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import ROOT

from tetriszmq import agents
from tetriszmq import config as cfg
from tetriszmq.evaluate import ModelPolicy, evaluate
from tetriszmq.tetris.dellacherie import Dellacherie
from tetriszmq.tetris.placement_env import PlacementTetris
from tetriszmq.trainer import RunOptions, train


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


def train_for(config: cfg.Config, minutes: float, run_dir: Path) -> tuple[int, float]:
    """Train with the real trainer for ``minutes``; returns (timesteps, seconds)."""
    config.train.max_minutes = minutes
    config.train.max_timesteps = 10**9
    config.publish.pub = config.publish.ctl = "tcp://127.0.0.1:0"
    start = time.perf_counter()
    code = train(config, RunOptions(run_dir=run_dir, quiet=True))
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"training failed with exit code {code}")
    model = agents.load_model(config.agent, run_dir / "checkpoints" / "final.zip", env=None)
    return model.num_timesteps, elapsed


def row(name: str, result: dict) -> str:
    return (f"{name:<28} {result['mean']:>9,.1f} {result['median']:>9,.1f} {result['min']:>7,} {result['max']:>7,} "
            f"{result['capped']:>5}/{len(result['lines'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, as for `tetriszmq train`")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--games", type=int, default=20)
    parser.add_argument("--max-pieces", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a smoke run of well under a minute")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.games, args.max_pieces = 0.1, 2, 200
    config = cfg.load(args.config, args.overrides)

    speed = env_speed(2.0 if args.quick else 10.0)
    with tempfile.TemporaryDirectory(prefix="tetriszmq-learning-") as tmp:
        run_dir = Path(tmp) / "run"
        timesteps, seconds = train_for(config, args.minutes, run_dir)
        model = agents.load_model(config.agent, run_dir / "checkpoints" / "final.zip", env=None)
        learned = evaluate(ModelPolicy(model), args.games, args.max_pieces, args.seed)
    reference = evaluate(Dellacherie(), args.games, args.max_pieces, args.seed)

    print(f"\nconfig {args.config.name} {' '.join(args.overrides)}: {config.agent.algo} on {config.env.kind}, "
          f"{args.minutes:g} min of training")
    print(f"environment alone:  {speed:,.0f} placements/s (random legal placements, all features)")
    print(f"training, end to end: {timesteps / seconds:,.0f} placements/s ({timesteps:,} in {seconds:,.0f} s, "
          "streaming on, nobody subscribed)")
    print(f"\nlines per game, {args.games} games, seeds {args.seed}..{args.seed + args.games - 1}, "
          f"cap {args.max_pieces:,} pieces")
    print(f"{'agent':<28} {'mean':>9} {'median':>9} {'min':>7} {'max':>7} {'capped':>7}")
    print(row(f"afterstate-dqn, {args.minutes:g} min", learned))
    print(row("dellacherie (hand-tuned)", reference))
    print(f"\nper game, afterstate-dqn: {learned['lines']}")


if __name__ == "__main__":
    main()
