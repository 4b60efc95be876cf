"""Placements per second: PlacementTetris vs tetris-gymnasium's grouped wrapper with feature vectors.

Both play uniformly random legal placements from the same seeds, resetting at
game over, so both pay for the early, low boards and the late, tall ones alike.
Each rate is given per second of wall-clock time and per second of this process's
CPU time: on a shared machine the wall-clock rate falls with the load, the CPU rate
much less (it still pays for caches other processes evict). Compare ratios, run twice.

    python bench/placement_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import gymnasium as gym
import harness  # noqa: F401  (this checkout's tetriszmq, ahead of an installed one)
import numpy as np
import tetris_gymnasium.envs  # noqa: F401  (registers the env id)
from tetris_gymnasium.wrappers.grouped import GroupedActionsObservations
from tetris_gymnasium.wrappers.observation import FeatureVectorObservation

from tetriszmq.tetris.features import DEFAULT_FEATURES, FEATURES
from tetriszmq.tetris.placement_env import PlacementTetris


def grouped_features() -> gym.Env:
    env = gym.make("tetris_gymnasium/Tetris")
    return GroupedActionsObservations(env, observation_wrappers=[FeatureVectorObservation(env)])


def placements_per_second(make_env: Callable[[], gym.Env], seconds: float, seed: int = 1) -> tuple[float, float]:
    """Random legal placements per second of wall-clock time and per second of CPU time."""
    env = make_env()
    rng = np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    placements, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        legal = np.flatnonzero(info["action_mask"])
        _, _, terminated, truncated, info = env.step(int(legal[rng.integers(len(legal))]))
        placements += 1
        if terminated or truncated:
            _, info = env.reset()
    return placements / (time.perf_counter() - start), placements / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 3 seconds in all")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 10.0
    PlacementTetris().reset(seed=1)  # builds the feature tables (~0.5 s) outside the timed runs
    ours = placements_per_second(lambda: PlacementTetris(features=DEFAULT_FEATURES), seconds)
    ours_all = placements_per_second(lambda: PlacementTetris(features=FEATURES), seconds)
    grouped = placements_per_second(grouped_features, seconds)
    print(f"{'env':<40} {'placements/s':>12} {'per CPU s':>10}")
    for name, (wall, cpu) in ((f"PlacementTetris, {len(DEFAULT_FEATURES)} default features", ours),
                              (f"PlacementTetris, all {len(FEATURES)} features", ours_all),
                              ("grouped + FeatureVectorObservation", grouped)):
        print(f"{name:<40} {wall:>12,.0f} {cpu:>10,.0f}")
    print(f"ratio (default features / grouped, CPU): {ours[1] / grouped[1]:.1f}x; "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
