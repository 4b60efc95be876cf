"""The page in a real headless Chromium, against real trainers and a real viewer."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, free_endpoint, free_port, reap, wait_for

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


def browser_page(playwright: sync_api.Playwright, url: str, errors: list, width: int = 1280, height: int = 800):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
    page = browser.new_page(viewport={"width": width, "height": height})
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(url)
    return browser, page


def row(page: sync_api.Page, ident: str) -> sync_api.Locator:
    return page.locator(f"#run-table tr[data-id='{ident}']")


def test_the_page_lists_runs_overlays_the_selected_focuses_one_and_stops_only_it(
        tmp_path, trainers, viewers, finished_run):
    root = tmp_path / "runs"
    shutil.copytree(finished_run, root / "done")
    a, b = (trainers(*LONG, "--set", f"run.seed={seed}", run_dir=root / name) for seed, name in ((1, "a"), (2, "b")))
    viewer = viewers(None, None, "--runs", str(root), "--token", "page-test")
    wait_for(lambda: all(r["link"] == "online" for r in viewer.get("/api/runs")["runs"] if r["id"] in ("a", "b")),
             timeout=120, what="both trainers followed")
    errors: list[Exception] = []
    with sync_api.sync_playwright() as playwright:
        browser, page = browser_page(playwright, f"{viewer.url}/#token={viewer.token}", errors)
        try:
            page.wait_for_function("() => document.querySelectorAll('#run-table tbody tr').length === 3")
            assert page.evaluate(CHECKED) == ["a", "b"]  # live runs are overlaid by default
            page.wait_for_function(CHART_SHOWS, arg=["episodes:reward", 2, 6], timeout=60_000)
            page.wait_for_function(CHART_SHOWS, arg=["episodes:lines", 2, 6])
            row(page, "done").locator("input").check()
            page.wait_for_function(CHART_SHOWS, arg=["episodes:reward", 3, 9], timeout=30_000)
            assert "seed" in page.locator("#run-table thead").inner_text()

            row(page, "b").locator("td.name").click()
            page.wait_for_function("() => document.getElementById('focus-name').textContent === 'b'")
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
            assert errors == []
        finally:
            browser.close()


def test_the_page_reconnects_after_a_viewer_restart_and_shows_the_whole_history_again(trainers, viewers, tmp_path):
    trainer = trainers(*LONG)
    port = free_port()
    viewer = viewers(trainer.pub, trainer.ctl, port=port)
    errors: list[Exception] = []
    with sync_api.sync_playwright() as playwright:
        browser, page = browser_page(playwright, viewer.url + "/", errors)
        try:
            page.wait_for_function(CHART_SHOWS, arg=["episodes:reward", 1, 5], timeout=60_000)
            seen = int(page.locator("[data-chart='episodes:reward']").get_attribute("data-points"))
            viewer.proc.terminate()
            assert viewer.proc.wait(10) == 0
            page.wait_for_function("() => document.getElementById('link').textContent === 'reconnecting'")
            viewers(trainer.pub, trainer.ctl, port=port)
            page.wait_for_function("() => document.getElementById('link').textContent === 'connected'")
            page.wait_for_function(CHART_SHOWS, arg=["episodes:reward", 1, seen + 1], timeout=60_000)
            assert errors == []
        finally:
            browser.close()


SB3_SCRIPT = """
import sys
from stable_baselines3 import PPO
from tetriszmq.stream.callback import StreamCallback
model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, device="cpu")
model.learn(10_000_000, callback=StreamCallback(pub=sys.argv[1], ctl=sys.argv[2], metrics_every=0.2))
"""


def test_a_run_of_an_sb3_script_on_another_env_is_shown_without_board_or_lines(viewers, tmp_path):
    pub, ctl = free_endpoint(), free_endpoint()
    with open(tmp_path / "sb3.log", "wb") as out:
        script = subprocess.Popen([sys.executable, "-c", SB3_SCRIPT, pub, ctl], cwd=ROOT, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        viewer = viewers(pub, ctl)
        errors: list[Exception] = []
        with sync_api.sync_playwright() as playwright:
            browser, page = browser_page(playwright, viewer.url + "/", errors)
            try:
                page.wait_for_function(CHART_SHOWS, arg=["episodes:reward", 1, 5], timeout=120_000)
                page.wait_for_function(CHART_SHOWS, arg=["episodes:length", 1, 5])
                page.wait_for_function("() => document.getElementById('focus-name').textContent.startsWith('sb3-')")
                assert page.locator("#game").is_hidden()
                assert page.locator("[data-chart='episodes:lines']:not([hidden])").count() == 0
                assert "lines" not in page.locator("#run-table thead").inner_text()
                assert errors == []
            finally:
                browser.close()
    finally:
        reap([script])
