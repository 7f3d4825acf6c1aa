"""Browser tests of the cell tools (static/cells.js) on the shipped trained prompts: from a pinned popover, track a
candidate token (the trajectory chart appears below the grid) and show the code behind the cell (escaped, with a copy
button). The trajectory screenshot is kept at docs/figures/trajectory.png for people to look at."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from future_lens.service import LensService
from tests.server_helpers import serving
from tests.test_browser import ARTIFACTS, XSS_TEXT, Watched
from tests.test_browser import browser as chromium_browser

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


browser = chromium_browser  # the module-scoped Chromium fixture of tests/test_browser.py, shared by name


@pytest.fixture
def watcher(browser):
    watched = Watched(browser)
    yield watched
    watched.close()


@pytest.fixture(scope="module")
def cells_url(smollm2, tmp_path_factory):
    """A server on the model's shipped soft prompts (checkpoints/<model>), so the chart shows the trained lens."""
    app = create_app(Settings(db_path=tmp_path_factory.mktemp("db") / "grids.sqlite3"), service=LensService(smollm2))
    with serving(app) as url:
        yield url


def open_grid(page, base_url: str, request: dict) -> None:
    """Compute a grid through the JSON API and open its permalink page (the stored grid, as its author saw it)."""
    answer = httpx.post(f"{base_url}/lens", json=request, timeout=600)
    assert answer.status_code == 200, answer.text
    page.goto(base_url + answer.json()["permalink"])
    page.wait_for_selector(".result[data-grid-id] table.grid")


def pin_last_cell_of_row(page, row: int):
    cell = page.locator("table.grid tbody tr").nth(row).locator("td.cell").last
    cell.click()
    popover = page.locator("#popover.pinned")
    popover.wait_for(state="visible")
    return cell, popover


def test_track_a_candidate_shows_its_trajectory(cells_url, watcher):
    page = watcher.page
    open_grid(page, cells_url, {"text": "Marty McFly from", "n_future": 3, "layers": "::4"})
    _, popover = pin_last_cell_of_row(page, 4)  # layer 16, after " from"
    candidates = popover.locator("button.track-token")
    assert candidates.count() == 5
    first = candidates.first.inner_text()
    candidates.first.click()
    chart = page.locator(".track-panel img.track-chart")
    chart.wait_for(state="visible", timeout=120_000)
    page.wait_for_function("() => document.querySelector('.track-panel img.track-chart').naturalWidth > 0")
    panel = page.locator(".track-panel")
    assert first in panel.locator("h3").inner_text()
    assert "position 5" in panel.locator("h3").inner_text()
    svg_link = panel.locator("a", has_text="SVG").get_attribute("href")
    assert svg_link.startswith("/g/") and "/track.svg?token=" in svg_link and svg_link.endswith("&position=5")
    page.keyboard.press("Escape")
    FIGURES.mkdir(parents=True, exist_ok=True)
    panel.scroll_into_view_if_needed()
    panel.screenshot(path=str(FIGURES / "trajectory.png"))
    page.screenshot(path=str(ARTIFACTS / "trajectory-page.png"), full_page=True)
    panel.locator("button.track-close").click()
    assert page.locator(".track-panel").count() == 0
    assert not watcher.problems, watcher.problems


def test_code_behind_a_cell_is_shown_as_text_with_copy(cells_url, watcher):
    page = watcher.page
    open_grid(page, cells_url, {"text": XSS_TEXT, "method": "logit", "layers": [0, 15, 29]})
    _, popover = pin_last_cell_of_row(page, 1)
    popover.locator("button.cell-code").click()
    code = popover.locator(".code-box pre")
    page.wait_for_function("() => document.querySelector('#popover .code-box pre').textContent.includes('predicted')")
    text = code.inner_text()
    assert "from nnsight import save" in text and "TEXT = " in text and "<script>alert(1)</script>" in text
    assert popover.locator(".code-box script, .code-box img").count() == 0  # shown as text, never as HTML
    assert popover.locator("button.copy-code").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "cell-code.png"))
    assert not watcher.dialogs and not watcher.problems, (watcher.dialogs, watcher.problems)
