"""Browser tests: Playwright drives Debian's Chromium against a real uvicorn server on loopback.

Load the page, submit with Ctrl+Enter, read the grid, hover/click/keyboard popovers, open the permalink in a new
page, and check that token text containing HTML stays text (no dialog, no injected element, no CSP violation).
The app reads its evaluation report from a folder the tests write (tests/report_helpers.py), so /about and the
legend's measured calibration are checked whatever report is committed. Screenshots of the grid and of /about, at
desktop width and at a phone's 390 px, go to tests/artifacts/ for people to look at.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import NoReturn

import pytest
import uvicorn

from future_lens.lens.display import visible_whitespace
from future_lens.lens.source import tokenize
from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from tests.report_helpers import write_report
from tests.webapp_helpers import PROMPT_LAYERS, service_with_prompts

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
XSS_TEXT = "<script>alert(1)</script> <img src=x onerror=alert(1)>"
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def report(smollm2, tmp_path_factory) -> dict:
    """The served model's evaluation report, every layer evaluated, in a folder of its own."""
    reports_dir = tmp_path_factory.mktemp("reports")
    written = write_report(reports_dir, smollm2.id, smollm2.fingerprint, list(range(smollm2.adapter.n_layers)))
    return {"dir": reports_dir, "json": written}


@pytest.fixture(scope="module")
def base_url(smollm2, tmp_path_factory, report):
    """A uvicorn server in a thread, on a socket already bound to a free loopback port."""
    service = service_with_prompts(tmp_path_factory.mktemp("prompts"), smollm2)
    app = create_app(Settings(db_path=tmp_path_factory.mktemp("db") / "grids.sqlite3"), service=service)
    app.state.reports_dir = report["dir"]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def missing_browser() -> NoReturn:
    """In CI (CI=true) these tests must run, so a missing browser fails them; elsewhere it skips them, saying why."""
    message = f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (`make test` does, as root)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        missing_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Watched:
    """A page plus what it did that it should not have: dialogs, CSP violations, page errors."""

    def __init__(self, browser, viewport: dict[str, int] | None = None):
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.problems: list[str] = []
        self.page.on("dialog", self._on_dialog)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("console", self._on_console)

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _on_console(self, message) -> None:
        if message.type == "error" or "Content Security Policy" in message.text:
            self.problems.append(f"console {message.type}: {message.text}")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser):
    watched = Watched(browser)
    yield watched
    watched.close()


def submit(page, text: str, *, method: str | None = None, n_future: int = 2, stride: int = 10) -> None:
    """Fill the form and submit it with Ctrl+Enter, then wait for the swapped-in grid."""
    if method:
        page.select_option("#method", method)
    page.fill("#n_future", str(n_future))
    page.fill("#stride", str(stride))
    page.fill("#text", text)
    page.focus("#text")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#result .result[data-grid-id] table.grid", timeout=120_000)  # streamed to the end


def header_texts(page) -> list[str]:
    return page.locator("table.grid thead th.tok-head .tok").all_inner_texts()


def test_submit_shows_the_grid_with_progress_and_permalink(base_url, watched, smollm2):
    page = watched.page
    page.goto(base_url + "/")
    assert page.input_value("#method") == "future"
    assert page.input_value("#text") == "Marty McFly from"
    page.evaluate(
        """() => {
            // the streamed grid's progress bar (rows done of total) shows while the rows are computed
            window.__progressSeen = false;
            new MutationObserver(() => {
                const progress = document.getElementById("stream-progress");
                if (progress && getComputedStyle(progress).display !== "none") window.__progressSeen = true;
            }).observe(document.getElementById("result"), {childList: true, subtree: true});
        }"""
    )
    text = "Marty McFly from the future"
    submit(page, text, n_future=3, stride=5)
    layers = [0, 5, 10, 15, 20, 25, 29]
    tokens = tokenize(smollm2, text)
    assert page.evaluate("window.__progressSeen") is True
    assert page.locator("table.grid tbody tr").count() == len(layers)
    row_heads = page.locator("table.grid tbody th.layer-head .layer-num").all_inner_texts()
    assert row_heads == [str(layer) for layer in layers]
    assert page.locator("table.grid thead th.tok-head").count() == len(tokens)
    assert page.locator("table.grid td.cell").count() == len(layers) * len(tokens)
    assert page.locator("table.grid tfoot td.next").count() == len(tokens)
    assert header_texts(page) == [visible_whitespace(smollm2.tokenizer.decode([token])) for token in tokens]
    assert re.search(r"/g/[a-z2-7]{12}$", page.url), page.url  # htmx pushed the permalink
    assert page.locator("#permalink").get_attribute("href") == page.url.removeprefix(base_url)
    assert page.locator("button.copy").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "grid.png"), full_page=True)
    assert not watched.problems, watched.problems


def test_hover_click_and_keyboard_show_probabilities(base_url, watched):
    page = watched.page
    page.goto(base_url + "/")
    submit(page, "The cat sat", stride=10)
    popover = page.locator("#popover")
    last_row_first_cell = page.locator("table.grid tbody tr").last.locator("td.cell").first
    last_row_first_cell.hover()
    popover.wait_for(state="visible")
    text = popover.text_content()
    assert "Layer 29" in text
    assert re.search(r"\d+(\.\d)?%", text)
    assert "Top 5 for the first token" in text
    assert "actual next token" in text
    page.mouse.move(1, 1)
    popover.wait_for(state="hidden")

    last_row_first_cell.click()  # pinned: stays while the mouse moves away
    page.mouse.move(1, 1)
    assert popover.is_visible()
    page.keyboard.press("Escape")
    popover.wait_for(state="hidden")

    first = page.locator('td.cell[data-r="0"][data-c="0"]')
    first.focus()
    popover.wait_for(state="visible")
    assert "Layer 0 · after token 0" in popover.text_content()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    focused = page.evaluate("[document.activeElement.dataset.r, document.activeElement.dataset.c]")
    assert focused == ["1", "1"]
    assert "Layer 10 · after token 1" in popover.text_content()
    assert not watched.problems, watched.problems


def test_permalink_opens_the_same_grid_in_a_new_page(base_url, watched, browser):
    page = watched.page
    page.goto(base_url + "/")
    submit(page, "Back to the", stride=10)
    grid_text = page.locator("table.grid").inner_text()
    permalink = page.locator("#permalink").get_attribute("href")
    watched.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
    copy = page.locator("button.copy")
    copy.click()
    from playwright.sync_api import expect

    # the clipboard write is asynchronous: wait for its answer (expect polls without evaluating strings in the page,
    # which the page's CSP forbids), then check it
    expect(copy).to_have_text("Copied ✓", timeout=5_000)
    assert page.evaluate("navigator.clipboard.readText()") == base_url + permalink
    other = Watched(browser)
    try:
        other.page.goto(base_url + permalink)
        other.page.wait_for_selector("table.grid")
        assert other.page.locator("table.grid").inner_text() == grid_text
        assert other.page.input_value("#text") == "Back to the"
        assert other.page.input_value("#stride") == "10"
        other.page.locator("td.cell").first.hover()
        other.page.locator("#popover").wait_for(state="visible")
        assert not other.problems, other.problems
    finally:
        other.close()


def test_html_in_the_text_is_shown_as_text_and_never_runs(base_url, watched, smollm2):
    page = watched.page
    page.goto(base_url + "/")
    submit(page, XSS_TEXT, method="logit", stride=29)
    tokens = tokenize(smollm2, XSS_TEXT)
    assert "".join(header_texts(page)) == visible_whitespace("".join(smollm2.tokenizer.decode([t]) for t in tokens))
    page.locator("td.cell").first.hover()
    page.locator("#popover").wait_for(state="visible")
    permalink = page.locator("#permalink").get_attribute("href")
    page.goto(base_url + permalink)  # the full-page rendering path too
    page.wait_for_selector("table.grid")
    assert page.input_value("#text") == XSS_TEXT
    assert page.locator('img[src="x"]').count() == 0
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    page.wait_for_timeout(300)
    assert watched.dialogs == []
    assert not watched.problems, watched.problems


def test_invalid_input_is_reported_inline(base_url, watched):
    page = watched.page
    page.goto(base_url + "/")
    page.select_option("#method", "logit")
    page.fill("#text", "word " * 100)
    page.locator("#submit").click()
    error = page.locator("#result .form-error")
    error.wait_for()
    assert "text" in error.inner_text() and "limit" in error.inner_text()
    assert page.locator("#text").get_attribute("aria-invalid") == "true"
    assert not [problem for problem in watched.problems if "422" not in problem], watched.problems


def test_about_page_loads_cleanly(base_url, watched):
    page = watched.page
    page.goto(base_url + "/about")
    assert "What the grid shows" in page.locator("h1").inner_text()
    assert not watched.problems, watched.problems


def test_about_shows_the_learned_prompts_numbers_for_every_layer(base_url, watched, browser, report):
    page = watched.page
    page.goto(base_url + "/about")
    table = page.locator('table[data-table="per_layer"]')
    columns = table.locator("thead th").all_inner_texts()
    learned = columns.index("learned prompt (teacher-forced)")
    rows = table.locator("tbody tr")
    assert rows.count() == len(report["json"]["layers"])
    for index, layer in enumerate(report["json"]["layers"]):
        cells = rows.nth(index).locator("th, td").all_inner_texts()
        assert cells[0] == str(layer)
        assert re.fullmatch(r"\d\.\d\d(/\d\.\d\d){3}", cells[learned]), cells
    for stem in ("eval", "calibration", "learning_curve"):  # every plot loaded and decoded
        width = page.locator(f'img[src="/about/{stem}.png"]').evaluate("img => img.complete && img.naturalWidth")
        assert width > 0, stem
    assert "Q4_1" in page.locator("table.facts").first.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "about.png"), full_page=True)
    assert not watched.problems, watched.problems
    phone = Watched(browser, PHONE)
    try:
        phone.page.goto(base_url + "/about")
        assert phone.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # only tables scroll
        phone.page.screenshot(path=str(ARTIFACTS / "about-390.png"), full_page=True)
        assert not phone.problems, phone.problems
    finally:
        phone.close()


def check_borrowed_rows(page) -> None:
    """Prompts exist for PROMPT_LAYERS only: every other row is grey and labelled with the layer it borrowed from."""
    rows = page.locator("table.grid tbody tr")
    for index in range(rows.count()):
        row = rows.nth(index)
        layer = int(row.locator(".layer-num").inner_text())
        label = row.locator(".borrowed-label")
        if layer in PROMPT_LAYERS:
            assert label.count() == 0 and "borrowed" not in (row.get_attribute("class") or "")
            continue
        source = min(PROMPT_LAYERS, key=lambda trained: (abs(trained - layer), trained))
        assert label.is_visible() and label.inner_text() == f"prompt from layer {source}"
        shade = row.locator("td.cell").first.evaluate("cell => getComputedStyle(cell).backgroundColor")
        red, green, blue = (int(value) for value in re.findall(r"\d+", shade)[:3])
        assert red == green == blue, shade  # grey, not the blue scale
    assert page.locator(".legend .borrowed-sample").is_visible()


def test_borrowed_rows_are_labelled_and_the_legend_is_measured(base_url, watched, browser):
    page = watched.page
    page.goto(base_url + "/")
    submit(page, "Marty McFly from the future", n_future=4, stride=5)
    check_borrowed_rows(page)
    assert page.locator("tbody tr.borrowed").count() == 4  # layers 5, 10, 20, 25
    shares = page.locator(".legend .share > [aria-hidden]").all_inner_texts()
    assert len(shares) == 10 and shares[0] == "4%" and shares[-1] == "–"
    assert "right on held-out text" in page.locator(".legend").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "grid-borrowed.png"), full_page=True)
    permalink = page.locator("#permalink").get_attribute("href")
    assert not watched.problems, watched.problems
    phone = Watched(browser, PHONE)
    try:
        phone.page.goto(base_url + permalink)
        phone.page.wait_for_selector("table.grid")
        check_borrowed_rows(phone.page)
        assert phone.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # the grid scrolls
        phone.page.screenshot(path=str(ARTIFACTS / "grid-390.png"), full_page=True)
        assert not phone.problems, phone.problems
    finally:
        phone.close()


def test_api_docs_render_offline_from_local_files(base_url, watched):
    """Swagger UI lists the operations, loading nothing from other origins (the browser has no internet anyway)."""
    page = watched.page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(base_url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert {"/lens", "/healthz"} <= {path.strip() for path in paths}, paths
    assert all(url.startswith(base_url) or url.startswith("data:") for url in requested), requested
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "docs.png"))
    assert not watched.problems, watched.problems
