"""Browser tests of comparisons (Playwright + Debian Chromium against a real uvicorn server): "Compare with…" from
a grid, the DIFF view marking exactly the cells that differ (checked against the two grids' JSON, also after the
threshold is changed on the page), and a comparison link reopening the same view with its cell's popover."""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from pathlib import Path

import pytest

from future_lens.lens.layers import strided_layers
from tests.test_browser import ARTIFACTS, Watched, browser  # noqa: F401 (fixture)
from tests.test_browser_stream import served  # noqa: F401 (fixture)
from tests.test_compare import expected_differing

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

TEXT_A = "The doctor said that he would call the family as soon as the results came back"
TEXT_B = "The nurse said that she would call the family when the results came back from the lab today"
FIGURE = Path(__file__).parent.parent / "docs" / "figures" / "compare-diff.png"


def post_json(base_url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        base_url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def get_json(base_url: str, path: str) -> dict:
    with urllib.request.urlopen(base_url + path, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def watched(browser):  # noqa: F811 (the imported fixture)
    watched = Watched(browser, viewport={"width": 1400, "height": 900})
    yield watched
    assert not watched.problems, watched.problems
    assert not watched.dialogs, watched.dialogs
    watched.close()


@pytest.fixture(scope="module")
def grid_a(served) -> dict:  # noqa: F811
    """Grid A, stored through the API with the layers the form's stride 4 selects (logit lens: fast)."""
    base_url, app = served
    n_layers = app.state.keeper.service.model.adapter.n_layers
    return post_json(
        base_url, "/lens", {"text": TEXT_A, "method": "logit", "layers": strided_layers(n_layers, 4), "top_k": 3}
    )


def marked_cells(page) -> set[tuple[int, int]]:
    """(layer, position) of every DIFF cell the page marks as differing."""
    cells = page.evaluate(
        """() => Array.from(document.querySelectorAll('td.diff-cell.differs')).map(cell =>
             [Number(cell.closest('tr').querySelector('.layer-num').textContent), Number(cell.dataset.c)])"""
    )
    return {(layer, position) for layer, position in cells}


def test_compare_with_two_texts_marks_exactly_the_cells_that_differ(served, grid_a, watched) -> None:  # noqa: F811
    base_url, _ = served
    page = watched.page
    page.goto(base_url + grid_a["permalink"])
    page.click(".compare-with > summary")
    page.fill("#cmp-text", TEXT_B)
    assert page.input_value("#cmp-method") == "logit" and page.input_value("#cmp-stride") == "4"
    page.click(".compare-submit")
    page.wait_for_selector("table.diff-grid", timeout=120_000)
    match = re.search(rf"/compare/{grid_a['id']}/([a-z2-7]{{12}})$", page.url)
    assert match, page.url
    doc_a = get_json(base_url, f"/g/{grid_a['id']}.json")
    doc_b = get_json(base_url, f"/g/{match.group(1)}.json")
    assert doc_b["tokens"][1]["text"] == " nurse"

    expected = expected_differing(doc_a, doc_b, 0.1)
    assert marked_cells(page) == expected
    assert page.locator(".diff-count").inner_text() == str(len(expected))
    assert 0 < len(expected) < page.locator("td.diff-cell[data-dp]").count(), "some cells differ, not all"
    page.locator('td.diff-cell[data-r="3"][data-c="4"]').click()  # layer 12, "he" / "she"
    assert page.locator("#popover").is_visible() and page.url.endswith("#cell=diff:3,4")
    page.screenshot(path=str(ARTIFACTS / "compare-diff.png"))
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ARTIFACTS / "compare-diff.png", FIGURE)
    page.keyboard.press("Escape")
    # Positions are aligned from the start: B is longer, its extra positions are unmatched.
    extra = len(doc_b["tokens"]) - len(doc_a["tokens"])
    assert extra > 0 and page.locator("thead th.unmatched").count() == extra

    # The threshold, changed on the page, marks again (and goes into the URL).
    page.fill("#threshold", "0.02")
    assert marked_cells(page) == expected_differing(doc_a, doc_b, 0.02) != expected
    assert "t=0.02" in page.url
    page.reload()
    page.wait_for_selector("table.diff-grid")
    assert page.input_value("#threshold") == "0.02"
    assert marked_cells(page) == expected_differing(doc_a, doc_b, 0.02)

    cell = page.locator("td.diff-cell.differs").first
    cell.click()
    popover = page.locator("#popover")
    assert (
        popover.is_visible() and popover.locator(".badge-a").count() == 1 and popover.locator(".badge-b").count() == 1
    )


def test_a_comparison_link_reopens_the_same_view_with_its_popover(served, grid_a, browser, watched) -> None:  # noqa: F811
    base_url, _ = served
    page = watched.page
    b = post_json(base_url, "/lens", {"text": TEXT_B, "method": "logit", "layers": grid_a["layers"], "top_k": 3})
    page.goto(f"{base_url}/compare/{grid_a['id']}/{b['id']}?view=side")
    page.fill("#layers", "8-29")
    page.fill("#threshold", "0.3")
    page.click(".compare-controls button[type=submit]")
    page.wait_for_selector(".compare-side")
    assert page.locator('[data-pane="a"] tbody tr').count() == 7, "layers 8, 12, 16, 20, 24, 28 and 29"

    # Side by side: the panes scroll together.
    page.locator('[data-pane="a"] .grid-scroll').evaluate("node => { node.scrollLeft = 300; }")
    page.wait_for_function(
        "() => document.querySelector('[data-pane=b] .grid-scroll').scrollLeft === 300",
        timeout=5_000,
    )

    cell = page.locator('[data-pane="b"] td.cell[data-r="2"][data-c="3"]')
    cell.click()
    assert page.url.endswith("#cell=b:2,3")
    assert "view=side" in page.url and "layers=8-29" in page.url and "t=0.3" in page.url
    title = page.locator("#popover h3").inner_text()
    assert "Layer 16" in title and "after token 3" in title
    link = page.url

    other = Watched(browser, viewport={"width": 1400, "height": 900})
    try:
        other.page.goto(link)
        other.page.wait_for_selector("#popover:not([hidden])", timeout=10_000)
        assert other.page.locator("#popover h3").inner_text() == title
        reopened = other.page.locator('[data-pane="b"] td.cell[data-r="2"][data-c="3"]')
        assert reopened.get_attribute("aria-describedby") == "popover"
        assert other.page.input_value("#layers") == "8-29" and other.page.input_value("#threshold") == "0.3"
        assert other.page.is_checked('input[name="view"][value="side"]')
        assert not other.problems, other.problems
    finally:
        other.close()

    # The DIFF view's selected cell too.
    page.check('input[name="view"][value="diff"]')
    page.wait_for_selector("table.diff-grid")
    page.locator('td.diff-cell[data-r="1"][data-c="4"]').click()
    assert page.url.endswith("#cell=diff:1,4")
    diff_title = page.locator("#popover h3").inner_text()
    other = Watched(browser, viewport={"width": 1400, "height": 900})
    try:
        other.page.goto(page.url)
        other.page.wait_for_selector("#popover:not([hidden])", timeout=10_000)
        assert other.page.locator("#popover h3").inner_text() == diff_title == "Layer 12 · position 4"
        assert other.page.locator("#popover .badge-b").count() == 1
        assert not other.problems, other.problems
    finally:
        other.close()


def test_side_by_side_popovers_have_each_grids_tools(served, grid_a, watched) -> None:  # noqa: F811
    """Track and Code behind the cell work in both panes of a comparison, each for its own grid."""
    base_url, _ = served
    page = watched.page
    b = post_json(base_url, "/lens", {"text": TEXT_B, "method": "logit", "layers": grid_a["layers"], "top_k": 3})
    page.goto(f"{base_url}/compare/{grid_a['id']}/{b['id']}?view=side")
    page.wait_for_selector(".compare-side")
    for pane, grid, text in [("b", b, TEXT_B), ("a", grid_a, TEXT_A)]:
        page.locator(f'[data-pane="{pane}"] td.cell[data-r="3"][data-c="2"]').click()
        popover = page.locator("#popover")
        popover.locator("button.cell-code").click()
        page.wait_for_function("() => document.querySelector('#popover .code-box pre').textContent.includes('TEXT = ')")
        code = popover.locator(".code-box pre").inner_text()
        assert f"TEXT = {text!r}" in code, "the code recomputes this pane's grid"
        candidates = popover.locator("button.track-token")
        assert candidates.count() == 3, "the pane's grid has top_k 3"
        candidates.first.click()
        chart = page.locator(f'[data-pane="{pane}"] .track-panel img.track-chart')
        chart.wait_for(state="visible", timeout=120_000)
        assert f"/g/{grid['id']}/track.svg?" in chart.get_attribute("src")
        first = grid["cells"][3][2]["topk"][0]["text"].strip()
        assert first in page.locator(f'[data-pane="{pane}"] .track-panel h3').inner_text()
        page.keyboard.press("Escape")
    assert page.locator(".track-panel").count() == 2, "one trajectory under each pane"
