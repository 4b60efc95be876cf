"""How fast does the viewer serve a recorded episode's frames (`viewer.replays.Game`)?

A game of Dellacherie's agent capped at ``--pieces`` is recorded, then re-simulated as the replay
route does: the first chunk of 200 frames on a fresh game, a scrub far ahead (cold: the game steps
there, leaving keyframes), a scrub back (from a keyframe), and the same chunk again. Also the
size of a chunk as JSON.

Usage: python bench/replay_frames.py [--pieces 5000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import orjson
from harness import ROOT  # noqa: F401  (puts this checkout ahead of an installed tetriszmq)
from harness.games import dellacherie_game

from viewer.replays import DEFAULT_COUNT, Game


def timed(what: Callable[[], object]) -> float:
    start = time.perf_counter()
    what()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pieces", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="a 1,000-piece game")
    args = parser.parse_args()
    pieces = 1000 if args.quick else args.pieces
    record = dellacherie_game(pieces, seed=7)
    game = Game(record)
    far, back = record.pieces - DEFAULT_COUNT, record.pieces // 3
    rows = [
        ("first chunk, fresh game (ms)", timed(lambda: game.frames(0, DEFAULT_COUNT))),
        (f"scrub to piece {far}, cold (ms)", timed(lambda: game.frames(far, DEFAULT_COUNT))),
        (f"scrub back to piece {back} (ms)", timed(lambda: game.frames(back, DEFAULT_COUNT))),
        (f"piece {back} again (ms)", timed(lambda: game.frames(back, DEFAULT_COUNT))),
        ("chunk of 200 frames as JSON (KB)", len(orjson.dumps(game.frames(0, DEFAULT_COUNT))) / 1024),
        ("keyframes kept", len(game.keyframes)),
    ]
    print(f"game of {record.pieces} pieces, {record.lines} lines; load average {os.getloadavg()[0]:.2f}")
    print(f"{'figure':40s} {'value':>10s}")
    for name, value in rows:
        print(f"{name:40s} {value:10.1f}")


if __name__ == "__main__":
    main()
