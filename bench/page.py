"""The page with every run: 50 finished runs of 100,000 episodes plus 8 live trainers, in Chromium.

The finished runs are bench/catalogue.py's (synthetic, in the real format); the live ones are real
tiny trainers (tests/tiny.toml) in the same runs folder, or with ``--publishers`` the harness's
synthetic publishers (bench/harness/stream.py: a real Broker at a trainer's rates, boards at 30/s,
an episode every 0.5 s, metrics every second, and almost no CPU), followed with ``--trainer``. One
viewer (``python -m viewer --runs``), one headless Chromium page at 1280x800, as a user opens it. Measured:

- time to first chart paint: navigation start -> the first chart drawn with data (the page marks
  it: ``performance.mark("first chart paint")``), and -> every live run drawn (the default
  selection is the live runs);
- page memory (JS heap, CDP ``Performance.getMetrics``) and the viewer's RSS (``/api/status``);
- chart redraw per animation frame with the live runs streaming, two ways:
  the page's own clock around its redraw calls in each frame that redraws (``viewerCharts.costs``:
  wall time, so it counts the time the page waited for a CPU, and not uPlot's drawing, which runs
  in a microtask after the calls return); and Chromium's trace of the same window (CDP tracing,
  ``devtools.timeline``): the animation-frame callback of each of those frames (``FireAnimationFrame``,
  which holds our redraws, the boards and the microtasks in which uPlot draws), its wall time
  (``dur``), the main thread's CPU time in it (``tdur``: the redraw's cost), and the difference,
  the time the renderer waited (descheduled: on this 2-CPU machine, 8 trainers keep both busy);
  plus the main thread's whole script time per frame over the window (CDP ``ScriptDuration`` / frames);
- ``--profile``: then a CPU profile of the page (CDP ``Profiler``, sampled every 100 us) over
  the same length of time: the functions the main thread spent its time in, self time;
- then every finished run selected too: time until all are drawn (50 histories read from disk),
  page memory and viewer RSS again.

The load average is printed before and after the redraw window.
Targets (issue 14): first paint < 2 s, viewer RSS < 500 MB, under 4 ms of redraw per frame.

Usage: python bench/page.py [--finished 50] [--episodes 100000] [--live 8] [--seconds 20] [--dir DIR]
       [--publishers] [--profile] [--trace FILE] [--quick]
"""

from __future__ import annotations

import argparse
import bisect
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
from catalogue import generate, template
from harness import ROOT
from harness.machine import loadavg
from harness.processes import free_endpoint, free_port, spawned, wait_for
from harness.servers import get_json
from harness.stream import FPS, publisher

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
# The trace of the redraw window: animation frames with wall and thread time, and the page's marks.
TRACE_CATEGORIES = ["devtools.timeline", "disabled-by-default-devtools.timeline", "blink.user_timing"]
WINDOW_MARK = "redraw window"  # performance.mark at the window's start: maps the page's clock onto the trace's
PROFILE_TOP = 15
# Where a frame's main-thread CPU goes: trace event names by part (self time; anything else is "other").
PARTS = {"script": ("FunctionCall", "FireAnimationFrame", "RunMicrotasks"), "HTML parsing": ("ParseHTML",),
         "style + layout": ("UpdateLayoutTree", "Layout"), "paint": ("PrePaint", "Paint", "Layerize", "UpdateLayer"),
         "commit": ("Commit",), "GC": ("MinorGC", "MajorGC")}
Rows = list[tuple[str, str]]                  # (figure, value)
Profile = list[tuple[str, float, float]]      # (function, ms of self time, % of the busy samples)
Frame = tuple[dict[str, Any], dict[str, Any]]  # an animation frame's callback and its main-thread task (trace events)
Frames = tuple[list[Frame], list[Frame]]       # the frames that redrew, and all


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


def synthetic(count: int, stack: ExitStack) -> list[str]:
    """``count`` synthetic publishers, stopped with ``stack``; the viewer's arguments that follow them."""
    followed = []
    for _ in range(count):
        pub, ctl = free_endpoint(), free_endpoint()
        _, pipe = stack.enter_context(spawned(publisher, pub, ctl, FPS))
        wait_for(pipe.poll, 60, what="a publisher ready")
        pipe.recv()
        followed += ["--trainer", f"{pub},{ctl}"]
    return followed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finished", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--live", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="the redraw cost window (default 20)")
    parser.add_argument("--publishers", action="store_true",
                        help="the live runs are synthetic publishers at a trainer's rates, not trainers")
    parser.add_argument("--profile", action="store_true", help="then a CPU profile of the page as long as the window")
    parser.add_argument("--trace", type=Path, help="write Chromium's trace of the window here (DevTools, Perfetto)")
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
        with ExitStack() as publishers:
            finished_runs(root, args.finished, args.episodes, workdir)
            for stale in root.glob("live-*"):
                shutil.rmtree(stale)
            if args.publishers:
                followed = synthetic(args.live, publishers)
            else:
                started += trainers(root, args.live)
                followed = []
            port = free_port()
            started.append(subprocess.Popen([sys.executable, "-m", "viewer", "--runs", str(root), *followed,
                                             "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))

            def live() -> int:  # live runs that have charts to draw: followed, with a finished episode
                return sum(r["link"] == "online" and r["episodes"] > 0 for r in get_json(port, "/api/runs")["runs"])

            # The page is timed from here: a trainer still importing torch or playing its first game is no
            # part of it (the first chart waits for a run's first episode, whatever the viewer does).
            wait_for(lambda: live() == args.live, 900, 0.5, what="an episode in every live run", tolerate=(OSError,))
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
                try:
                    rows, profile = measure(browser, port, args)
                finally:
                    browser.close()
    finally:
        stop(started)
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    kind = "synthetic publishers" if args.publishers else "tiny trainers"
    print(f"\nlive runs: {args.live} {kind}; times in ms")
    print(f"{'figure':<72}{'value':>24}")
    for name, value in rows:
        print(f"{name:<72}{value:>24}")
    if profile:
        print(f"\n{'page CPU profile, self time (function, script:line)':<72}{'ms':>16}{'%':>8}")
        for name, ms, share in profile:
            print(f"{name:<72}{ms:>16.0f}{share:>8.1f}")
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


def measure(browser, port: int, args: argparse.Namespace) -> tuple[Rows, Profile]:
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

    rows += redraw_window(browser, page, args.seconds, script_seconds, args.trace)
    profile = cpu_profile(page, cdp, args.seconds) if args.profile else []
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
    return rows, profile


def spread(values: list[float]) -> str:
    """mean / p99 / max of ``values`` (ms), as the rows print them."""
    if not values:
        return "none"
    ordered = sorted(values)
    return f"{statistics.mean(ordered):.2f} / {ordered[int(len(ordered) * 0.99)]:.2f} / {ordered[-1]:.2f}"


def redraw_window(browser, page, seconds: float, script_seconds, keep: Path | None) -> Rows:
    """The charts' redraws over ``seconds`` of live streaming: the page's clock, and Chromium's trace."""
    load_before = loadavg()
    browser.start_tracing(page=page, categories=TRACE_CATEGORIES)
    marked = page.evaluate(f"""() => {{
      viewerCharts.costs.length = 0; viewerCharts.frames = 0; return performance.mark({WINDOW_MARK!r}).startTime;
    }}""")
    script0 = script_seconds()
    page.wait_for_timeout(seconds * 1000)
    costs, frames = page.evaluate("() => [viewerCharts.costs.slice(), viewerCharts.frames]")
    script = script_seconds() - script0
    raw = browser.stop_tracing()
    if keep:
        keep.write_bytes(raw)
    trace = orjson.loads(raw)
    load_after = loadavg()
    redrawing, every = animation_frames(trace["traceEvents"], marked, [at for at, _ in costs])
    ms = [cost for _, cost in costs]

    def of(frames: list[Frame], part: int, key: str) -> str:
        return spread([frame[part][key] / 1000 for frame in frames])

    waited = [(c["dur"] - c["tdur"]) / 1000 for c, _ in redrawing]
    return [(f"load average before / after the {seconds:g} s window", f"{load_before} / {load_after}"),
            (f"frames in the {seconds:g} s window / frames that redrew", f"{frames} / {len(costs)}"),
            ("page clock: chart redraw per redrawing frame, mean / p99 / max", spread(ms)),
            ("page clock: chart redraw per frame, all frames (ms)", f"{sum(ms) / max(frames, 1):.2f}"),
            ("page script per frame, all of it (ms)", f"{script * 1000 / max(frames, 1):.2f}"),
            ("trace: redrawing frames found", f"{len(redrawing)} of {len(costs)}"),
            ("trace: redrawing frame's callback, wall (dur), mean / p99 / max", of(redrawing, 0, "dur")),
            ("trace: redrawing frame's callback, CPU (tdur), mean / p99 / max", of(redrawing, 0, "tdur")),
            ("trace: redrawing frame's callback, waited (dur - tdur)", spread(waited)),
            ("trace: redrawing frame's whole task, CPU (+ layout, paint, commit)", of(redrawing, 1, "tdur")),
            (f"trace: every frame ({len(every)}), callback CPU, mean / p99 / max", of(every, 0, "tdur")),
            ("trace: every frame, whole task CPU, mean / p99 / max", of(every, 1, "tdur")),
            *((f"  redrawing frame's task CPU, mean: {part}", f"{ms:.2f}")
              for part, ms in by_part(trace["traceEvents"], [task for _, task in redrawing]).items())]


def by_part(events: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> dict[str, float]:
    """Mean CPU ms per task in each of `PARTS`: each trace event's own time, less the events nested in it."""
    spent: Counter[str] = Counter({part: 0.0 for part in [*PARTS, "other"]})
    parts = {name: part for part, names in PARTS.items() for name in names}

    def part_of(name: str) -> str:
        return "GC" if name.startswith("V8.GC") else parts.get(name, "other")

    if not tasks:
        return spent
    thread = (tasks[0]["pid"], tasks[0]["tid"])
    timed = sorted((e for e in events if e.get("ph") == "X" and "tdur" in e and (e["pid"], e["tid"]) == thread),
                   key=lambda e: (e["ts"], -e["dur"]))
    begins = [e["ts"] for e in timed]
    for task in tasks:
        end = task["ts"] + task["dur"]
        inside = timed[bisect.bisect_left(begins, task["ts"]):bisect.bisect_right(begins, end)]
        stack: list[dict[str, Any]] = []
        for event in inside:  # sorted by start, outer first: the stack holds the events enclosing this one
            while stack and event["ts"] >= stack[-1]["ts"] + stack[-1]["dur"]:
                stack.pop()
            if stack:
                spent[part_of(stack[-1]["name"])] -= event["tdur"] / 1000
            spent[part_of(event["name"])] += event["tdur"] / 1000
            stack.append(event)
    return {part: ms / len(tasks) for part, ms in spent.items()}


def animation_frames(events: list[dict[str, Any]], marked: float, starts: list[float]) -> Frames:
    """The page's animation frames in the trace: those in which a redraw started at one of ``starts``
    (``performance.now()``, ms), and all of them; each as (its callback, its whole main-thread task).

    The window's mark is in the trace at its time on the trace's clock (``ts``, us) with its
    ``startTime`` on the page's: the difference maps one onto the other. A callback is a
    ``FireAnimationFrame`` complete event on the thread that made the mark (the page's main thread);
    its task is the ``RunTask`` around it, which goes on to style, layout, paint and the commit to the
    compositor of what the callback changed.
    """
    mark = next(e for e in events if e.get("name") == WINDOW_MARK and e.get("cat") == "blink.user_timing")
    offset = mark["ts"] - mark["args"]["data"]["startTime"] * 1000

    def on_main(name: str) -> list[dict[str, Any]]:
        return sorted((e for e in events if e.get("name") == name and e.get("ph") == "X"
                       and (e["pid"], e["tid"]) == (mark["pid"], mark["tid"])), key=lambda e: e["ts"])

    def around(ordered: list[dict[str, Any]], begins: list[int], at: float) -> dict[str, Any] | None:
        i = bisect.bisect_right(begins, at) - 1
        return ordered[i] if i >= 0 and at <= ordered[i]["ts"] + ordered[i]["dur"] else None

    callbacks, tasks = on_main("FireAnimationFrame"), on_main("RunTask")
    callback_begins, task_begins = [e["ts"] for e in callbacks], [e["ts"] for e in tasks]
    every = [(c, around(tasks, task_begins, c["ts"]) or c) for c in callbacks]
    by_callback = {id(frame[0]): frame for frame in every}
    redrawing = [by_callback[id(c)] for start in starts if start >= marked
                 and (c := around(callbacks, callback_begins, start * 1000 + offset)) is not None]
    return redrawing, every


def cpu_profile(page, cdp, seconds: float) -> Profile:
    """The page's main thread sampled for ``seconds``: the functions with most self time, idle time left out."""
    cdp.send("Profiler.enable")
    cdp.send("Profiler.setSamplingInterval", {"interval": 100})
    cdp.send("Profiler.start")
    page.wait_for_timeout(seconds * 1000)
    profile = cdp.send("Profiler.stop")["profile"]
    cdp.send("Profiler.disable")
    names = {}
    for node in profile["nodes"]:
        frame = node["callFrame"]
        script = frame["url"].rsplit("/", 1)[-1]
        function = frame["functionName"] or "(anonymous)"
        names[node["id"]] = f"{function} {script}:{frame['lineNumber'] + 1}" if script else function
    spent: Counter[str] = Counter()
    for node, delta in zip(profile["samples"], profile["timeDeltas"], strict=True):
        spent[names[node]] += delta / 1000
    idle = spent.pop("(idle)", 0.0)
    total = sum(spent.values()) or 1.0
    print(f"page CPU profile: {total:.0f} ms busy, {idle:.0f} ms idle in {seconds:g} s")
    return [(name, ms, 100 * ms / total) for name, ms in spent.most_common(PROFILE_TOP)]


if __name__ == "__main__":
    sys.exit(main())
