"""The offline HTML file is made from the page's own stylesheet and popover script, and shows trajectories read from
the grid's stored top-k (it has no server to ask). Hand-made grids (tests/export_helpers.py), no model; the browser
test opens the file from disk in Chromium with every request refused (skipped without /usr/bin/chromium, failed in
CI). Screenshots for people go to tests/artifacts/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from future_lens.export import grid_html, select
from future_lens.export.html import content_security_policy, css, page_asset, script
from future_lens.export.palette import percent
from future_lens.export.text import shown
from future_lens.export.trajectory import TrajectoryError, stored_tracks, stored_trajectory
from tests.export_helpers import sample_grid
from tests.test_browser import browser  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).parent / "artifacts"
ARTIFACTS.mkdir(exist_ok=True)


def rules(stylesheet: str) -> list[str]:
    """A stylesheet's rules, roughly: the text before each `}`, comments dropped and whitespace collapsed."""
    text = re.sub(r"/\*.*?\*/", "", stylesheet, flags=re.DOTALL)
    return [" ".join(part.split()) for part in text.split("}") if part.strip()]


def inlined_style(page: str) -> str:
    styles = re.findall(r"<style>(.*?)</style>", page, flags=re.DOTALL)
    assert len(styles) == 1
    return styles[0]


def island(page: str) -> dict:
    return json.loads(re.search(r'<template id="grid-data">(.*?)</template>', page, flags=re.DOTALL).group(1))


# ---------- one source: the page's files ----------


def test_offline_css_holds_every_rule_of_the_pages_stylesheet():
    page = grid_html(sample_grid(n_layers=4, n_tokens=5, seed=2))
    exported = " ".join(inlined_style(page).split())
    page_rules = rules((ROOT / "future_lens" / "server" / "static" / "lens.css").read_text())
    assert len(page_rules) > 100
    missing = [rule for rule in page_rules if rule not in exported]
    assert missing == []


def test_offline_file_inlines_the_pages_popover_script_and_finds_it_in_the_checkout():
    assert page_asset("lens.css") == (ROOT / "future_lens" / "server" / "static" / "lens.css").read_text()
    assert page_asset("lens.js") == (ROOT / "future_lens" / "server" / "static" / "lens.js").read_text()
    assert (ROOT / "future_lens" / "server" / "static" / "lens.js").read_text() in script()
    scripts = re.findall(r"<script>(.*?)</script>", grid_html(sample_grid()), flags=re.DOTALL)
    assert scripts == [script()]  # the page's script makes requests only on the page (its form): see the browser test
    assert "'sha256-" in content_security_policy() and "unsafe-inline" not in content_security_policy()


def test_package_data_ships_the_pages_files():
    """The export reads the page's files from future_lens/export/page/, which the source checkout links to
    future_lens/server/static/ and the wheel carries as copies (pyproject's package-data)."""
    text = (ROOT / "pyproject.toml").read_text()
    shipped = re.search(r'"future_lens\.export" = \[(.*?)\]', text).group(1)
    for name in ("lens.css", "cells.css", "lens.js"):
        linked = ROOT / "future_lens" / "export" / "page" / name
        assert linked.resolve() == (ROOT / "future_lens" / "server" / "static" / name).resolve()
        assert f'"page/{name}"' in shipped
    assert css().startswith((ROOT / "future_lens" / "server" / "static" / "lens.css").read_text().rstrip("\n"))


def test_an_installed_package_without_the_pages_files_says_so(tmp_path, monkeypatch):
    """A broken install without future_lens/export/page/ fails with a message naming the missing file, never a
    traceback from deep inside; the working directory is never searched."""
    from future_lens.export import html

    package = tmp_path / "site" / "future_lens" / "export"
    (package / "static").mkdir(parents=True)
    monkeypatch.setattr(html.resources, "files", lambda name: package)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "lens.css").write_text(".from-cwd { color: red; }\n")
    with pytest.raises(html.MissingPageAssetError, match=r"lens\.css"):
        html.page_asset("lens.css")


def test_offline_markup_uses_the_pages_classes():
    page = grid_html(sample_grid(n_layers=3, n_tokens=4, seed=5))
    for page_class in ("scale-block", "layer-head", "layer-num", "next-head", 'class="next"', "corner-token"):
        assert page_class in page


# ---------- trajectories from the stored top-k ----------


def test_stored_trajectory_reads_each_cells_top_k():
    grid = sample_grid(n_layers=8, n_tokens=6, top_k=4, seed=7)
    position = 3
    token = grid.cells[2][position].topk[1]
    points = stored_trajectory(grid, token.id, position)
    assert [p.layer for p in points] == grid.layers
    listed = 0
    for r, point in enumerate(points):
        cell = grid.cells[r][position]
        ids = [t.id for t in cell.topk]
        assert point.floor == min(t.prob for t in cell.topk)
        if token.id in ids:
            listed += 1
            assert point.prob == cell.topk[ids.index(token.id)].prob
        else:
            assert point.prob is None  # below the stored top-k: only "< floor" is known
    assert points[2].prob == token.prob
    assert 1 < listed < len(points)  # the sample has both kinds of layer
    with pytest.raises(TrajectoryError):
        stored_trajectory(grid, token.id, len(grid.tokens))


def test_offline_data_holds_the_stored_tracks_of_the_selection():
    grid = sample_grid(n_layers=8, n_tokens=9, top_k=4, seed=7)
    selection = select(grid, "8-29", "2:6")
    data = island(grid_html(grid, selection))
    assert data["track"] == stored_tracks(grid, selection)
    assert data["positions"] == [2, 3, 4, 5]
    for c, position in enumerate(selection.columns):
        for index, r in enumerate(selection.rows):
            cell = data["cells"][index][c]
            assert cell["ki"] == [t.id for t in grid.cells[r][position].topk]
        for token_id, points in data["track"][c].items():
            expected = stored_trajectory(grid, int(token_id), position, selection.rows)
            assert points == [[i, round(p.prob, 5)] for i, p in enumerate(expected) if p.prob is not None]


# ---------- in a browser, offline ----------


@pytest.fixture(scope="module")
def chromium(browser):  # noqa: F811 (tests/test_browser.py's fixture)
    return browser


def open_offline(chromium, path: Path, width: int, height: int):
    """A page showing `path` from disk with the network off and every other request refused; (page, requested,
    problems) where problems collects console messages, page errors and dialogs."""
    context = chromium.new_context(viewport={"width": width, "height": height})
    context.set_offline(True)
    requested: list[str] = []
    problems: list[str] = []

    def route(route_) -> None:
        requested.append(route_.request.url)
        (route_.continue_ if route_.request.url == path.as_uri() else route_.abort)()

    context.route("**/*", route)
    page = context.new_page()
    page.on("dialog", lambda dialog: (problems.append(f"dialog {dialog.message}"), dialog.dismiss()))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}"))
    page.goto(path.as_uri())
    return context, page, requested, problems


@pytest.mark.browser
@pytest.mark.parametrize(("width", "height", "name"), [(1100, 760, "desktop"), (390, 844, "phone")])
def test_offline_file_tracks_a_candidate_from_the_stored_top_k(chromium, tmp_path, width, height, name):
    grid = sample_grid(n_layers=10, n_tokens=9, top_k=4, seed=7)
    selection = select(grid, "all", "2:8")
    path = tmp_path / "grid.html"
    path.write_text(grid_html(grid, selection, grid_id="abcdefghijkl"), encoding="utf-8")
    context, page, requested, problems = open_offline(chromium, path, width, height)
    try:
        assert page.locator("td.cell").count() == 10 * 6
        assert page.locator(".legend .scale-block .swatch").count() == 10  # the page's legend, its stylesheet
        r, c = 4, 1  # position 3 (the file starts at position 2)
        page.click(f'td.cell[data-r="{r}"][data-c="{c}"]')
        popover = page.locator("#popover")
        popover.wait_for(state="visible", timeout=5000)
        assert "pinned" in popover.get_attribute("class")
        assert popover.locator("h3").inner_text().startswith(f"Layer {grid.layers[r]} · after token 3")
        buttons = popover.locator("button.track-token")
        cell = grid.cells[r][3]
        assert buttons.all_inner_texts() == [shown(t.text) for t in cell.topk]
        buttons.nth(1).click()
        chart = popover.locator(".stored-track svg.track-chart")
        chart.wait_for(state="visible", timeout=5000)
        expected = stored_trajectory(grid, cell.topk[1].id, 3)
        listed = [p for p in expected if p.prob is not None]
        assert chart.locator("circle").count() == len(listed)
        assert chart.locator("path.below").count() == len(expected) - len(listed)
        items = popover.locator("ol.track-values li")
        assert items.count() == len(grid.layers)
        for i, point in enumerate(expected):
            text, kind = items.nth(i).inner_text(), items.nth(i).get_attribute("class")
            assert text.startswith(f"L{point.layer}")
            assert ("below" in kind) == (point.prob is None)
            if point.prob is None:  # below the stored top-k: "< p_k", the smallest listed probability
                assert text == f"L{point.layer}< {percent(point.floor)}".replace("< <", "<")
            else:
                assert text == f"L{point.layer}{percent(point.prob)}"
        assert "Read from the stored top-4" in popover.locator(".track-caption").inner_text()
        box = popover.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1
        page.screenshot(path=str(ARTIFACTS / f"export-offline-track-{name}.png"))
        page.mouse.move(2, 2)  # off the grid, so no hover shows a popover again
        page.keyboard.press("Escape")
        popover.wait_for(state="hidden", timeout=5000)
    finally:
        context.close()
    assert requested == [path.as_uri()]
    assert problems == []
