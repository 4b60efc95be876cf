"""The page in a real headless Chromium, against real trainers and a real viewer."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from conftest import ROOT, TINY_PLACEMENT, free_endpoint, free_port, reap, wait_for

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LONG = ("--set", "train.max_timesteps=10000000")
SCREENS = ((1280, 800), (1920, 1080))

pytestmark = [pytest.mark.slow, pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Debian's chromium is not installed at {CHROMIUM}")]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")

# Cells of the 20x10 board whose centre has a guideline colour (I O T S Z J L).
COLOURED_CELLS = """() => {
  const canvas = document.getElementById("board");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const palette = new Set(["0,240,240", "240,240,0", "160,0,240", "0,240,0", "240,0,0", "0,0,240", "240,160,0"]);
  const size = canvas.width / 10;
  let cells = 0;
  for (let r = 0; r < 20; r++) for (let c = 0; c < 10; c++) {
    const i = (Math.floor(r * size + size / 2) * canvas.width + Math.floor(c * size + size / 2)) * 4;
    if (palette.has(`${data[i]},${data[i + 1]},${data[i + 2]}`)) cells++;
  }
  return cells >= 4;
}"""
# A chart overlaying at least `runs` runs with at least `points` points among them.
CHART_SHOWS = """([key, runs, points]) => {
  const chart = document.querySelector(`[data-chart="${key}"]`);
  return !!chart && !chart.hidden && Number(chart.dataset.runs) >= runs && Number(chart.dataset.points) >= points;
}"""
# Boxes that must not overlap: each chart's title and its values; the page's panels.
OVERLAPS = """() => {
  const cross = (a, b) => a.width > 0 && a.height > 0 && b.width > 0 && b.height > 0 &&
    a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  const found = [];
  for (const head of document.querySelectorAll(".chart:not([hidden]) .chart-head")) {
    const title = head.querySelector(".chart-title").getBoundingClientRect();
    const value = head.querySelector(".chart-value").getBoundingClientRect();
    if (cross(title, value)) found.push(head.parentElement.dataset.chart);
  }
  const panels = [".runs", "aside", ".charts"].map((s) => document.querySelector(s).getBoundingClientRect());
  for (let i = 0; i < panels.length; i++) for (let j = i + 1; j < panels.length; j++) {
    if (cross(panels[i], panels[j])) found.push(`panels ${i} and ${j}`);
  }
  return found;
}"""
CHECKED = """() => [...document.querySelectorAll('#run-table tbody tr')]
  .filter((r) => r.querySelector('input').checked).map((r) => r.dataset.id).sort()"""
VALUES_SHOWN = """() => [...document.querySelectorAll(".chart:not([hidden]) .chart-value")].filter((v) => v.textContent)
  .length >= 2"""


# Each cell's colour in canvas `id`, sampled low in the cell (candidates' labels sit in its top half), with
# the frame the canvas shows (`canvas.shown`), read in one task: the pair always belongs together.
CELLS = """(id) => {
  const canvas = document.getElementById(id);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const size = canvas.width / 10;
  const cells = [];
  for (let r = 0; r < 20; r++) {
    cells.push([]);
    for (let c = 0; c < 10; c++) {
      const i = (Math.floor(r * size + size * 0.8) * canvas.width + Math.floor(c * size + size / 2)) * 4;
      cells[r].push(`${data[i]},${data[i + 1]},${data[i + 2]}`);
    }
  }
  return { shown: canvas.shown || null, cells, image: canvas.toDataURL() };
}"""
EDGES = CELLS.replace("size * 0.8", "size - 2")  # the bottom edge of each cell, where an outline runs
KIND_COLOURS = {2: "0,240,240", 3: "240,240,0", 4: "160,0,240", 5: "0,240,0", 6: "240,0,0", 7: "0,0,240",
                8: "240,160,0"}
GHOST = "200,200,200"
# The x range a chart shows, and whether its plot is the one `PLOT_MARK` marked (not rebuilt since).
X_RANGE = """(key) => {
  const plot = viewerCharts.charts.get(key).plot;
  return { min: plot.scales.x.min, max: plot.scales.x.max, marked: !!plot.root.marked };
}"""
PLOT_MARK = "(key) => { viewerCharts.charts.get(key).plot.root.marked = true; }"
NEXT_FRAMES = "(n) => new Promise((done) => { const f = () => (n-- > 0 ? requestAnimationFrame(f) : done()); f(); })"


@contextlib.contextmanager
def open_page(url: str, serve: Callable[[sync_api.Route], None] | None = None) -> Iterator[sync_api.Page]:
    """The page at ``url`` in a fresh headless Chromium, which must raise no error by the end.

    ``serve``: answers every request instead of the network (a scripted viewer).
    """
    errors: list[Exception] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda error: errors.append(error))
            if serve is not None:
                page.route("**/*", serve)
            page.goto(url)
            try:
                yield page
            except Exception as exc:
                exc.add_note(f"the page held: {page_state(page)}; its errors: {errors}")
                raise
            assert errors == []
        finally:
            browser.close()


def page_state(page: sync_api.Page) -> str:
    """What the page knew of its runs and its connection: a failure's first clue."""
    try:
        return page.evaluate("""() => { const v = window.viewerState; return JSON.stringify({
            connection: v.connection, listed: v.listed, focused: v.focused, watch: v.sentWatch,
            runs: [...v.runs.values()].map((r) => ({ id: r.id, live: r.entry.live, state: r.entry.state,
              selected: r.selected, seq: r.seq, board: r.board && { episode: r.board.episode,
              candidates: !!r.board.candidates } })) }); }""")
    except Exception as exc:  # the page itself may be what failed
        return f"unknown ({exc})"


@contextlib.contextmanager
def streaming(log: Path, *args: str) -> Iterator[None]:
    """``python ARGS``, a process that streams on endpoints of its own, its output in ``log``; reaped at the end."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        reap([proc])


def row(page: sync_api.Page, ident: str) -> sync_api.Locator:
    return page.locator(f"#run-table tr[data-id='{ident}']")


def zoom(page: sync_api.Page, key: str) -> dict[str, float]:
    """Drag across the middle of a chart, as a user zooms in; the x range it then shows, its plot marked."""
    box = page.locator(f"[data-chart='{key}'] .u-over").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=5)
    page.mouse.up()
    page.evaluate(NEXT_FRAMES, 2)
    assert page.evaluate("(key) => viewerCharts.charts.get(key).zoomed", key)
    page.evaluate(PLOT_MARK, key)
    return page.evaluate(X_RANGE, key)


def test_the_page_lists_runs_overlays_the_selected_focuses_one_and_stops_only_it(
        tmp_path, trainers, viewers, finished_run):
    root = tmp_path / "runs"
    shutil.copytree(finished_run, root / "done")
    a, b = (trainers(*LONG, "--set", f"run.seed={seed}", run_dir=root / name) for seed, name in ((1, "a"), (2, "b")))
    viewer = viewers(None, None, "--runs", str(root), "--token", "page-test")
    wait_for(lambda: all(r["link"] == "online" for r in viewer.get("/api/runs")["runs"] if r["id"] in ("a", "b")),
             timeout=120, what="both trainers followed")
    with open_page(f"{viewer.url}/#token={viewer.token}") as page:
        page.wait_for_function("() => document.querySelectorAll('#run-table tbody tr').length === 3")
        assert page.evaluate(CHECKED) == ["a", "b"]  # live runs are overlaid by default
        page.wait_for_function(CHART_SHOWS, arg=["episodes:reward", 2, 6], timeout=60_000)
        page.wait_for_function(CHART_SHOWS, arg=["episodes:lines", 2, 6])
        zoomed = zoom(page, "episodes:reward")
        row(page, "done").locator("input").check()
        page.wait_for_function(CHART_SHOWS, arg=["episodes:reward", 3, 9], timeout=30_000)
        assert page.evaluate(X_RANGE, "episodes:reward") == zoomed  # a run joined: same plot, same zoom
        assert "seed" in page.locator("#run-table thead").inner_text()

        row(page, "b").locator("td.name").click()
        page.wait_for_function("() => document.getElementById('focus-name').textContent === 'b'")
        page.wait_for_function("() => document.getElementById('replay-info').textContent"
                               ".includes('a raw-board run')")  # nothing to replay, and the page says why
        page.wait_for_function(COLOURED_CELLS, timeout=60_000)
        page.wait_for_function("() => document.querySelector('#strip .tile[data-id=a]:not([hidden])')")
        page.wait_for_function(VALUES_SHOWN, timeout=30_000)
        for width, height in SCREENS:
            page.set_viewport_size({"width": width, "height": height})
            page.wait_for_timeout(300)  # a resize is laid out on the next frames
            page.screenshot(path=str(tmp_path / f"page-{width}x{height}.png"))
            assert page.evaluate(OVERLAPS) == [], f"overlapping boxes at {width}x{height}"

        page.locator("button[data-cmd=stop]").click()
        page.wait_for_function("() => document.getElementById('ack').textContent"
                               ".startsWith('b: stop: trainer says')")
        assert b.wait(60) == 0
        page.wait_for_function("() => document.querySelector(\"#run-table tr[data-id=b]\").textContent"
                               ".includes('stopped')", timeout=30_000)
        assert a.proc.poll() is None


def test_the_page_reconnects_after_a_viewer_restart_and_shows_the_whole_history_again(trainers, viewers, tmp_path):
    trainer = trainers(*LONG)
    port = free_port()
    viewer = viewers(trainer.pub, trainer.ctl, port=port)
    with open_page(viewer.url + "/") as page:
        page.wait_for_function(CHART_SHOWS, arg=["episodes:reward", 1, 5], timeout=60_000)
        seen = int(page.locator("[data-chart='episodes:reward']").get_attribute("data-points"))
        viewer.proc.terminate()
        assert viewer.proc.wait(10) == 0
        page.wait_for_function("() => document.getElementById('link').textContent === 'reconnecting'")
        viewers(trainer.pub, trainer.ctl, port=port)
        page.wait_for_function("() => document.getElementById('link').textContent === 'connected'")
        page.wait_for_function(CHART_SHOWS, arg=["episodes:reward", 1, seen + 1], timeout=60_000)


SB3_SCRIPT = """
import sys
from stable_baselines3 import PPO
from tetriszmq.stream.callback import StreamCallback
model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, device="cpu")
model.learn(10_000_000, callback=StreamCallback(pub=sys.argv[1], ctl=sys.argv[2], metrics_every=0.2))
"""


def test_a_run_of_an_sb3_script_on_another_env_is_shown_without_board_or_lines(viewers, tmp_path):
    pub, ctl = free_endpoint(), free_endpoint()
    with streaming(tmp_path / "sb3.log", "-c", SB3_SCRIPT, pub, ctl), open_page(viewers(pub, ctl).url + "/") as page:
        page.wait_for_function(CHART_SHOWS, arg=["episodes:reward", 1, 5], timeout=120_000)
        page.wait_for_function(CHART_SHOWS, arg=["episodes:length", 1, 5])
        page.wait_for_function("() => document.getElementById('focus-name').textContent.startsWith('sb3-')")
        assert page.locator("#game").is_hidden()
        assert page.locator("[data-chart='episodes:lines']:not([hidden])").count() == 0
        assert "lines" not in page.locator("#run-table thead").inner_text()


# Pixels of a chart's canvas in one colour ("r,g,b").
PIXELS_OF = """([key, colour]) => {
  const canvas = document.querySelector(`[data-chart="${key}"] canvas`);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) if (`${data[i]},${data[i + 1]},${data[i + 2]}` === colour) n++;
  return n;
}"""
FORMAT = "async (values) => { const { format } = await import('/static/charts.js'); return values.map(format); }"


def test_a_run_of_one_episode_is_a_dot_and_numbers_read_as_numbers(viewers, tmp_path, finished_run):
    root = tmp_path / "runs"
    shutil.copytree(finished_run, root / "one")
    journal = root / "one" / "metrics.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if orjson.loads(line).get("topic") == "episode")
    journal.write_bytes(b"".join(lines[:first + 1]))
    with open_page(viewers(None, None, "--runs", str(root)).url + "/") as page:
        page.wait_for_function(CHART_SHOWS, arg=["episodes:reward", 1, 1], timeout=60_000)
        page.wait_for_function(PIXELS_OF, arg=["episodes:reward", "0,200,240"])  # the run's colour (#00c8f0)
        # What a smoothed run of zeros after a one decays to, a learning rate, a loss, a count.
        assert page.evaluate(FORMAT, [2.9e-47, -1e-12, 1e-4, 0.25, 3]) == ["0", "0", "1.0e-4", "0.25", "3"]


# The values drawCandidates writes (text, x, y, width) on a 200x400 board (cells of 20 px).
LABELS_DRAWN = """async (candidates) => {
  const { drawCandidates } = await import('/static/board.js');
  const canvas = document.createElement('canvas');
  canvas.width = 200;
  canvas.height = 400;
  const ctx = canvas.getContext('2d'), drawn = [], fill = ctx.fillText.bind(ctx);
  ctx.fillText = (text, x, y) => { drawn.push([text, x, y, ctx.measureText(text).width]); fill(text, x, y); };
  drawCandidates(canvas, candidates, candidates[0].action);
  return drawn;
}"""


def test_values_of_close_placements_do_not_print_over_each_other(viewers, tmp_path):
    # Three placements of an I piece on the floor, a cell apart: each value is wider than a cell.
    candidates = [{"action": a, "score": score, "cells": [[19, a + c] for c in range(4)]}
                  for a, score in ((0, 12.345), (1, 11.9), (2, -3.25))]
    with open_page(viewers(None, None, "--runs", str(tmp_path / "none")).url + "/") as page:
        drawn = page.evaluate(LABELS_DRAWN, candidates)
    height = 20 * 0.6
    boxes = [(x, y, x + w, y + height) for _, x, y, w in drawn]
    assert all(a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
               for i, a in enumerate(boxes) for b in boxes[i + 1:]), drawn
    assert drawn[0][:3] == ["12.3", 2, 382]  # the best's value on its top-left cell, as before
    assert {text for text, *_ in drawn} <= {"12.3", "11.9", "-3.25"} and len(drawn) >= 2


def ghosts_where_the_frame_says(page: sync_api.Page) -> bool:
    """The focused board shows ghost cells exactly at its frame's candidates' cells."""
    seen = page.evaluate(CELLS, "board")
    frame = seen["shown"]
    if not frame or not frame.get("candidates"):
        return False
    wanted = {(r, c) for candidate in frame["candidates"] for r, c in candidate["cells"]}
    ghosts = {(r, c) for r, row in enumerate(seen["cells"]) for c, colour in enumerate(row) if colour == GHOST}
    return ghosts == wanted


def cells_match(seen: dict, rows: list[list[int]]) -> bool:
    """Every cell of the canvas has its kind's colour, and empty cells none."""
    return all(seen["cells"][r][c] == KIND_COLOURS[kind] if kind else seen["cells"][r][c] not in
               KIND_COLOURS.values() for r, row in enumerate(rows) for c, kind in enumerate(row))


def replay_step(page: sync_api.Page) -> int:
    return page.evaluate("() => (document.getElementById('replay-board').shown || {step: -1}).step")


def test_the_page_shows_the_agents_candidates_and_replays_a_recorded_game_beside_the_live_board(
        tmp_path, trainers, viewers):
    root = tmp_path / "runs"
    root.mkdir()
    trainers(*LONG, config=TINY_PLACEMENT, run_dir=root / "live")
    viewer = viewers(None, None, "--runs", str(root), "--token", "page-test")
    with open_page(f"{viewer.url}/#token={viewer.token}") as page:
        page.wait_for_function("() => (document.getElementById('board').shown || {}).candidates",
                               timeout=120_000)
        assert not ghosts_where_the_frame_says(page), "candidates are off until asked for"
        page.locator("#show-candidates").click()
        wait_for(lambda: ghosts_where_the_frame_says(page), timeout=30, what="ghost cells at the candidates")
        page.locator("#show-candidates").click()
        page.wait_for_function("() => document.getElementById('show-candidates').ariaPressed === 'false'")
        page.evaluate(NEXT_FRAMES, 2)
        assert not any(GHOST in row for row in page.evaluate(CELLS, "board")["cells"])

        page.wait_for_function("() => !document.getElementById('replay-best').disabled", timeout=30_000)
        page.locator("button[data-cmd=pause]").click()  # the live board (and its records) stand still from here
        page.wait_for_function("() => document.getElementById('focus-state').textContent === 'paused'")
        page.evaluate(NEXT_FRAMES, 2)
        live = page.evaluate(CELLS, "board")
        best = viewer.get("/api/runs/live/episodes")["records"][0]
        assert best["name"] == "best"

        page.locator("#replay-best").click()
        page.wait_for_function("() => !document.getElementById('replay-play').disabled")
        assert replay_step(page) == 0
        page.select_option("#replay-speed", "100")
        page.locator("#replay-play").click()
        page.wait_for_function("(end) => document.getElementById('replay-board').shown.step === end",
                               arg=best["pieces"], timeout=30_000)
        page.wait_for_function("() => document.getElementById('replay-play').textContent === 'Play'")

        for piece in (best["pieces"] // 2, 1, best["pieces"]):  # the scrubber, either way
            page.eval_on_selector("#replay-scrub", "(el, v) => { el.value = v; el.dispatchEvent("
                                  "new Event('input')); }", piece)
            page.wait_for_function("(k) => document.getElementById('replay-board').shown.step === k", arg=piece)
            seen = page.evaluate(CELLS, "replay-board")
            served = viewer.get(f"/api/runs/live/episodes/best?from={piece}&count=1")["frames"][0]
            assert seen["shown"] == served
            assert cells_match(seen, [[int(d) for d in served["board"][r * 10:r * 10 + 10]] for r in range(20)])

        page.eval_on_selector("#replay-scrub", "(el) => { el.value = 0; el.dispatchEvent(new Event('input')); }")
        page.wait_for_function("() => document.getElementById('replay-board').shown.step === 0")
        page.select_option("#replay-speed", "10")
        page.locator("#replay-play").click()
        page.wait_for_function("() => document.getElementById('replay-board').shown.step > 0")
        page.locator("#replay-play").click()  # pause
        paused_at = replay_step(page)
        page.evaluate(NEXT_FRAMES, 30)  # half a second at 20 pieces a second, had it gone on playing
        assert replay_step(page) == paused_at < best["pieces"]
        page.locator("#replay-step").click()
        page.wait_for_function("(k) => document.getElementById('replay-board').shown.step === k",
                               arg=paused_at + 1)

        after = page.evaluate(CELLS, "board")
        assert after == live, "the replay never touched the live board"
        assert cells_match(after, live["shown"]["board"])


def test_the_placement_a_played_game_is_about_to_make_is_outlined_among_the_candidates(viewers, tmp_path):
    pub, ctl = free_endpoint(), free_endpoint()
    with (streaming(tmp_path / "play.log", "-m", "tetriszmq", "play", "--agent", "dellacherie", "--pps", "2",
                    "--pub", pub, "--ctl", ctl),
          open_page(viewers(pub, ctl).url + "/") as page):
        page.wait_for_function("() => (document.getElementById('board').shown || {}).chosen !== undefined",
                               timeout=60_000)
        page.locator("#show-candidates").click()
        wait_for(lambda: chosen_outlined(page), timeout=30, what="the chosen placement outlined")


def chosen_outlined(page: sync_api.Page) -> bool:
    """White along the bottom edge of the chosen placement's cells, and of no other candidate's."""
    seen = page.evaluate(EDGES, "board")
    frame = seen["shown"]
    if not frame or not frame.get("candidates") or not ghosts_where_the_frame_says(page):
        return False
    chosen = {tuple(cell) for k in frame["candidates"] if k["action"] == frame["chosen"] for cell in k["cells"]}
    others = {tuple(cell) for k in frame["candidates"] for cell in k["cells"]} - chosen
    white = {(r, c) for r, row in enumerate(seen["cells"]) for c, colour in enumerate(row) if colour == "255,255,255"}
    return bool(chosen) and chosen <= white and not others & white


# The replay panel alone, as index.html has it, with the player on `window.player`.
REPLAY_PAGE = """<!doctype html>
<section id="replay"><button id="replay-best"></button><select id="replay-list"></select>
<div id="replay-game"><canvas id="replay-board" width="300" height="600"></canvas>
<canvas id="replay-next" width="60" height="200"></canvas><select id="replay-speed"><option>1</option></select></div>
<button id="replay-back"></button><button id="replay-play"></button><button id="replay-step"></button>
<input id="replay-scrub" type="range" min="0" max="0" value="0"><p id="replay-info"></p></section>
<script type="module">
import { ReplayPlayer } from "/static/replay.js";
const el = {};
for (const role of ["best", "list", "game", "board", "next", "speed", "play", "step", "back", "scrub", "info"]) {
  el[role] = document.getElementById(`replay-${role}`);
}
window.player = new ReplayPlayer({ panel: document.getElementById("replay"), ...el });
window.player.follow("long");
</script>"""
# Input events as a drag across the scrubber delivers them, one per chunk crossed.
DRAG = """([last, every]) => {
  const scrub = document.getElementById("replay-scrub");
  for (let piece = every; piece <= last; piece += every) {
    scrub.value = piece;
    scrub.dispatchEvent(new Event("input"));
  }
}"""
SHOWN = "(k) => (document.getElementById('replay-board').shown || {}).step === k"


class ScriptedViewer:
    """The viewer's replay routes for one long recorded game, on page.route; it counts the chunks asked for.

    ``hold``: chunk requests wait in `held` instead of being answered; ``listing_fails``: listings are errors.
    """

    def __init__(self, pieces: int) -> None:
        self.pieces = pieces
        self.asked: list[int] = []
        self.hold = False
        self.held: list[sync_api.Route] = []
        self.listing_fails = False

    def serve(self, route: sync_api.Route) -> None:
        url = urlsplit(route.request.url)
        if url.path == "/":
            route.fulfill(body=REPLAY_PAGE, content_type="text/html")
        elif url.path.startswith("/static/"):
            route.fulfill(path=ROOT / "viewer" / url.path.lstrip("/"), content_type="text/javascript")
        elif url.path == "/api/runs/long/episodes":
            route.fulfill(json={"ok": False, "error": "listing failed"} if self.listing_fails else {
                "ok": True, "records": [{"name": "best", "episode": 1, "lines": 0, "pieces": self.pieces}]})
        elif url.path == "/api/runs/long/episodes/best":
            first = int(parse_qs(url.query)["from"][0])
            self.asked.append(first)
            if self.hold:
                self.held.append(route)
            else:
                route.fulfill(body=self.chunk(first), content_type="application/json")
        else:
            route.fulfill(status=404, json={"ok": False, "error": "not scripted"})

    def chunk(self, first: int) -> bytes:
        frames = [{"board": "0" * 200, "next": [], "step": k, "lines": 0, "score": 0}
                  for k in range(first, min(first + 200, self.pieces + 1))]
        record = {"episode": 1, "seed": 1, "lines": 0, "score": 0, "pieces": self.pieces, "frames": self.pieces + 1}
        return orjson.dumps({"ok": True, "record": record, "from": first, "frames": frames})

    def release(self) -> None:
        """Answer the latest held request (the page cancelled the others)."""
        route = self.held.pop()
        route.fulfill(body=self.chunk(self.asked[-1]), content_type="application/json")


def scrub(page: sync_api.Page, piece: int) -> None:
    page.eval_on_selector("#replay-scrub", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", piece)


def test_a_long_replay_fetches_only_where_the_scrubber_rests_cancels_the_rest_and_keeps_few_chunks():
    viewer = ScriptedViewer(pieces=20_000)  # 101 chunks of 200 frames
    with open_page("http://replay.test/", viewer.serve) as page:
        cancelled: list[str] = []
        page.on("requestfailed", lambda request: cancelled.append(request.url))
        page.wait_for_function("() => !document.getElementById('replay-best').disabled")
        page.locator("#replay-best").click()
        page.wait_for_function(SHOWN, arg=0)

        page.evaluate(DRAG, [20_000, 200])  # a drag across the whole game
        page.wait_for_function(SHOWN, arg=20_000)
        assert viewer.asked == [0, 20_000], "one fetch where the drag rested, none per chunk crossed"

        viewer.hold = True
        scrub(page, 5000)
        page.wait_for_function("() => player.loading.has(25)")
        scrub(page, 9000)  # before piece 5000's chunk came
        page.wait_for_function("() => player.loading.has(45) && !player.loading.has(25)")
        wait_for(lambda: page.evaluate("1") and viewer.asked[-1:] == [9000], timeout=10,  # its route reached us
                 what="the page's fetch of piece 9000, held")
        viewer.release()
        page.wait_for_function(SHOWN, arg=9000)
        assert viewer.asked[-2:] == [5000, 9000]
        superseded = lambda: any("from=5000" in url for url in cancelled)  # noqa: E731
        wait_for(lambda: page.evaluate("1") and superseded(), timeout=10,  # playwright delivers events in its calls
                 what="the superseded request cancelled")

        viewer.hold = False
        kept = page.evaluate("async () => { for (let k = 0; k < 60; k++) await player.show(k * 200); "
                             "return player.chunks.size; }")
        assert kept <= 32

        page.locator("#replay-play").click()
        page.wait_for_function("() => player.playing")
        viewer.listing_fails = True
        playing, info = page.evaluate("async () => { await player.list(); return [player.playing, "
                                      "document.getElementById('replay-info').textContent]; }")
        assert playing and "listing failed" not in info and info.startswith("long, best (episode 1")


def test_a_long_note_stays_on_one_short_line_and_the_run_table_fits_its_panel(viewers, tmp_path):
    # A --trainer nobody answers is listed at once, with a note that is information, not a warning (a remote
    # trainer's files are not here).
    viewer = viewers(free_endpoint(), free_endpoint(), "--runs", str(tmp_path / "none"))
    [entry] = viewer.get("/api/runs")["runs"]
    assert entry["note"] is None and "its files are not under --runs" in entry["about"]
    with open_page(viewer.url + "/") as page:
        page.wait_for_function("() => document.querySelector('#run-table tbody tr .note')")
        shown = page.evaluate("""() => { const note = document.querySelector('.note');
          return [note.classList.contains('about'), note.textContent.includes('⚠'), getComputedStyle(note).color]; }""")
        assert shown == [True, False, "rgb(138, 147, 166)"]  # --muted, not --warn
        assert page.locator("#summary").inner_text().startswith("1 run, ")  # not "1 runs"
        for width, height in SCREENS:
            page.set_viewport_size({"width": width, "height": height})
            page.wait_for_timeout(300)  # a resize is laid out on the next frames
            fits = page.evaluate("""() => {
              const scroll = document.querySelector('.runs-scroll'), note = document.querySelector('.note');
              return [scroll.scrollWidth <= scroll.clientWidth, note.getBoundingClientRect().height < 24,
                      note.title.includes('its files are not under --runs')];
            }""")
            assert fits == [True, True, True], f"at {width}x{height}"


def test_config_columns_are_the_keys_runs_with_a_config_differ_in_not_those_a_remote_run_lacks(viewers, tmp_path):
    root = tmp_path / "runs"
    for name, rate in (("slow", 0.001), ("fast", 0.0003661138620693672)):
        (root / name).mkdir(parents=True)
        (root / name / "config.toml").write_text(
            f'[agent]\ndevice = "cpu"\ntorch_threads = 1\n\n[agent.params]\nlearning_rate = {rate}\n')
    viewer = viewers(free_endpoint(), free_endpoint(), "--runs", str(root))  # a remote run: no config at all
    with open_page(viewer.url + "/") as page:
        page.wait_for_function("() => document.querySelectorAll('#run-table tbody tr').length === 3")
        head = page.locator("#run-table thead").inner_text()
        assert "params.learning_rate" in head
        assert "agent.device" not in head and "agent.torch_threads" not in head, head
        cell = row(page, "fast").locator("td").nth(5)  # checkbox, name, state, algo, seed, then the config column
        assert (cell.inner_text(), cell.get_attribute("title")) == ("0.0003661", "0.0003661138620693672")


# The text a run's row shows in one column of the run list.
CELL_TEXT = """([ident, key]) => {
  const keys = [...document.querySelectorAll('#run-table thead th')].map((th) => th.dataset.key);
  return document.querySelector(`#run-table tr[data-id="${ident}"]`).cells[keys.indexOf(key)].textContent;
}"""


def test_a_click_across_a_run_list_update_still_focuses_the_row_pressed(tmp_path, trainers, viewers, finished_run):
    root = tmp_path / "runs"
    shutil.copytree(finished_run, root / "done")
    trainers(*LONG, run_dir=root / "live")
    viewer = viewers(None, None, "--runs", str(root))
    with open_page(viewer.url + "/") as page:
        page.wait_for_function("() => document.getElementById('focus-name').textContent === 'live'", timeout=120_000)
        page.evaluate("() => { window.doneRow = document.querySelector('#run-table tr[data-id=done]'); }")
        box = row(page, "done").locator("td.name").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        shown = page.evaluate(CELL_TEXT, ["live", "episodes"])
        page.wait_for_function(f"(seen) => ({CELL_TEXT})(['live', 'episodes']) !== seen", arg=shown, timeout=60_000)
        page.mouse.up()  # the live run's counters were updated between the press and the release
        page.wait_for_function("() => document.getElementById('focus-name').textContent === 'done'")
        assert page.evaluate("() => document.querySelector('#run-table tr[data-id=done]') === window.doneRow")


# Whether a chart is drawn at its plot's width, two points per pixel column, and that width.
FOLDED = """(key) => {
  const chart = viewerCharts.charts.get(key), width = chart.plotEl.clientWidth;
  return chart.plot.width === width && chart.plot.data[0].length === 2 * width ? width : 0;
}"""


def test_a_chart_refolds_its_lines_onto_its_new_width_when_the_window_is_resized(viewers, tmp_path, finished_run):
    root = tmp_path / "runs"
    shutil.copytree(finished_run, root / "done")  # finished: nothing but the resize redraws its charts
    viewer = viewers(None, None, "--runs", str(root))
    with open_page(viewer.url + "/") as page:
        page.wait_for_function(CHART_SHOWS, arg=["episodes:reward", 1, 2], timeout=60_000)
        page.wait_for_function(FOLDED, arg="episodes:reward")
        before = page.evaluate(FOLDED, "episodes:reward")
        page.set_viewport_size({"width": 1920, "height": 1080})
        page.wait_for_function(f"(before) => ![0, before].includes(({FOLDED})('episodes:reward'))", arg=before)


def test_a_run_listed_before_its_trainer_was_known_to_run_joins_the_charts_once_it_is(tmp_path, trainers, viewers,
                                                                                      finished_run):
    """A run folder shows up (its config.toml written) a moment before its trainer says where it streams; a page
    that first listed it then, as not live, never overlaid it or showed its board."""
    root = tmp_path / "runs"
    shutil.copytree(finished_run, root / "done")
    (root / "late").mkdir()
    shutil.copy(finished_run / "config.toml", root / "late" / "config.toml")
    viewer = viewers(None, None, "--runs", str(root), "--token", "page-test")
    with open_page(f"{viewer.url}/#token={viewer.token}") as page:
        page.wait_for_function("() => document.querySelectorAll('#run-table tbody tr').length === 2")
        assert "late" not in page.evaluate(CHECKED)
        trainers(*LONG, run_dir=root / "late")
        page.wait_for_function(f"() => ({CHECKED})().includes('late')", timeout=120_000)
        page.wait_for_function("() => document.getElementById('focus-name').textContent === 'late'")
