"""Browser tests of the page's defects of issue 23 (Playwright + Debian Chromium against a real uvicorn server):

- an invisible token (the embedded model's no-break space, id 15442) shows a visible mark in the cell, the popover
  and the Track button, and the popover names its code point;
- Back and Forward after streamed grids show the view the URL names (the grid of that permalink, the start page);
- a permalink pushed after a submit keeps the submitted N, which next-token lenses do not store (they compute N = 1).

Screenshots (desktop and 390 px) of the grid with a no-break-space cell and its popover go to tests/artifacts/.
"""

from __future__ import annotations

import re

import httpx
import pytest

from future_lens.lens.display import WHITESPACE_MARKS, visible_whitespace
from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from future_lens.service import LensService
from tests.server_helpers import serving
from tests.test_browser import ARTIFACTS, PHONE, Watched
from tests.test_browser import browser as chromium_browser

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

browser = chromium_browser  # the module-scoped Chromium fixture of tests/test_browser.py, shared by name

NBSP_ID = 15442
#: The embedded model predicts a no-break space after the last letter at its last layer (logit lens: 48%).
NBSP_TEXT = "a\xa0b\xa0c\xa0d\xa0e"
GRID = "#result .result[data-grid-id] table.grid"


@pytest.fixture(scope="module")
def base_url(smollm2, tmp_path_factory):
    """A server on the model's shipped artifacts (checkpoints/<model>): trained prompts and the tuned lens."""
    app = create_app(Settings(db_path=tmp_path_factory.mktemp("db") / "grids.sqlite3"), service=LensService(smollm2))
    with serving(app) as url:
        yield url


@pytest.fixture
def watched(browser):
    watched = Watched(browser)
    yield watched
    assert not watched.problems, watched.problems
    watched.close()


def submit(page, text: str, *, method: str = "logit", n_future: int = 1, stride: int = 29) -> str:
    """Fill the page's form, submit it (streamed) and wait for the stored grid; its id."""
    before = page.locator("#result .result[data-grid-id]")
    previous = before.get_attribute("data-grid-id") if before.count() else None
    page.select_option("#method", method)
    page.fill("#n_future", str(n_future))
    page.fill("#stride", str(stride))
    page.fill("#text", text)
    page.click("#submit")
    page.wait_for_function(
        "(previous) => { const r = document.querySelector('#result .result[data-grid-id]');"
        " return r && r.dataset.gridId && r.dataset.gridId !== previous && r.querySelector('table.grid'); }",
        arg=previous,
        timeout=120_000,
    )
    return page.locator("#result .result[data-grid-id]").get_attribute("data-grid-id")


def shown_grid(page) -> str | None:
    result = page.locator("#result .result[data-grid-id]")
    return result.get_attribute("data-grid-id") if result.count() else None


# ---------- invisible tokens ----------


def nbsp_cell(base_url: str, grid_id: str) -> tuple[int, int, int]:
    """(row, column, rank among the alternatives) of a cell whose first predicted token is the no-break space, as
    is the model's own next token there (the last row: the logit lens at the last layer is the model)."""
    document = httpx.get(f"{base_url}/g/{grid_id}.json", timeout=30).json()
    for r, row in reversed(list(enumerate(document["cells"]))):
        for c, cell in enumerate(row):
            if cell["tokens"][0]["id"] == NBSP_ID == document["next_tokens"][c]["id"]:
                assert cell["tokens"][0]["text"] == "\xa0"
                rank = [token["id"] for token in cell["topk"]].index(NBSP_ID)
                return r, c, rank
    raise AssertionError("no cell predicts the no-break space")


def test_a_no_break_space_shows_a_visible_mark_in_the_cell_popover_and_track_button(base_url, watched, browser):
    page = watched.page
    page.goto(base_url + "/")
    grid_id = submit(page, NBSP_TEXT)
    r, c, rank = nbsp_cell(base_url, grid_id)

    cell = page.locator(f'td.cell[data-r="{r}"][data-c="{c}"]')
    assert cell.locator(".t").first.inner_text() == "⍽"
    mark = cell.locator(".t .ws").first
    assert mark.get_attribute("title") == "U+00A0 NO-BREAK SPACE"
    assert mark.bounding_box()["width"] >= 6  # boxed, not a sliver
    headers = page.locator("thead th.tok-head .tok").all_inner_texts()
    assert headers == ["a", "⍽", "b", "⍽", "c", "⍽", "d", "⍽", "e"]  # the input's own no-break spaces

    cell.click()
    popover = page.locator("#popover.pinned")
    popover.wait_for(state="visible")
    first_row = popover.locator("table").first.locator("td.tk").first
    assert first_row.locator(".ws").first.inner_text() == "⍽"
    assert "U+00A0 NO-BREAK SPACE" in first_row.inner_text()
    assert "U+00A0 NO-BREAK SPACE" in popover.locator(".foot").inner_text()  # the model's own next token
    track = popover.locator("button.track-token").nth(rank)
    assert track.inner_text() == "⍽"
    assert "U+00A0 NO-BREAK SPACE" in track.get_attribute("title")

    # The page's script marks text with the table the server sent: the same marks as Python's, code point by code
    # point (astral format characters too), for every character of the table.
    text = "".join(WHITESPACE_MARKS)
    in_page = page.evaluate(
        "(text) => { const data = JSON.parse(document.getElementById('grid-data').content.textContent);"
        " return window.FutureLens.marked(text, data.marks).textContent; }",
        text,
    )
    assert in_page == visible_whitespace(text)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "nbsp-popover.png"))
    phone = Watched(browser, viewport=PHONE)
    try:
        phone.page.goto(f"{base_url}/g/{grid_id}#cell={r},{c}")
        phone.page.wait_for_selector("#popover.pinned:not([hidden])", timeout=10_000)
        assert "U+00A0 NO-BREAK SPACE" in phone.page.locator("#popover").inner_text()
        phone.page.screenshot(path=str(ARTIFACTS / "nbsp-popover-390.png"))
        assert not phone.problems, phone.problems
    finally:
        phone.close()


# ---------- Back and Forward ----------


def test_back_and_forward_show_the_view_the_url_names(base_url, watched):
    page = watched.page
    page.goto(base_url + "/")
    first = submit(page, "One two three")
    first_url = page.url
    assert re.search(rf"/g/{first}$", first_url)
    second = submit(page, "Four five six")
    assert second != first and re.search(rf"/g/{second}$", page.url)

    page.go_back()
    assert page.url == first_url
    page.wait_for_function(f"() => document.querySelector('#result .result[data-grid-id=\"{first}\"]')", timeout=10_000)
    assert page.input_value("#text") == "One two three"
    assert "One two three" in page.title()

    page.go_back()
    assert page.url == base_url + "/"
    page.wait_for_function("() => !document.querySelector('#result .result')", timeout=10_000)
    assert shown_grid(page) is None and page.locator("table.grid").count() == 0

    page.go_forward()
    assert page.url == first_url
    page.wait_for_function(f"() => document.querySelector('#result .result[data-grid-id=\"{first}\"]')", timeout=10_000)
    page.go_forward()
    page.wait_for_function(
        f"() => document.querySelector('#result .result[data-grid-id=\"{second}\"]')", timeout=10_000
    )
    assert page.input_value("#text") == "Four five six"

    # The restored grid's popovers work (the grid's data came with it).
    page.locator('td.cell[data-r="0"][data-c="0"]').click()
    page.locator("#popover.pinned").wait_for(state="visible")
    assert "after token 0" in page.locator("#popover h3").inner_text()


# ---------- the submitted N ----------


@pytest.mark.parametrize("method", ["logit", "tuned"])
def test_the_form_keeps_the_submitted_n_for_next_token_lenses(base_url, watched, browser, method):
    page = watched.page
    page.goto(base_url + "/")
    if page.locator(f'#method option[value="{method}"]:not([disabled])').count() == 0:
        pytest.skip(f"the {method} lens is not served here")
    grid_id = submit(page, "Seven eight nine", method=method, n_future=4)
    assert "N = 1" in page.locator(".result .meta").inner_text()  # the lens computes the next token only
    assert page.input_value("#n_future") == "4"  # after the streamed `done`, the form shows what was submitted
    assert page.input_value("#method") == method
    assert page.url.endswith(f"/g/{grid_id}?n=4")
    assert page.locator("#permalink").get_attribute("href") == f"/g/{grid_id}"  # the grid's own link, no form state

    reopened = Watched(browser)
    try:
        reopened.page.goto(page.url)
        reopened.page.wait_for_selector(GRID)
        assert reopened.page.input_value("#n_future") == "4"
        assert reopened.page.input_value("#cmp-n") == "4"  # "Compare with…" starts from the same form
        assert reopened.page.input_value("#method") == method
        assert not reopened.problems, reopened.problems
    finally:
        reopened.close()


def test_a_permalinks_n_is_used_only_when_valid(base_url):
    """Without JavaScript: the plain form post is redirected to the permalink with N; `?n=` out of range is ignored."""
    form = {"text": "Ten eleven", "method": "logit", "n_future": "4", "stride": "29"}
    with httpx.Client(base_url=base_url, timeout=120) as client:
        answer = client.post("/grid", data=form, follow_redirects=False)
        assert answer.status_code == 303
        location = answer.headers["location"]
        assert re.fullmatch(r"/g/[a-z2-7]{12}\?n=4", location), location
        htmx = client.post("/grid", data=form, headers={"HX-Request": "true"})
        assert htmx.headers["HX-Push-Url"] == location
        path = location.split("?")[0]

        def form_n(url: str) -> str:
            page = client.get(url)
            assert page.status_code == 200
            return re.search(r'id="n_future"[^>]*value="(\d+)"', page.text).group(1)

        assert form_n(location) == "4"
        assert form_n(path) == "1"  # the stored request: what the lens computed
        for bad in ("0", "99", "x", "-1", ""):
            assert form_n(f"{path}?n={bad}") == "1"
        future = dict(form, method="future", n_future="2")  # the future lens stores the N it was given
        location = client.post("/grid", data=future, follow_redirects=False).headers["location"]
        assert re.fullmatch(r"/g/[a-z2-7]{12}", location), location
