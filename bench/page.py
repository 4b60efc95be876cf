"""The page with every run: 50 finished runs of 100,000 episodes plus 8 live trainers, in Chromium.

The finished runs are bench/catalogue.py's (synthetic, in the real format); the live ones are real
tiny trainers (tests/tiny.toml) in the same runs folder. One viewer (``python -m viewer --runs``),
one headless Chromium page at 1280x800, as a user opens it. Measured:

- time to first chart paint: navigation start -> the first chart drawn with data (the page marks
  it: ``performance.mark("first chart paint")``), and -> every live run drawn (the default
  selection is the live runs);
- page memory (JS heap, CDP ``Performance.getMetrics``) and the viewer's RSS (``/api/status``);
- chart redraw cost per animation frame with the live runs streaming: the script time the charts
  take in each frame that redraws (the page keeps it: ``viewerCharts.costs``), and the main thread's
  whole script time per frame over the window (CDP ``ScriptDuration`` / frames);
- then every finished run selected too: time until all are drawn (50 histories read from disk),
  page memory and viewer RSS again.

Targets (issue 14): first paint < 2 s, viewer RSS < 500 MB, under 4 ms of redraw per frame.

Usage: python bench/page.py [--finished 50] [--episodes 100000] [--live 8] [--seconds 20] [--dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from catalogue import generate, template
from harness import ROOT
from harness.processes import free_port, wait_for
from harness.servers import get_json

CHROMIUM = "/usr/bin/chromium"
# Where the first chart's time goes: the document, the page's script, the WebSocket, the run list, the first
# run's history, its first chart (milliseconds from navigation; app.js and charts.js mark them).
MILESTONES = """() => {
  const nav = performance.getEntriesByType("navigation")[0], steps = {"document received": nav.responseEnd,
    "script run (DOMContentLoaded)": nav.domContentLoadedEventEnd};
  for (const name of ["connected", "run list", "first snapshot", "first chart paint"])
    steps[name] = performance.getEntriesByName(name)[0].startTime;
  return steps;
}"""
REWARD_RUNS = "Number(document.querySelector('[data-chart=\"episodes:reward\"]')?.dataset.runs || 0)"


def finished_runs(root: Path, count: int, episodes: int, workdir: Path) -> None:
    """``count`` finished runs in ``root``, unless a folder from an earlier run of this bench has them."""
    if len(list(root.glob("done-*/metrics.jsonl"))) == count:
        return
    shapes = template(workdir)
    for index in range(count):
        generate(root / f"done-{index + 1}", index, episodes, shapes)


def trainers(root: Path, count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-m", "tetriszmq", "train", "--config", "tests/tiny.toml", "--set",
                              "train.max_timesteps=100000000", "--set", f"run.seed={i + 1}", "--pub",
                              "tcp://127.0.0.1:*", "--ctl", "tcp://127.0.0.1:*", "--run-dir", str(root / f"live-{i}"),
                              "--quiet"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finished", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--live", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="the redraw cost window (default 20)")
    parser.add_argument("--dir", type=Path, help="the runs folder (kept, and its finished runs reused)")
    parser.add_argument("--quick", action="store_true", help="3 finished runs of 2,000 episodes, 1 live, 1 s")
    args = parser.parse_args()
    if args.quick:
        args.finished, args.episodes, args.live, args.seconds = 3, 2_000, 1, 1.0
    from playwright.sync_api import sync_playwright

    workdir = Path(tempfile.mkdtemp(prefix="bench-page-"))
    root = args.dir or workdir / "runs"
    started: list[subprocess.Popen[bytes]] = []
    try:
        finished_runs(root, args.finished, args.episodes, workdir)
        for stale in root.glob("live-*"):
            shutil.rmtree(stale)
        started += trainers(root, args.live)
        port = free_port()
        started.append(subprocess.Popen([sys.executable, "-m", "viewer", "--runs", str(root), "--port", str(port)],
                                        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def live() -> int:  # live runs that have charts to draw: followed, with a finished episode
            return sum(r["link"] == "online" and r["episodes"] > 0 for r in get_json(port, "/api/runs")["runs"])

        # The page is timed from here: a trainer still importing torch or playing its first game is no
        # part of it (the first chart waits for a run's first episode, whatever the viewer does).
        wait_for(lambda: live() == args.live, 900, 0.5, what="an episode in every live run", tolerate=(OSError,))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
            try:
                rows = measure(browser, port, args)
            finally:
                browser.close()
    finally:
        stop(started)
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'figure':<52}{'value':>14}")
    for name, value in rows:
        print(f"{name:<52}{value:>14}")
    return 0


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate, and kill what has not exited 30 s later (a trainer still importing torch on a busy machine)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(browser, port: int, args: argparse.Namespace) -> list[tuple[str, str]]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")

    def heap_mb() -> float:
        metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        return metrics["JSHeapUsedSize"] / 1e6

    def script_seconds() -> float:
        return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}["ScriptDuration"]

    def viewer_rss() -> float:
        return get_json(port, "/api/status")["viewer"]["rss"] / 1e6

    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_function(f"() => {REWARD_RUNS} >= 1", polling="raf", timeout=120_000)
    steps = page.evaluate(MILESTONES)
    first = steps["first chart paint"]
    page.wait_for_function(f"() => {REWARD_RUNS} >= {args.live}", polling="raf", timeout=120_000)
    all_live = page.evaluate("() => performance.now()")
    rows = [("runs listed (finished + live)", f"{args.finished} + {args.live}"),
            ("first chart paint (ms from navigation)", f"{first:.0f}"),
            *((f"  of which: {name}", f"{at:.0f}") for name, at in steps.items() if name != "first chart paint"),
            (f"all {args.live} live runs drawn (ms from navigation)", f"{all_live:.0f}"),
            ("page JS heap (MB)", f"{heap_mb():.1f}"), ("viewer RSS (MB)", f"{viewer_rss():.0f}")]

    page.evaluate("() => { viewerCharts.costs.length = 0; viewerCharts.frames = 0; }")
    script0 = script_seconds()
    time.sleep(args.seconds)
    costs, frames = page.evaluate("() => [viewerCharts.costs.slice(), viewerCharts.frames]")
    script = script_seconds() - script0
    costs.sort()
    rows += [(f"frames in the {args.seconds:g} s window / frames that redrew", f"{frames} / {len(costs)}"),
             ("chart redraw per redrawing frame, mean (ms)", f"{statistics.mean(costs or [0]):.2f}"),
             ("chart redraw per redrawing frame, p99 (ms)", f"{costs[int(len(costs) * 0.99)] if costs else 0:.2f}"),
             ("chart redraw per redrawing frame, max (ms)", f"{max(costs or [0]):.2f}"),
             ("chart redraw per frame, all frames (ms)", f"{sum(costs) / max(frames, 1):.2f}"),
             ("page script per frame, all of it (ms)", f"{script * 1000 / max(frames, 1):.2f}")]

    total = args.finished + args.live
    began = time.perf_counter()
    page.evaluate("""() => {  // one at a time, as a user would: each click redraws the list
      for (let box; (box = document.querySelector('#run-table tbody input:not(:checked)'));) box.click();
    }""")
    try:
        page.wait_for_function(f"() => {REWARD_RUNS} >= {total}", polling=200, timeout=600_000)
        drawn = f"{time.perf_counter() - began:.1f}"
    except PlaywrightTimeout:  # say so, and keep the figures measured before
        drawn = f"{page.evaluate(f'() => {REWARD_RUNS}')} drawn in 600"
    rows += [(f"select all {total} runs: all drawn (s)", drawn),
             (f"page JS heap, {total} runs shown (MB)", f"{heap_mb():.1f}"),
             (f"viewer RSS, {total} histories held (MB)", f"{viewer_rss():.0f}")]
    return rows


if __name__ == "__main__":
    sys.exit(main())
