"""A run's chart history: exact when short, bounded when long, spikes kept, each message counted once."""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import ROOT, wait_for

from viewer.series import QUICK_BYTES, Limits, RunSeries, Table, load, load_journal, sidecar

SMALL = Limits(recent=50, buckets=8, evict=7)


def episode(n: int, *, lines: int = 1, run: str = "r-1", seq: int | None = None, timesteps: int | None = None,
            reward: float = 2.5) -> dict[str, Any]:
    return {"v": 1, "topic": "episode", "run": run, "seq": n if seq is None else seq, "episode": n,
            "reward": reward, "lines": lines, "length": 10, "timesteps": n * 10 if timesteps is None else timesteps,
            "t": 1000.0 + n}


def decoded(table: Table) -> dict[str, list[Any]]:
    """The table as a browser reads it: column name -> values."""
    body = orjson.loads(orjson.dumps(table.to_json(), option=orjson.OPT_SERIALIZE_NUMPY))
    return dict(zip(body["columns"], body["data"], strict=True))


def filled(rows: int, limits: Limits = SMALL, value: Any = lambda i: i % 5) -> Table:
    table = Table(limits)
    for i in range(1, rows + 1):
        table.append((i, i * 10, 1000.0 + i), {"v": value(i)})
    return table


def test_a_short_table_is_sent_exactly_with_whole_numbers_as_integers():
    table = filled(40)
    columns = decoded(table)
    assert columns["episodes"] == list(range(1, 41))
    assert columns["timesteps"] == [i * 10 for i in range(1, 41)]
    assert columns["v"] == [i % 5 for i in range(1, 41)]
    assert table.to_json()["decimated"] == 0


def test_a_long_table_stays_within_its_row_bound_and_its_memory_stops_growing():
    limits = Limits(recent=200, buckets=16, evict=32)
    sizes = []
    table = Table(limits)
    for i in range(1, 100_001):
        table.append((i, i, float(i)), {"a": i % 7, "b": -i})
        if i in (20_000, 100_000):
            sizes.append(table.nbytes())
        assert len(table) <= limits.recent + limits.evict + 2 * limits.buckets
    assert sizes[0] == sizes[1]
    body = table.to_json()
    assert body["raw"] == 100_000
    columns = decoded(table)
    assert columns["episodes"][0] == 1 and columns["episodes"][-1] == 100_000, "the whole run, from episode 1"
    assert columns["episodes"] == sorted(columns["episodes"])
    recent = columns["episodes"][body["decimated"]:]
    assert len(recent) >= limits.recent and recent == list(range(100_001 - len(recent), 100_001)), "recent rows exact"


def test_a_single_spike_and_a_single_dip_survive_decimation_in_their_place():
    table = filled(10_000, value=lambda i: 1000 if i == 1234 else (-1000 if i == 4321 else i % 3))
    columns = decoded(table)
    assert table.to_json()["decimated"] > 0 and columns["episodes"][table.to_json()["decimated"]] > 4321
    spike = columns["v"].index(1000)
    dip = columns["v"].index(-1000)
    assert spike < dip
    first = spike - spike % 2  # a bucket is two rows, at its first and its last episode
    assert columns["episodes"][first] <= 1234 <= columns["episodes"][first + 1]
    assert max(columns["v"]) == 1000 and min(columns["v"]) == -1000


@pytest.mark.parametrize("sign", [1, -1])
def test_within_a_bucket_the_extreme_that_came_first_is_drawn_first(sign: int):
    table = filled(2_000, value=lambda i: sign * i)  # rising: each bucket's minimum comes first; falling: maximum
    old = decoded(table)["v"][:table.to_json()["decimated"]]
    assert old and all(sign * first < sign * second for first, second in zip(old[0::2], old[1::2], strict=True))


def test_a_column_that_appears_mid_run_is_null_before_it_and_non_numbers_are_null():
    table = Table(SMALL)
    for i in range(1, 300):
        values: dict[str, Any] = {"sps": 5.0}
        if i > 200:
            values["train/loss"] = 0.5 if i != 250 else None
        table.append((i, i, float(i)), values)
    columns = decoded(table)
    assert columns["train/loss"][0] is None and columns["train/loss"][-1] == 0.5
    assert None in columns["train/loss"][-60:]


def test_a_message_from_the_journal_and_from_the_live_stream_counts_once():
    series = RunSeries(SMALL)
    for n in range(1, 11):
        assert series.add(episode(n))
    assert not series.add(episode(7)), "already taken from metrics.jsonl"
    assert series.add(episode(11))
    assert decoded(series.episodes)["episodes"] == list(range(1, 12))


def test_a_resumed_run_continues_and_drops_what_the_crashed_process_wrote_after_its_checkpoint():
    series = RunSeries(SMALL)
    for n in range(1, 31):  # process A wrote up to episode 30 (timesteps 300), last checkpoint at 200
        series.add(episode(n, run="a-1"))
    for seq, (state, timesteps) in enumerate([("starting", 0), ("running", 200)], 1):  # as trainer.py announces
        series.add({"v": 1, "topic": "status", "run": "b-2", "seq": seq, "state": state, "reason": "",
                    "timesteps": timesteps, "episodes": 20, "t": 2000.0})
    for n in range(21, 26):
        series.add(episode(n, run="b-2", seq=n + 2))
    assert decoded(series.episodes)["episodes"] == list(range(1, 26))


def test_the_metrics_table_holds_sps_and_every_sb3_scalar():
    series = RunSeries()
    series.add({"v": 1, "topic": "metrics", "run": "r", "seq": 1, "timesteps": 64, "episodes": 2, "sps": 900.5,
                "dropped": 0, "scalars": {"train/loss": 0.25, "rollout/ep_rew_mean": 3.0}, "t": 5.0})
    columns = decoded(series.metrics)
    assert columns["sps"] == [900.5] and columns["train/loss"] == [0.25] and columns["rollout/ep_rew_mean"] == [3]
    assert columns["timesteps"] == [64] and columns["episodes"] == [2]


def test_a_bulk_load_in_small_chunks_equals_taking_the_messages_one_by_one(tmp_path: Path):
    messages = [episode(n, lines=n % 4, reward=n * 0.5) for n in range(1, 3000)]
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in messages))
    live = RunSeries(SMALL)
    for m in messages:
        live.add(m)
    assert load_journal(path, SMALL, chunk=100).encode() == live.encode()


def test_corrupt_lines_are_counted_and_skipped_but_a_torn_last_line_is_not_corrupt(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(orjson.dumps(episode(1)) + b"\n{not json\n[1, 2]\n" + orjson.dumps(episode(2)) + b"\n"
                     + orjson.dumps(episode(3))[:30])
    series = load_journal(path)
    assert series.corrupt == 2
    assert decoded(series.episodes)["episodes"] == [1, 2]


def test_a_real_runs_journal_loads_into_episode_and_metrics_tables(finished_run: Path):
    messages = [orjson.loads(line) for line in (finished_run / "metrics.jsonl").read_bytes().splitlines()]
    series = load_journal(finished_run / "metrics.jsonl")
    episodes = decoded(series.episodes)
    assert episodes["episodes"] == [m["episode"] for m in messages if m["topic"] == "episode"]
    assert episodes["lines"] == [m["lines"] for m in messages if m["topic"] == "episode"]
    metrics = decoded(series.metrics)
    assert "train/value_loss" in metrics and len(metrics["sps"]) == sum(m["topic"] == "metrics" for m in messages)
    assert series.corrupt == 0


def test_loading_a_long_journal_leaves_the_event_loop_running(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"".join(orjson.dumps(episode(n)) + b"\n" for n in range(1, 100_001)))

    async def main() -> tuple[int, RunSeries]:
        ticks = 0
        loading = asyncio.create_task(load(path))
        while not loading.done():
            ticks += 1
            await asyncio.sleep(0)
        return ticks, await loading

    ticks, series = asyncio.run(main())
    assert series.episodes.raw == 100_000
    assert ticks > 1, "the loop turned while the journal loaded"


@pytest.mark.parametrize("limits", [dict(recent=0), dict(buckets=3), dict(buckets=0), dict(evict=0)])
def test_impossible_limits_are_refused(limits: dict[str, int]):
    with pytest.raises(ValueError, match="even number"):
        Limits(**limits)


def test_nan_values_are_sent_as_null():
    table = Table(SMALL)
    table.append((1, 1, 1.0), {"v": math.nan})
    assert decoded(table)["v"] == [None]


def journal_of_every_kind() -> list[bytes]:
    """Lines as real journals hold them, and worse: two processes (a resume), duplicates, blanks, junk, ties."""
    rng = random.Random(7)
    lines = []
    seq = 0

    def emit(message: dict[str, Any]) -> None:
        lines.append(orjson.dumps(message))

    for n in range(1, 1500):
        seq += 1
        value = rng.choice([None, "x", 0, 0, 1, 2.5, 1e30, [1]])
        emit({**episode(n, run="a-1", seq=seq, lines=rng.choice([0, 0, 1, 2]), reward=rng.choice([1.0, 2.0])),
              "length": value})
        if n % 7 == 0:
            seq += 1
            scalars = {"train/loss": rng.random(), **({"train/late": rng.random()} if n > 700 else {})}
            emit({"v": 1, "topic": "metrics", "run": "a-1", "seq": seq, "episodes": n, "timesteps": n * 10,
                  "t": 1000.0 + n, "sps": rng.choice([None, 900.0, 901]), "scalars": scalars})
        if n % 500 == 0:
            lines += [lines[-3], b"{torn", b"", b"[1, 2]"]  # a repeat, junk, a blank line, not an object
    for seq, (state, timesteps) in enumerate([("starting", 0), ("running", 9000)], 1):
        emit({"v": 1, "topic": "status", "run": "b-2", "seq": seq, "state": state, "reason": "",
              "timesteps": timesteps, "episodes": 900, "t": 5000.0})
    for n in range(901, 1300):
        emit(episode(n, run="b-2", seq=n, reward=-n))
    return lines


@pytest.mark.parametrize("chunk", [64, 4096, 1 << 20])
def test_a_bulk_load_of_any_journal_equals_taking_its_messages_one_by_one(tmp_path: Path, chunk: int):
    lines = journal_of_every_kind()
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    one_by_one = RunSeries(SMALL)
    for line in filter(None, lines):
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            message = None
        if isinstance(message, dict):
            one_by_one.add(message)
        else:
            one_by_one.corrupt += 1
    bulk = load_journal(path, SMALL, chunk=chunk, cache=False)
    assert bulk.encode() == one_by_one.encode()
    assert bulk.episodes.to_json()["decimated"] > 0 and bulk.metrics.to_json()["decimated"] > 0
    assert bulk.seen == one_by_one.seen and bulk.corrupt == 4


def write_journal(path: Path, episodes: range) -> None:
    with open(path, "ab") as journal:
        journal.write(b"".join(orjson.dumps(episode(n)) + b"\n" for n in episodes))


def test_a_journal_is_read_once_then_its_series_comes_from_the_sidecar_beside_it(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    write_journal(path, range(1, 3000))
    first = load_journal(path, SMALL)
    assert sidecar(path).is_file() and sidecar(path).parent == tmp_path
    # Same size, same mtime, other bytes: only a load from the sidecar still gives the first series.
    info = path.stat()
    path.write_bytes(path.read_bytes().replace(b'"reward":2.5', b'"reward":9.5'))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    cached = load_journal(path, SMALL)
    assert cached.encode() == first.encode() == load_journal(path, SMALL, cache=False).encode().replace(b"9.5", b"2.5")
    assert cached.seen == first.seen and cached.process == first.process


def test_the_sidecar_is_replaced_when_the_journal_grows_and_ignored_for_other_limits(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    write_journal(path, range(1, 3000))
    load_journal(path, SMALL)
    write_journal(path, range(3000, 3100))
    grown = load_journal(path, SMALL)
    assert grown.episodes.raw == 3099 and decoded(grown.episodes)["episodes"][-1] == 3099
    assert load_journal(path, SMALL).encode() == grown.encode() == load_journal(path, SMALL, cache=False).encode()
    other = Limits(recent=100, buckets=8, evict=7)
    assert load_journal(path, other).encode() == load_journal(path, other, cache=False).encode() != grown.encode()


def test_a_corrupt_or_unwritable_sidecar_only_costs_a_full_read(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    write_journal(path, range(1, 500))
    expected = load_journal(path, SMALL, cache=False).encode()
    sidecar(path).write_bytes(b"PK\x03\x04 not a zip")
    assert load_journal(path, SMALL).encode() == expected
    assert load_journal(path, SMALL).encode() == expected, "rewritten, and read back"
    sidecar(path).unlink()
    sidecar(path).mkdir()  # as unwritable as it gets for root
    assert load_journal(path, SMALL).encode() == expected
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temporary file left behind"


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_the_loading_workers_end_when_the_viewer_is_killed(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    write_journal(path, range(1, QUICK_BYTES // 100))  # long enough not to be read in a thread
    script = ("import asyncio, sys; from pathlib import Path; from viewer.series import load\n"
              f"asyncio.run(load(Path({str(path)!r}))); print('loaded', flush=True); sys.stdin.read()")
    viewer = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert viewer.stdout is not None and viewer.stdout.readline() == b"loaded\n"
        workers = children_of(viewer.pid)
        assert workers, "the journal was loaded in a worker process"
    finally:
        viewer.kill()
        viewer.wait()
        viewer.stdin.close()  # type: ignore[union-attr]
        viewer.stdout.close()  # type: ignore[union-attr]
    wait_for(lambda: not any(map(running, workers)), timeout=30, what="workers outlived the viewer")


def running(pid: int) -> bool:
    """Not gone, nor a zombie waiting for whoever inherited it to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
