"""The run catalogue and whole-history charts at scale: 50 finished runs of 100,000 episodes each.

The runs are synthetic but in the real format: a short real training (tests/tiny.toml) gives the
shapes of its ``metrics.jsonl`` messages (status, metrics with every SB3 scalar, episode), and
each generated run repeats them with counters that grow, noisy values and rare spikes: two
``status`` messages, then per 20 episodes one ``metrics`` message, a ``saving`` status every
10,000 timesteps and a final ``stopped``. Measured, in this process:

- listing: `Catalogue.scan` of all the runs, cold (first) and warm (nothing changed);
- loading one run's whole decimated history from its ``metrics.jsonl`` (`load_journal`), parsed and
  then from the sidecar cache that parse leaves beside it;
- loading every run at once as the viewer does when a page selects them all (`viewer.series.load`:
  worker processes), first with no sidecar (the first time the runs are opened), then with them;
- memory: RSS before and after holding every run's history, and the tables' own bytes;
- what a browser receives per run: rows per table and the encoded size.

Usage: python bench/catalogue.py [--runs 50] [--episodes 100000] [--dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from viewer.catalogue import Catalogue  # noqa: E402  (after the path insert)
from viewer.series import RunSeries, load, load_journal, sidecar  # noqa: E402

METRICS_EVERY = 20  # episodes per metrics message: a real raw-env run's rate at 1 message/s
SAVE_EVERY = 10_000  # timesteps between "saving" statuses (train.checkpoint_every's default)


def template(workdir: Path) -> dict[str, dict[str, Any]]:
    """One message of each kind from a real short training's metrics.jsonl."""
    run_dir = workdir / "template"
    subprocess.run([sys.executable, "-m", "tetriszmq", "train", "--config", "tests/tiny.toml", "--run-dir",
                    str(run_dir), "--quiet", "--pub", "tcp://127.0.0.1:0", "--ctl", "tcp://127.0.0.1:0"],
                   cwd=ROOT, check=True, timeout=300)
    shapes: dict[str, dict[str, Any]] = {}
    for line in (run_dir / "metrics.jsonl").read_bytes().splitlines():
        message = orjson.loads(line)
        if message["topic"] != "metrics" or message["scalars"]:  # the last metrics message has every scalar
            shapes[message["topic"]] = message
    shapes["config"] = {"text": (run_dir / "config.toml").read_text()}
    return shapes


def generate(run_dir: Path, index: int, episodes: int, shapes: dict[str, dict[str, Any]]) -> None:
    """One finished run: config.toml, run.json (of a process long gone) and its metrics.jsonl."""
    rng = random.Random(index)
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(shapes["config"]["text"].replace("seed = 3", f"seed = {index + 1}"))
    run = f"bench-{index:06x}"
    t = 1.7e9 + index * 1e5
    (run_dir / "run.json").write_bytes(orjson.dumps({"run": run, "endpoints": {"pub": "tcp://127.0.0.1:5555",
                                       "ctl": "tcp://127.0.0.1:5556"}, "pid": 2**22 + index, "started": t}))
    seq = timesteps = 0
    out = []

    def emit(kind: str, **fields: Any) -> None:
        nonlocal seq
        seq += 1
        out.append(orjson.dumps({**shapes[kind], **fields, "run": run, "seq": seq, "t": round(t, 4)}))

    emit("status", state="starting", reason="", timesteps=0, episodes=0)
    emit("status", state="running", reason="", timesteps=0, episodes=0)
    next_save = SAVE_EVERY
    for episode in range(1, episodes + 1):
        length = rng.randint(20, 80)
        timesteps += length
        t += length / 2000
        lines = rng.choice((0, 0, 0, 1, 2)) + (50 if rng.random() < 1e-4 else 0)  # rare spikes
        emit("episode", episode=episode, reward=float(length + 10 * lines), lines=lines, length=length,
             timesteps=timesteps)
        if episode % METRICS_EVERY == 0:
            scalars = {k: v * (0.5 + rng.random()) for k, v in shapes["metrics"]["scalars"].items()}
            emit("metrics", timesteps=timesteps, episodes=episode, sps=round(2000 * (0.9 + rng.random() / 5), 1),
                 dropped=0, scalars=scalars)
        if timesteps >= next_save:
            next_save += SAVE_EVERY
            emit("status", state="saving", reason="", timesteps=timesteps, episodes=episode)
    emit("status", state="stopping", reason="max_timesteps reached", timesteps=timesteps, episodes=episodes)
    emit("status", state="stopped", reason="max_timesteps reached", timesteps=timesteps, episodes=episodes)
    (run_dir / "metrics.jsonl").write_bytes(b"\n".join(out) + b"\n")


def rss() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, help="where to generate the runs (default: a temp folder, removed after)")
    parser.add_argument("--quick", action="store_true", help="3 runs of 5,000 episodes (a smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.episodes = 3, 5_000
    workdir = Path(tempfile.mkdtemp(prefix="bench-catalogue-"))
    root = args.dir or workdir / "runs"
    try:
        shapes = template(workdir)
        started = time.perf_counter()
        for index in range(args.runs):
            generate(root / f"seed-{index + 1}", index, args.episodes, shapes)
        print(f"generated {args.runs} runs of {args.episodes:,} episodes in {time.perf_counter() - started:.1f} s "
              f"({sum(p.stat().st_size for p in root.glob('*/metrics.jsonl')) / 1e6:,.0f} MB of metrics.jsonl)")
        measure(root, args.runs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def measure(root: Path, runs: int) -> None:
    catalogue = Catalogue([root])
    started = time.perf_counter()
    entries = catalogue.scan()
    cold = time.perf_counter() - started
    started = time.perf_counter()
    catalogue.scan()
    warm = time.perf_counter() - started
    assert len(entries) == runs and all(e.state == "stopped" for e in entries.values()), "every run listed, stopped"

    journals = [entry.dir / "metrics.jsonl" for entry in entries.values()]
    for journal in journals:
        sidecar(journal).unlink(missing_ok=True)
    pooled_cold = load_all(journals)
    pooled_warm = load_all(journals)
    baseline = rss()
    held: list[RunSeries] = []
    loads, cached = [], []
    for journal in journals:
        started = time.perf_counter()
        held.append(load_journal(journal, cache=False))
        loads.append(time.perf_counter() - started)
        started = time.perf_counter()
        load_journal(journal)
        cached.append(time.perf_counter() - started)
    loaded = rss()
    one = held[0]
    started = time.perf_counter()
    encoded = one.encode()
    encode = time.perf_counter() - started

    print(f"\n{'figure':<44}{'value':>16}")
    rows = [
        ("runs listed", f"{len(entries)}"),
        ("listing, cold (ms)", f"{cold * 1000:.1f}"),
        ("listing, warm rescan (ms)", f"{warm * 1000:.1f}"),
        ("load one run's whole history, median (ms)", f"{statistics.median(loads) * 1000:.0f}"),
        ("load one run's whole history, max (ms)", f"{max(loads) * 1000:.0f}"),
        ("load one run from its sidecar, median (ms)", f"{statistics.median(cached) * 1000:.1f}"),
        (f"load all {runs} in the viewer's workers, no sidecar (s)", f"{pooled_cold:.2f}"),
        (f"load all {runs} in the viewer's workers, sidecars (s)", f"{pooled_warm:.2f}"),
        ("sidecar per run (KB)", f"{sidecar(journals[0]).stat().st_size / 1e3:.0f}"),
        ("RSS before loading (MB)", f"{baseline / 1e6:.0f}"),
        (f"RSS holding all {runs} histories (MB)", f"{loaded / 1e6:.0f}"),
        ("RSS per run held (MB)", f"{(loaded - baseline) / runs / 1e6:.2f}"),
        ("table bytes per run (MB)", f"{statistics.mean(s.nbytes() for s in held) / 1e6:.2f}"),
        ("episodes per run (raw rows)", f"{one.episodes.raw:,}"),
        ("episode rows sent per series", f"{len(one.episodes):,}"),
        ("metrics rows sent per series", f"{len(one.metrics):,} of {one.metrics.raw:,}"),
        ("series per run (episode + metrics columns)",
         f"{len(one.episodes.columns) + len(one.metrics.columns)}"),
        ("encoded history per run (KB)", f"{len(encoded) / 1e3:.0f}"),
        ("encode one run's history (ms)", f"{encode * 1000:.1f}"),
    ]
    for name, value in rows:
        print(f"{name:<44}{value:>16}")


def load_all(journals: list[Path]) -> float:
    """Seconds to load every journal at once through `viewer.series.load`, worker start-up included."""
    async def go() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(load(journal) for journal in journals))
        return time.perf_counter() - started
    return asyncio.run(go())


if __name__ == "__main__":
    sys.exit(main())
