"""The page in a real headless Chromium, against a real trainer and viewer."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import free_port, wait_for

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

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
CHART_HAS_POINTS = "(id) => Number(document.getElementById(id).dataset.points) >= 3"
SCALARS_HAVE_POINTS = """() => [...document.querySelectorAll("#scalars canvas")]
  .filter((c) => Number(c.dataset.points) >= 2).length >= 3"""


def points(page: sync_api.Page, chart: str) -> int:
    return page.evaluate("(id) => Number(document.getElementById(id).dataset.points)", chart)


def test_the_page_draws_the_board_and_charts_and_stops_the_trainer(trainers, viewers):
    trainer = trainers("--set", "train.max_timesteps=100000")
    port = free_port()
    viewer = viewers(trainer.pub, trainer.ctl, "--token", "page-test", port=port)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            errors: list[Exception] = []
            read_only = browser.new_page()
            read_only.goto(viewer.url + "/")
            assert read_only.locator("button[data-cmd=stop]").is_disabled()

            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda error: errors.append(error))
            page.goto(f"{viewer.url}/#token={viewer.token}")
            page.wait_for_function(COLOURED_CELLS, timeout=60_000)
            page.wait_for_function(CHART_HAS_POINTS, arg="chart-lines", timeout=60_000)
            page.wait_for_function(CHART_HAS_POINTS, arg="chart-reward")
            page.wait_for_function(SCALARS_HAVE_POINTS, timeout=60_000)
            assert page.locator("#link").inner_text() == "live"

            # The viewer restarts: the page reconnects by itself and shows the whole history again.
            seen = points(page, "chart-reward")
            viewer.proc.terminate()
            assert viewer.proc.wait(10) == 0
            page.wait_for_function("() => document.getElementById('link').textContent === 'reconnecting'")
            viewers(trainer.pub, trainer.ctl, "--token", "page-test", port=port)
            # Episodes may still arrive between reading `seen` and the kill: wait for the link to be live too.
            page.wait_for_function(f"() => document.getElementById('link').textContent === 'live' && "
                                   f"Number(document.getElementById('chart-reward').dataset.points) > {seen}",
                                   timeout=30_000)

            page.locator("button[data-cmd=stop]").click()
            page.wait_for_function("() => document.getElementById('ack').textContent.includes('stopping')")
            assert trainer.wait(60) == 0
            page.wait_for_function("() => document.getElementById('trainer-state').textContent === 'stopped'")
            assert errors == []
        finally:
            browser.close()


def test_a_page_opened_after_the_run_ended_shows_it_stopped(trainers, viewers):
    """The snapshot's parts are applied in seq order: its last heartbeat (running) precedes the stopped status."""
    trainer = trainers()
    viewer = viewers(trainer.pub, trainer.ctl)
    assert trainer.wait(120) == 0
    run = viewer.status()["run"]
    wait_for(lambda: viewer.status()["trainer"]["link"] == "offline", timeout=30)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(viewer.url + "/")
            page.wait_for_function(f"() => document.getElementById('s-run').textContent === {run!r}")
            assert page.locator("#trainer-state").inner_text() == "stopped"
        finally:
            browser.close()
