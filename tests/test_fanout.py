"""The fan-out to many browsers, with a real viewer, real trainers and real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from conftest import wait_for
from test_runs import LONG, copy_run, listed
from viewer_support import connect


def test_a_browser_waiting_its_turn_for_a_snapshot_keeps_getting_the_boards_of_the_runs_it_has(
        tmp_path, trainers, viewers, finished_run):
    """Snapshots share one byte budget, so a crowd connecting at once takes turns for histories (8 runs
    x 1,000 browsers: many seconds). The runs a browser already has stay live meanwhile; they used to
    stop, board and all, until its last snapshot was out."""
    root = tmp_path / "runs"
    copy_run(finished_run, root / "old")
    trainers(*LONG, run_dir=root / "a")
    # 1 KB/s: once the run list and a's snapshot (kilobytes) are out, the next snapshot waits seconds
    viewer = viewers(None, None, "--runs", str(root), "--snapshot-rate", "0.001")
    wait_for(lambda: listed(viewer).get("a", {}).get("episodes", 0) >= 3, timeout=120, what="episodes of a")

    async def body() -> None:
        async with aiohttp.ClientSession() as session:
            browser = await connect(session, viewer, runs=True)
            await browser.watch(["a"], boards=["a"])
            await browser.until(lambda m: m["topic"] == "snapshot" and m["id"] == "a", timeout=120)
            await browser.watch(["a", "old"], boards=["a"])
            boards = 0

            def enough_boards_or_old(message: dict[str, Any]) -> bool:
                nonlocal boards
                boards += message["topic"] == "board" and message["id"] == "a"
                return boards >= 30 or message["topic"] == "snapshot"

            first = await browser.until(enough_boards_or_old, timeout=120)
            assert first["topic"] == "board", f"old's snapshot came first, after {boards} boards of a"

    asyncio.run(body())
