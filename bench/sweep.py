"""Does a small Optuna sweep beat the default config at the same budget?

1. Runs `tetriszmq sweep` of ``--trials`` trials, ``--jobs`` at a time, over the space file
   (default configs/sweep.toml: learning rate, gamma, train_freq, target update interval; 3 minutes
   each), on a file journal in a temporary folder; prints its report (the trials table).
2. Trains the default config alone with the same budget (the space file's ``[set]`` values) and
   evaluates it like a trial (`tetriszmq eval`, the space file's games, cap and seed).
3. Prints the best trial's eval next to the default's. The trials shared the CPU ``--jobs`` ways,
   the default run had it alone: a time budget favours the default.

Usage: python bench/sweep.py [--trials 8] [--jobs 2] [--space configs/sweep.toml] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
from harness import ROOT

from tetriszmq.sweep import space as space_file

QUICK_SPACE = """
[set]
"train.max_timesteps" = 300

[space]
"agent.params.learning_rate" = { type = "float", low = 1e-4, high = 1e-2, log = true }
"agent.params.gamma" = { type = "float", low = 0.8, high = 0.99 }

[objective]
games = 2
max_pieces = 50

[pruner]
report_every = 100
"""


def tetriszmq(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "tetriszmq", *args], cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"tetriszmq {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def default_eval(config: Path, space: space_file.Space, run_dir: Path) -> float:
    """Train ``config`` with the sweep's fixed budget, then score it as a trial is scored."""
    sets = [arg for override in space.overrides({}) for arg in ("--set", override)]
    tetriszmq("train", "--config", str(config), *sets, "--run-dir", str(run_dir), "--quiet",
              "--pub", "tcp://127.0.0.1:0", "--ctl", "tcp://127.0.0.1:0")
    goal = space.objective
    done = tetriszmq("eval", "--checkpoint", str(run_dir / "checkpoints" / "final"), "--games", str(goal.games),
                     "--max-pieces", str(goal.max_pieces), "--seed", str(goal.seed), "--json")
    return orjson.loads(done.stdout)["mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.toml")
    parser.add_argument("--space", type=Path, default=ROOT / "configs" / "sweep.toml")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 tiny trials and a tiny default run: under a minute")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tetriszmq-sweep-") as tmp:
        if args.quick:
            args.config, args.space, args.trials = ROOT / "tests" / "tiny_sweep.toml", Path(tmp) / "space.toml", 2
            args.space.write_text(QUICK_SPACE)
        space = space_file.load(args.space)
        runs = Path(tmp) / "runs"
        report = tetriszmq("sweep", "--config", str(args.config), "--space", str(args.space), "--trials",
                           str(args.trials), "--jobs", str(args.jobs), "--study", "bench", "--runs", str(runs))
        print(f"\nsweep: {args.trials} trials, {args.jobs} at a time, {args.config.name} over {args.space.name}\n")
        print(report.stdout)
        best = max((orjson.loads(p.read_bytes()) for p in runs.glob("bench/trial-*/trial.json")),
                   key=lambda r: (r.get("objective", float("-inf")), -r["trial"]))  # Optuna's pick: first of ties
        default = default_eval(args.config, space, Path(tmp) / "default")
    goal = space.objective
    budget = " ".join(space.overrides({}))
    print(f"eval: mean lines of {goal.games} games, seeds {goal.seed}.., cap {goal.max_pieces:,}; budget {budget}")
    print(f"{'config':<24} {'eval mean lines':>16}")
    print(f"{'default':<24} {default:>16,.1f}")
    print(f"{'best trial ' + str(best['trial']):<24} {best.get('objective', float('nan')):>16,.1f}")


if __name__ == "__main__":
    main()
