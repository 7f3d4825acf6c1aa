"""Exports of a grid (export/): SVG, PNG, CSV (and back), offline HTML; through the API, the page and the CLI.

Most tests use hand-made grids whose token text is hostile (markup, quotes, control characters, wide characters);
the API and CLI tests compute real grids with a tiny random GPT-J, so nothing here needs the embedded model. The
offline HTML file is opened in Chromium with the network off (skipped without /usr/bin/chromium, failed in CI).
Files for people to look at go to tests/artifacts/.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from future_lens.export import (
    GridCsvError,
    PngSizeError,
    Selection,
    SelectionError,
    csv_metadata,
    export,
    grid_csv,
    grid_from_csv,
    grid_html,
    grid_png,
    grid_svg,
    palette,
    read_grid_csv,
    select,
    svg_png,
)
from future_lens.export.html import content_security_policy, css, script
from future_lens.export.png import font_files, png_size
from future_lens.export.svg import MAX_COLUMNS
from future_lens.export.text import pieces, shown, width
from future_lens.lens.grid import Grid
from future_lens.server.cli import cli
from future_lens.server.config import Settings
from future_lens.server.store import new_stored_grid
from future_lens.server.web.app import create_app
from future_lens.service import LensService
from tests.conftest import words
from tests.export_helpers import sample_grid
from tests.test_browser import browser  # noqa: F401 (fixture)

SVG = "{http://www.w3.org/2000/svg}"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).parent / "artifacts"
ARTIFACTS.mkdir(exist_ok=True)
#: Every element an exported SVG may contain: no script, no foreignObject, no image, no link.
SVG_ELEMENTS = {"svg", "title", "rect", "text", "tspan", "g", "line", "path"}


def parse_svg(svg: str) -> ET.Element:
    return ET.fromstring(svg.encode())


def visible_text(element: ET.Element) -> str:
    """The text a viewer draws for an element: its <text> children's characters, without <title>s."""
    return "".join("".join(text.itertext()) for text in element.iter(f"{SVG}text"))


def cells_by_place(root: ET.Element, kind: str = "cell") -> dict[tuple[str, str], ET.Element]:
    return {
        (g.get("data-layer", ""), g.get("data-position", "")): g for g in root.iter(f"{SVG}g") if g.get("class") == kind
    }


# ---------- SVG ----------


@pytest.mark.parametrize("method", ["future", "logit", "fixed"])
def test_svg_parses_and_holds_every_cells_text(method):
    grid = sample_grid(method=method, n_future=1 if method == "logit" else 3)
    root = parse_svg(grid_svg(grid))
    cells = cells_by_place(root)
    assert len(cells) == len(grid.layers) * len(grid.tokens)
    for r, layer in enumerate(grid.layers):
        for c in range(len(grid.tokens)):
            group = cells[str(layer), str(c)]
            full = "".join(shown(token.text) for token in grid.cells[r][c].tokens)
            title = group.find(f"{SVG}title").text
            for token in grid.cells[r][c].tokens:
                assert shown(token.text) in title  # the full text, however long
            drawn = visible_text(group)
            assert drawn == full or (drawn.endswith("…") and full.startswith(drawn[:-1]))
            assert width(drawn) <= MAX_COLUMNS
    drawn_all = visible_text(root)
    for token in grid.tokens:
        assert shown(token.text)[: MAX_COLUMNS - 1] in drawn_all


def test_svg_holds_hostile_text_as_text_only():
    grid = sample_grid(n_layers=8, n_tokens=10, seed=3)
    svg = grid_svg(grid)
    root = parse_svg(svg)
    assert {element.tag.removeprefix(SVG) for element in root.iter()} <= SVG_ELEMENTS
    assert not [name for element in root.iter() for name in element.attrib if name.lower().startswith("on")]
    assert "<script" not in svg and "<svg onload" not in svg
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg  # the token is there, as text
    assert "\\x00\\x1b" in visible_text(root)  # control characters shown as escapes (XML 1.0 cannot hold them)


def test_svg_uses_the_pages_colours_and_marks_matches():
    grid = sample_grid()
    root = parse_svg(grid_svg(grid))
    cells = cells_by_place(root)
    assert {palette.prob_bucket(cell.mean_prob) for row in grid.cells for cell in row} == set(range(10))
    for r, layer in enumerate(grid.layers):
        borrowed = grid.prompt_layers[r] != layer
        for c, cell in enumerate(grid.cells[r]):
            group = cells[str(layer), str(c)]
            fills = [rect.get("fill") for rect in group.iter(f"{SVG}rect")]
            assert fills[0] == palette.shade(cell.mean_prob, borrowed)
            match = cell.tokens[0].id == grid.next_tokens[c].id
            assert (palette.MATCH in fills) == match
            assert group.get("fill") == (palette.ON_DARK if palette.is_dark(cell.mean_prob) else palette.INK)
    legend = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "legend")
    swatches = [rect.get("fill") for rect in legend.iter(f"{SVG}rect")][:10]
    assert swatches == list(palette.SHADES)
    assert "first token = the model's actual next token" in visible_text(legend)
    assert "prompt from layer k" in visible_text(legend)


def test_the_page_css_has_the_palettes_colours():
    """static/lens.css spells the shades out (no build step): it must agree with future_lens/export/palette.py."""
    page_css = (ROOT / "future_lens" / "server" / "static" / "lens.css").read_text()
    for bucket, (blue, grey) in enumerate(zip(palette.SHADES, palette.BORROWED_SHADES, strict=True)):
        blue_rule = re.search(
            rf"\.swatch\.p{bucket}, td\.cell\.p{bucket} \{{ background: (#[0-9a-f]{{6}});([^}}]*)\}}", page_css
        )
        assert blue_rule and blue_rule.group(1) == blue
        assert ("color: #fff" in blue_rule.group(2)) == (bucket >= palette.DARK_FROM)
        assert f"tr.borrowed td.cell.p{bucket} {{ background: {grey}; }}" in page_css


def test_fewer_characters_per_cell_make_a_narrower_figure():
    grid = sample_grid(n_tokens=5, hostile=False, seed=5)
    wide, narrow = parse_svg(grid_svg(grid)), parse_svg(grid_svg(grid, max_chars=8))
    assert int(narrow.get("width")) < int(wide.get("width"))
    for group in cells_by_place(narrow).values():
        assert width(visible_text(group)) <= 8
    with pytest.raises(ValueError, match="characters per cell"):
        grid_svg(grid, max_chars=3)


def test_svg_of_a_layer_and_token_range_keeps_the_positions():
    grid = sample_grid(n_layers=6, n_tokens=9)
    selection = select(grid, layers="0-12", tokens="2:5")
    root = parse_svg(grid_svg(grid, selection))
    assert set(cells_by_place(root)) == {(str(layer), str(c)) for layer in (0, 6, 12) for c in (2, 3, 4)}
    assert {g.get("data-position") for g in root.iter(f"{SVG}g") if g.get("class") == "next"} == {"2", "3", "4"}
    assert "positions 2–4 of 9" in root.find(f"{SVG}title").text
    smaller = parse_svg(grid_svg(grid, select(grid, tokens="2")))
    assert float(smaller.get("width")) < float(root.get("width"))


@pytest.mark.parametrize(
    ("layers", "tokens", "field"),
    [
        ("5", None, "layers"),  # a real layer, but not one of this grid's rows
        ("40", None, "layers"),
        ("3-1", None, "layers"),
        ("x", None, "layers"),
        ("0-99999999999", None, "layers"),
        (None, "9", "tokens"),
        (None, "1_000", "tokens"),
        (None, "５", "tokens"),
        (None, "3-1", "tokens"),
    ],
)
def test_bad_ranges_name_their_field(layers, tokens, field):
    with pytest.raises(SelectionError) as error:
        select(sample_grid(n_tokens=7), layers, tokens)
    assert error.value.field == field


def test_selection_syntax():
    grid = sample_grid(n_layers=6, n_tokens=9)  # layers 0, 6, 12, 17, 23, 29
    assert select(grid) == Selection.whole(grid)
    assert select(grid, "::6", "-3:") == Selection((0, 1, 2), (6, 7, 8))  # ::6 is 0, 6, 12, 18, 24
    assert select(grid, "10-29", "0,4-5").rows == (2, 3, 4, 5)
    assert select(grid, "all", " ").columns == tuple(range(9))


def test_text_marks_whitespace_and_controls_like_the_page():
    assert shown(" a\n\tb\r") == "·a↵⇥b␍"
    assert shown("") == "∅"
    assert shown("\x00\x7f") == "\\x00\\x7f"
    assert shown("\ud800") == "\ufffd"
    assert [(p.text, p.mark) for p in pieces(" hi ")] == [("·", True), ("hi", False), ("·", True)]
    assert width("日本") == 4


# ---------- PNG ----------


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_png_decodes_with_the_svgs_size_times_the_scale(scale):
    grid = sample_grid()
    svg = grid_svg(grid)
    root = parse_svg(svg)
    image = Image.open(io.BytesIO(grid_png(grid, scale=scale)))
    assert image.format == "PNG"
    svg_width, svg_height = int(root.get("width")), int(root.get("height"))  # whole SVG units
    assert image.size == (math.floor(svg_width * scale + 0.5), math.floor(svg_height * scale + 0.5))
    assert image.size == png_size(svg, scale)


def test_png_text_is_drawn_with_the_shipped_fonts():
    """The caption line is text alone on white: its pixels must include dark ones (glyphs were drawn)."""
    assert [Path(f).name for f in font_files()] == [
        "DejaVuSans.ttf",
        "DejaVuSans-Bold.ttf",
        "DejaVuSansMono.ttf",
        "DejaVuSansMono-Bold.ttf",
    ]
    grid = sample_grid(hostile=False)
    png = grid_png(grid, scale=2)
    (ARTIFACTS / "export-grid.png").write_bytes(png)
    image = Image.open(io.BytesIO(png)).convert("L")
    caption = image.crop((20, 20, 400, 44))  # y 10..22 in SVG units, x from the margin
    assert min(caption.get_flattened_data()) < 120
    blank = image.crop((image.width - 60, 0, image.width, 18))
    assert min(blank.get_flattened_data()) > 250


def test_png_scale_and_size_are_bounded():
    grid = sample_grid()
    for scale in (0, -1, float("nan"), float("inf"), 9):
        with pytest.raises(PngSizeError):
            grid_png(grid, scale=scale)
    huge = '<svg xmlns="http://www.w3.org/2000/svg" width="20000" height="3000"></svg>'
    with pytest.raises(PngSizeError, match="million"):
        svg_png(huge, scale=1)


# ---------- CSV ----------


@pytest.mark.parametrize(
    "grid",
    [
        sample_grid(method="future"),
        sample_grid(method="logit", n_future=1, top_k=10, seed=1),
        sample_grid(method="fixed", seed=2),
        sample_grid(method="future", borrowed=False, hostile=False, seed=4),
    ],
    ids=["future-borrowed", "logit", "fixed", "future"],
)
def test_csv_round_trips_to_the_grid(grid):
    text = grid_csv(grid)
    assert grid_from_csv(text, csv_metadata(grid)) == grid
    document = grid.model_dump(mode="json", by_alias=True)
    carried = read_grid_csv(text)
    for key in ("method", "layers", "prompt_layers", "tokens", "next_tokens", "cells", "n_future", "top_k"):
        assert carried[key] == document[key], key


def test_csv_is_long_format_with_cell_statistics():
    grid = sample_grid()
    rows = list(csv.DictReader(io.StringIO(grid_csv(grid), newline="")))
    per_cell = grid.n_future + grid.top_k
    assert len(rows) == len(grid.layers) * len(grid.tokens) * per_cell
    first = rows[:per_cell]
    assert [(row["kind"], row["k"]) for row in first] == [("predicted", str(k)) for k in range(grid.n_future)] + [
        ("topk", str(k)) for k in range(grid.top_k)
    ]
    cell = grid.cells[0][0]
    assert {row["mean_prob"] for row in first} == {repr(cell.mean_prob)}
    assert first[0]["predicted_text"] == cell.tokens[0].text  # raw text, no marks
    for row in rows:
        r = grid.layers.index(int(row["layer"]))
        c = int(row["position"])
        expected = grid.cells[r][c].tokens[0].id == grid.next_tokens[c].id
        assert row["first_matches_next"] == str(expected).lower()
        assert row["method"] == "future" and row["model"] == "tiny-test"


def test_csv_of_a_range_keeps_positions_and_reads_back_in_any_row_order():
    grid = sample_grid(n_tokens=9)
    records = list(csv.reader(io.StringIO(grid_csv(grid, select(grid, "0,29", "3:6")), newline="")))
    shuffled = io.StringIO(newline="")
    csv.writer(shuffled).writerows([records[0], *reversed(records[1:])])
    carried = read_grid_csv(shuffled.getvalue())
    assert carried["layers"] == [0, 29] and carried["positions"] == [3, 4, 5]
    assert carried["cells"][1][0]["tokens"] == [t.model_dump() for t in grid.cells[-1][3].tokens]


def test_csv_of_a_grid1_document_has_no_piece_columns():
    document = sample_grid().model_dump(mode="json", by_alias=True)
    document["schema"] = "future-lens.grid/1"

    def drop_pieces(value: object) -> None:
        if isinstance(value, dict):
            value.pop("piece", None)
            for item in value.values():
                drop_pieces(item)
        elif isinstance(value, list):
            for item in value:
                drop_pieces(item)

    drop_pieces(document)
    grid = Grid.model_validate(document)
    text = grid_csv(grid)
    assert "piece" not in text.splitlines()[0]
    assert grid_from_csv(text, document) == grid


#: Token text a spreadsheet would run as a formula (OWASP's CSV injection list), and text that really starts with `'`.
FORMULA_TEXTS = ["=cmd|' /C calc'!A0", "+1", "-2", "@x", "'quoted", "\tx", "\rx", "''", "'", "=", " =ok", "a=b"]


def grid_with_texts(texts: list[str]) -> Grid:
    """`sample_grid`, every token's text and piece taken in turn from `texts`."""
    document = sample_grid(seed=5).model_dump(mode="json", by_alias=True)
    turn = iter(range(10**6))

    def retext(token: dict[str, object]) -> None:
        i = next(turn)
        token["text"] = texts[i % len(texts)]
        token["piece"] = texts[(i + 1) % len(texts)]

    for token in [*document["tokens"], *document["next_tokens"]]:
        retext(token)
    for row in document["cells"]:
        for cell in row:
            for token in [*cell["tokens"], *cell["topk"]]:
                retext(token)
    return Grid.model_validate(document)


def test_csv_neutralises_formulas_and_still_round_trips():
    grid = grid_with_texts(FORMULA_TEXTS)
    text = grid_csv(grid)
    fields = [field for record in csv.reader(io.StringIO(text, newline="")) for field in record]
    assert not [field for field in fields if field[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert "'=cmd|' /C calc'!A0" in fields and "''quoted" in fields and "'+1" in fields
    assert " =ok" in fields and "a=b" in fields  # only a leading character is a formula
    assert grid_from_csv(text, csv_metadata(grid)) == grid
    carried = read_grid_csv(text)
    document = grid.model_dump(mode="json", by_alias=True)
    for key in ("tokens", "next_tokens", "cells"):
        assert carried[key] == document[key], key


def test_grid_from_csv_takes_the_json_text_bytes_mapping_or_grid():
    grid = sample_grid(seed=6)
    text = grid_csv(grid)
    document_json = grid.model_dump_json(by_alias=True)
    for metadata in (document_json, document_json.encode(), json.loads(document_json), csv_metadata(grid), grid):
        assert grid_from_csv(text, metadata) == grid, type(metadata)


def test_the_readmes_csv_example_runs_as_written():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    snippet = next(block for block in blocks if "grid_from_csv(" in block)
    grid = grid_with_texts(FORMULA_TEXTS)
    namespace: dict[str, object] = {"csv_text": grid_csv(grid), "grid_json": grid.model_dump_json(by_alias=True)}
    exec(snippet, namespace)  # the README's own code, as a user runs it
    assert namespace["grid"] == grid


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", "no column"),
        (grid_csv(sample_grid()).split("\r\n")[0] + "\r\n", "no rows"),
        (grid_csv(sample_grid()).replace(",predicted,0,", ",predicted,zero,", 1), "line 2"),
        (grid_csv(sample_grid()).replace(",topk,1,", ",topk,7,", 1), "k values"),
        (grid_csv(sample_grid()).replace(",predicted,0,", ",guess,0,", 1), "kind"),
        (grid_csv(sample_grid()).split("\r\n")[0] + "\r\ntiny-test,future,0\r\n", "line 2"),
    ],
)
def test_csv_reader_refuses_what_is_not_a_grid(text, message):
    with pytest.raises(GridCsvError, match=message):
        read_grid_csv(text)


# ---------- offline HTML ----------


def test_html_is_self_contained_and_locked_down():
    grid = sample_grid(n_layers=8, n_tokens=10, seed=3)
    page = grid_html(grid, grid_id="abcdefghijkl")
    assert not re.search(r"\s(src|href|action|srcset|poster)\s*=", page, flags=re.IGNORECASE)
    assert "url(" not in page and "@import" not in page
    assert "<script>alert(1)" not in page and "<svg onload" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", page, flags=re.DOTALL)
    assert scripts == [script()] and styles == [css()]

    def digest(text: str) -> str:
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    policy = content_security_policy()
    assert f"'sha256-{digest(script())}'" in policy and f"'sha256-{digest(css())}'" in policy
    assert policy.startswith("default-src 'none';") and "unsafe-inline" not in policy
    assert 'http-equiv="Content-Security-Policy"' in page
    for bucket, colour in enumerate(palette.SHADES):
        assert f".p{bucket} {{ background: {colour};" in page


def test_html_data_island_is_the_selected_cells():
    grid = sample_grid(n_tokens=9)
    page = grid_html(grid, select(grid, "12-29", "4:7"))
    island = re.search(r'<template id="grid-data">(.*?)</template>', page, flags=re.DOTALL).group(1)
    data = json.loads(island)
    assert data["layers"] == [12, 17, 23, 29] and data["positions"] == [4, 5, 6]
    assert data["cells"][0][0]["t"][0][0] == grid.cells[2][4].tokens[0].text
    assert page.count('role="gridcell"') == 12


@pytest.fixture(scope="module")
def chromium(browser):  # noqa: F811 (tests/test_browser.py's fixture)
    return browser


@pytest.mark.browser
def test_offline_html_opens_without_network_and_its_popover_works(chromium, tmp_path):
    grid = sample_grid(n_layers=6, n_tokens=8, seed=3)
    path = tmp_path / "grid.html"
    path.write_text(grid_html(grid, grid_id="abcdefghijkl"), encoding="utf-8")
    context = chromium.new_context(viewport={"width": 1100, "height": 700})
    context.set_offline(True)
    requested, problems = [], []

    def route(route_) -> None:
        requested.append(route_.request.url)
        if route_.request.url == path.as_uri():
            route_.continue_()
        else:
            route_.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("dialog", lambda dialog: (problems.append(f"dialog {dialog.message}"), dialog.dismiss()))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}"))
    try:
        page.goto(path.as_uri())
        assert page.locator("td.cell").count() == 6 * 8
        popover = page.locator("#popover")
        assert popover.is_hidden()

        page.hover('td.cell[data-r="1"][data-c="2"]')
        popover.wait_for(state="visible", timeout=5000)
        cell = grid.cells[1][2]
        assert popover.locator("h3").inner_text().startswith(f"Layer {grid.layers[1]} · after token 2")
        rows = popover.locator("table").first.locator("td.tk").all_inner_texts()
        assert rows == [shown(token.text) for token in cell.tokens]
        assert f"Uses the prompt trained for layer {grid.prompt_layers[1]}." in popover.inner_text()
        page.screenshot(path=str(ARTIFACTS / "export-offline-html.png"))

        page.mouse.move(5, 5)
        popover.wait_for(state="hidden", timeout=5000)
        page.click('td.cell[data-r="0"][data-c="0"]')  # pinned: stays while the mouse goes elsewhere
        page.mouse.move(5, 5)
        assert popover.is_visible() and "pinned" in popover.get_attribute("class")
        page.keyboard.press("ArrowRight")  # focus moves, the popover follows
        assert "after token 1" in popover.locator("h3").inner_text()
        page.keyboard.press("Escape")
        popover.wait_for(state="hidden", timeout=5000)
        injected = page.evaluate("document.querySelectorAll('script').length")
        assert injected == 1  # the file's own script; no token text became an element
    finally:
        context.close()
    assert requested == [path.as_uri()]
    assert problems == []


# ---------- the web API and the page ----------


@pytest.fixture(scope="module")
def client(tiny_gptj, tmp_path_factory) -> TestClient:
    app = create_app(Settings(db_path=tmp_path_factory.mktemp("db") / "grids.sqlite3"), service=LensService(tiny_gptj))
    return TestClient(app)


@pytest.fixture(scope="module")
def stored(client) -> dict:
    response = client.post("/lens", json={"text": words(6), "method": "logit", "top_k": 3})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("fmt", "media_type", "disposition"),
    [
        ("svg", "image/svg+xml", "inline"),
        ("png", "image/png", "inline"),
        ("csv", "text/csv", "attachment"),
        ("html", "text/html", "attachment"),
    ],
)
def test_api_serves_each_export_of_a_stored_grid(client, stored, fmt, media_type, disposition):
    response = client.get(f"/g/{stored['id']}.{fmt}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(media_type)
    assert response.headers["content-disposition"] == f'{disposition}; filename="future-lens-{stored["id"]}.{fmt}"'
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert response.headers["x-content-type-options"] == "nosniff"
    grid = Grid.model_validate(stored)
    assert response.content == export(grid, fmt, grid_id=stored["id"]).content


def test_api_csv_round_trips_to_the_stored_json(client, stored):
    csv_text = client.get(f"/g/{stored['id']}.csv").text
    document = client.get(f"/g/{stored['id']}.json").json()
    assert grid_from_csv(csv_text, document) == Grid.model_validate(document)


def test_api_exports_the_stored_document_never_a_recomputation(client):
    """A hostile document put straight into the store is what comes out (escaped), whatever the model is."""
    grid = sample_grid(n_layers=4, n_tokens=6, seed=3)
    grid_id = "exportstored"
    document = {**grid.model_dump(mode="json", by_alias=True), "id": grid_id, "permalink": f"/g/{grid_id}"}
    client.app.state.store.put(new_stored_grid(grid_id, "tiny-test", {"text": "x"}, json.dumps(document)))
    svg = client.get(f"/g/{grid_id}.svg", params={"layers": "0-12", "tokens": "1:4", "chars": 9})
    assert svg.status_code == 200
    assert svg.text == grid_svg(grid, select(grid, "0-12", "1:4"), max_chars=9)
    png = client.get(f"/g/{grid_id}.png", params={"scale": 1.5})
    assert Image.open(io.BytesIO(png.content)).size == png_size(grid_svg(grid), 1.5)
    html = client.get(f"/g/{grid_id}.html").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert grid_from_csv(client.get(f"/g/{grid_id}.csv").text, document) == grid


@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        ("/g/aaaaaaaaaaaa.svg", {}, 404, "id"),
        ("/g/not-an-id.png", {}, 404, "id"),
        ("/g/{id}.svg", {"layers": "7"}, 422, "layers"),
        ("/g/{id}.csv", {"tokens": "0-99"}, 422, "tokens"),
        ("/g/{id}.html", {"layers": "x"}, 422, "layers"),
        ("/g/{id}.png", {"scale": "0"}, 422, "scale"),
        ("/g/{id}.png", {"scale": "nan"}, 422, "scale"),
        ("/g/{id}.png", {"scale": "big"}, 422, "scale"),
        ("/g/{id}.svg", {"chars": "3"}, 422, "chars"),
        ("/g/{id}.png", {"chars": "81"}, 422, "chars"),
    ],
)
def test_api_export_errors_name_the_field(client, stored, path, params, status, field):
    response = client.get(path.replace("{id}", stored["id"]), params=params)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field


def test_the_result_links_every_export(client, stored):
    response = client.post(
        "/grid",
        data={"text": words(6), "method": "logit", "stride": "1", "n_future": "1"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200, response.text
    grid_id = re.search(r'data-grid-id="([a-z0-9]+)"', response.text).group(1)
    for fmt in ("svg", "png", "csv", "html"):
        assert f'href="/g/{grid_id}.{fmt}" download="future-lens-{grid_id}.{fmt}"' in response.text
    assert f'href="/g/{grid_id}.json"' in response.text


# ---------- the CLI ----------

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_gptj, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-gptj")
    tiny_gptj.hf.save_pretrained(folder)
    tiny_gptj.tokenizer.save_pretrained(folder)
    return folder


def run_grid(model_dir: Path, *args: str):
    return runner.invoke(cli, ["grid", words(5), "--method", "logit", "--model", str(model_dir), *args])


@pytest.mark.parametrize("fmt", ["svg", "png", "csv", "html", "json"])
def test_cli_writes_each_format_to_a_file(tiny_model_dir, tmp_path, fmt):
    out = tmp_path / f"grid.{fmt}"
    result = run_grid(tiny_model_dir, "--format", fmt, "-o", str(out), "--scale", "1")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {out}"
    data = out.read_bytes()
    if fmt == "svg":
        assert parse_svg(data.decode()).tag == f"{SVG}svg"
    elif fmt == "png":
        assert Image.open(io.BytesIO(data)).format == "PNG"
    elif fmt == "csv":
        assert read_grid_csv(data.decode())["method"] == "logit"
    elif fmt == "html":
        assert data.decode().startswith("<!DOCTYPE html>")
    else:
        Grid.model_validate_json(data)


def test_cli_csv_to_stdout_with_a_token_range_round_trips(tiny_model_dir):
    grid = Grid.model_validate_json(run_grid(tiny_model_dir, "--json").output)
    result = run_grid(tiny_model_dir, "--format", "csv", "--tokens", "1:3")
    assert result.exit_code == 0, result.output
    carried = read_grid_csv(result.output)
    assert carried["positions"] == [1, 2]
    assert carried["cells"][0][0]["tokens"] == [t.model_dump() for t in grid.cells[0][1].tokens]


def test_cli_table_is_still_the_default(tiny_model_dir):
    result = run_grid(tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split()[0] == "layer"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "pdf"], "format"),
        (["--json", "--format", "svg"], "two formats"),
        (["--tokens", "1:2"], "--tokens"),
        (["--format", "png", "--scale", "0"], "scale"),
        (["--format", "svg", "--chars", "2"], "characters per cell"),
    ],
)
def test_cli_bad_export_options_exit_2_before_loading_a_model(args, message):
    result = runner.invoke(cli, ["grid", "hello", "--model", "no-such-model", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "unknown model" not in result.output


def test_cli_bad_token_range_exits_2(tiny_model_dir):
    result = run_grid(tiny_model_dir, "--format", "svg", "--tokens", "40")
    assert result.exit_code == 2
    assert "tokens" in result.output
