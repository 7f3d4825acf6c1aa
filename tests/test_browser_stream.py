"""Browser tests of streamed grids (Playwright + Debian Chromium against a real uvicorn server): rows arrive before
the grid is complete, Cancel stops the work and frees the worker, and a link with a selected cell reopens with that
cell's popover shown."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest
import uvicorn

from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from tests.test_browser import ARTIFACTS, Watched, browser  # noqa: F401 (fixture)
from tests.webapp_helpers import service_with_prompts

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

LONG_TEXT = "The doctor said that he would call the family as soon as the results of the tests came back"


@pytest.fixture(scope="module")
def served(smollm2, tmp_path_factory):
    """(base URL, app) of a uvicorn server in a thread, on a socket bound to a free loopback port."""
    service = service_with_prompts(tmp_path_factory.mktemp("prompts"), smollm2)
    app = create_app(Settings(db_path=tmp_path_factory.mktemp("db") / "grids.sqlite3"), service=service)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def page(browser):  # noqa: F811 (the imported fixture)
    watched = Watched(browser)
    yield watched.page
    assert not watched.problems, watched.problems
    watched.close()


def start(page, base_url: str, text: str, stride: int, n_future: int = 3) -> None:
    page.goto(base_url + "/")
    page.fill("#n_future", str(n_future))
    page.fill("#stride", str(stride))
    page.fill("#text", text)
    page.click("#submit")


def rows_done(page) -> tuple[int, int]:
    """(computed rows, pending rows) on screen now."""
    done = page.locator("#result tr[data-row]:not(.pending)").count()
    return done, page.locator("#result tr[data-row].pending").count()


#: Records (computed rows, pending rows, rows-done counter) after every change of the result, so what the page
#: showed between two stream events is checked afterwards, whatever the machine's speed.
WATCH_ROWS = """() => {
  window.rowSnapshots = [];
  new MutationObserver(() => {
    const done = document.querySelectorAll('#result tr[data-row]:not(.pending)').length;
    const pending = document.querySelectorAll('#result tr[data-row].pending').length;
    const counter = document.getElementById('rows-done');
    window.rowSnapshots.push([done, pending, counter ? Number(counter.textContent) : null]);
  }).observe(document.getElementById('result'), {childList: true, subtree: true, characterData: true});
}"""


def test_rows_arrive_before_the_grid_is_complete(served, page) -> None:
    """Layer stride 3 (11 rows, streamed in two waves: the middle row first, then the other 10): small
    enough to finish well within the timeout on a busy 2-core machine, big enough that rows show while others are
    pending."""
    base_url, _ = served
    page.goto(base_url + "/")
    page.evaluate(WATCH_ROWS)
    page.fill("#n_future", "3")
    page.fill("#stride", "3")
    page.fill("#text", LONG_TEXT)
    page.click("#submit")
    page.wait_for_selector("#result tr[data-row]:not(.pending)", timeout=120_000)
    assert page.locator("#stream-progress").get_attribute("max") == "11"
    page.wait_for_selector("#result .result[data-grid-id] table.grid", timeout=120_000)
    assert rows_done(page) == (11, 0)
    assert re.search(r"/g/[a-z2-7]{12}$", page.url)
    snapshots = page.evaluate("window.rowSnapshots")
    partial = [s for s in snapshots if s[0] >= 1 and s[1] >= 1]
    assert partial, f"no screen had computed and pending rows at once: {snapshots}"
    assert 1 in {s[2] for s in partial}, "the counter showed the first row while the other ten were pending"
    assert all(s[0] == s[2] for s in partial), "the counter says how many rows are on screen"


def test_cancel_stops_the_work_and_the_worker_takes_the_next_job_at_once(served, page) -> None:
    base_url, app = served
    worker = app.state.keeper.worker
    before, stored_before = worker.completed, app.state.store.count()
    start(page, base_url, LONG_TEXT + " today", stride=1)
    page.wait_for_selector("#result tr[data-row]:not(.pending)", timeout=120_000)
    page.click("#cancel-stream")
    assert "Cancelled after" in page.locator(".stream-status").inner_text()
    # The job ends after the forward of the model it is in (not the grid's) and nothing waits on the worker.
    deadline = time.monotonic() + 60
    while worker.queued and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker.queued == 0 and worker.completed == before + 1
    assert worker.submit("next", lambda: "ran").result(timeout=2) == "ran"
    assert app.state.store.count() == stored_before, "a partial grid is never stored"
    assert page.locator("#result .result[data-grid-id]").count() == 0
    assert rows_done(page)[1] > 0, "rows that were never computed stay pending"


def test_a_link_with_a_selected_cell_reopens_with_its_popover(served, page, browser) -> None:  # noqa: F811
    base_url, _ = served
    start(page, base_url, "Marty McFly from", stride=10)
    page.wait_for_selector("#result .result[data-grid-id] table.grid", timeout=120_000)
    cell = page.locator('td.cell[data-r="1"][data-c="2"]')
    cell.click()
    assert page.url.endswith("#cell=1,2")
    title = page.locator("#popover h3").inner_text()
    assert "Layer 10" in title and "after token 2" in title
    stats = page.locator("#popover .stats").inner_text()
    assert "ranks #" in stats and "entropy" in stats and "KL" in stats
    link = page.url
    other = Watched(browser)
    try:
        other.page.goto(link)
        other.page.wait_for_selector("#popover:not([hidden])", timeout=10_000)
        assert other.page.locator("#popover h3").inner_text() == title
        assert other.page.locator('td.cell[data-r="1"][data-c="2"]').get_attribute("aria-describedby") == "popover"
        other.page.screenshot(path=str(ARTIFACTS / "grid-stats-popover.png"))
        assert not other.problems, other.problems
    finally:
        other.close()
