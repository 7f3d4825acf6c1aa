"""Prediction depth (tuned-lens issue #72): the pure definition against hand computations, and the same depth in the
grid's JSON (library, `POST /lens`, the stream), the CSV export, the page (server-rendered, streamed too), the
offline HTML file and the notebook client's `Grid`."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from future_lens.client import Grid as ClientGrid
from future_lens.client.grid import CHROME_PX, ROW_PX
from future_lens.export import grid_html, select
from future_lens.export.csv import grid_csv, grid_from_csv, read_grid_csv
from future_lens.lens.depth import prediction_depth, prediction_depths
from future_lens.lens.display import visible_whitespace
from future_lens.lens.grid import Grid, grid_prediction_depths
from future_lens.lens.lenses import FixedPromptLens, IdentityPatchscope, LogitLens
from future_lens.lens.registry import lens_specs
from future_lens.server.config import Settings
from future_lens.server.store import new_stored_grid
from future_lens.server.web.app import create_app
from future_lens.server.web.render import grid_view
from future_lens.service import LensService
from tests.conftest import words
from tests.export_helpers import sample_grid
from tests.test_streaming import sse_events

TEXT = words(10, seed=11)

# ---------- the definition, by hand ----------


@pytest.mark.parametrize(
    ("top1", "layers", "model_top1", "expected"),
    [
        ([5, 7, 7, 7], [0, 1, 2, 3], 7, 1),  # settles at a middle layer and stays
        ([5, 5, 5, 7], [0, 1, 2, 3], 7, 3),  # only the last layer
        ([7, 7, 7], [0, 1, 2], 7, 0),  # right from the first layer
        ([7, 5, 7, 5, 7, 7], [0, 1, 2, 3, 4, 5], 7, 4),  # flips back and forth: the last flip counts
        ([7, 7, 7, 5], [0, 1, 2, 3], 7, None),  # the last layer reads another token: undefined
        ([5, 7, 5], [0, 1, 2], 7, None),
        ([3, 7, 7], [0, 10, 20], 7, 10),  # a subset of layers: the depth is one of the listed layers
        ([7, 5, 7, 7], [0, 3, 6, 9], 7, 6),  # every third layer: 6, though layers 7 and 8 are not checked
        ([7, 7], [4, 8], 7, 4),
        ([None, 7], [0, 1], 7, 1),  # a cell without a token never matches
        ([7, None], [0, 1], 7, None),
        ([], [], 7, None),  # no layers: nothing settles
    ],
)
def test_prediction_depth_by_hand(top1, layers, model_top1, expected) -> None:
    assert prediction_depth(top1, layers, model_top1) == expected


def test_prediction_depth_refuses_mismatched_or_unordered_layers() -> None:
    with pytest.raises(ValueError, match="3 top-1 tokens for 2 layers"):
        prediction_depth([1, 2, 3], [0, 1], 1)
    with pytest.raises(ValueError, match="increase strictly"):
        prediction_depth([1, 1], [3, 3], 1)
    with pytest.raises(ValueError, match="increase strictly"):
        prediction_depth([1, 1, 1], [0, 5, 2], 1)


def test_prediction_depths_of_every_column_by_hand() -> None:
    # rows are layers 0, 4, 8; columns are three tokens whose model next tokens are 1, 2, 3
    top1 = [
        [1, 9, 3],
        [9, 2, 3],
        [1, 2, 9],
    ]
    assert prediction_depths(top1, [0, 4, 8], [1, 2, 3]) == [8, 4, None]
    with pytest.raises(ValueError, match="columns"):
        prediction_depths([[1, 2]], [0], [1, 2, 3])


# ---------- the grid's JSON ----------


def hand_depths(document: dict) -> list[int | None]:
    """An independent reading of the definition from a grid document: walk each column down from the last row."""
    depths = []
    for column, actual in enumerate(document["next_tokens"]):
        depth = None
        for row in reversed(range(len(document["layers"]))):
            if document["cells"][row][column]["tokens"][0]["id"] != actual["id"]:
                break
            depth = document["layers"][row]
        depths.append(depth)
    return depths


@pytest.mark.parametrize("make_lens", [LogitLens, lambda m: FixedPromptLens(m, "w5 w6"), IdentityPatchscope])
def test_a_grid_json_depth_is_the_hand_computation_from_its_cells(tiny_gpt2, make_lens) -> None:
    lens = make_lens(tiny_gpt2)
    grid = lens.grid(TEXT, n_future=2, top_k=3)
    document = json.loads(grid.model_dump_json(by_alias=True))
    assert document["prediction_depth"] == hand_depths(document) == grid.prediction_depth
    assert len(document["prediction_depth"]) == len(document["tokens"])
    # the last block reads the model's own output, so a grid down to it always settles
    assert None not in document["prediction_depth"]
    assert Grid.model_validate(document) == grid


def test_depths_of_the_tiny_model_are_not_all_alike(tiny_gpt2) -> None:
    """The e2e checks above would pass vacuously if every column settled at the same layer."""
    assert len(set(LogitLens(tiny_gpt2).grid(TEXT).prediction_depth)) > 1


def test_a_grid_of_some_layers_is_measured_over_those_layers(tiny_gpt2) -> None:
    lens = LogitLens(tiny_gpt2)
    upper = lens.grid(TEXT, layers=[0, 1])  # stops before the last block: some columns never settle
    document = upper.model_dump(mode="json", by_alias=True)
    assert upper.prediction_depth == hand_depths(document)
    assert None in upper.prediction_depth and set(upper.prediction_depth) - {None} <= {0, 1}
    strided = lens.grid(TEXT, layers=[0, 2])
    assert strided.prediction_depth == hand_depths(strided.model_dump(mode="json", by_alias=True))
    assert set(strided.prediction_depth) <= {0, 2}


def test_a_streamed_grid_has_its_depth_once_every_row_is_computed(tiny_gptj) -> None:
    lens = FixedPromptLens(tiny_gptj, "w7 w8 w9")
    stream = lens.stream(TEXT, n_future=2, top_k=3)
    assert stream.head().prediction_depth is None  # the frame: no row yet
    rows = list(stream.rows())
    assert len(rows) == len(stream.layers)
    streamed = stream.grid()
    assert streamed.prediction_depth == hand_depths(streamed.model_dump(mode="json", by_alias=True))
    assert grid_prediction_depths([[], []], [0, 1], [1]) is None


def test_only_lenses_that_read_the_next_token_first_get_a_depth(tiny_gpt2) -> None:
    class CurrentTokenLens(LogitLens):  # a lens whose first token is not the next-token reading
        method = "toy-current-token"
        reads_next_token = False

    assert CurrentTokenLens(tiny_gpt2).grid(TEXT).prediction_depth is None
    # every registered lens reads N = 0 first (future_lens/lens/lenses.py: Lens.reads_next_token)
    assert {spec.name: spec.reads_next_token for spec in lens_specs()} == dict.fromkeys(
        ["future", "logit", "fixed", "identity", "tuned", "jacobian"], True
    )


# ---------- the CSV ----------


def test_the_csv_has_the_depth_of_each_row_s_column(tiny_gpt2) -> None:
    grid = LogitLens(tiny_gpt2).grid(TEXT, layers=[0, 1], top_k=2)
    text = grid_csv(grid)
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert "prediction_depth" in rows[0]
    for row in rows:
        depth = grid.prediction_depth[int(row["position"])]
        assert row["prediction_depth"] == ("" if depth is None else str(depth))
    assert read_grid_csv(text)["prediction_depth"] == grid.prediction_depth
    assert grid_from_csv(text, grid) == grid


def test_a_csv_without_depth_has_no_column_and_still_round_trips() -> None:
    grid = sample_grid(seed=5)
    assert grid.prediction_depth is None
    text = grid_csv(grid)
    assert "prediction_depth" not in text.splitlines()[0]
    assert read_grid_csv(text)["prediction_depth"] is None
    assert grid_from_csv(text, grid) == grid


# ---------- the web: POST /lens, the CSV download, the page ----------


@pytest.fixture(scope="module")
def client(tiny_gptj, tmp_path_factory) -> TestClient:
    app = create_app(Settings(db_path=tmp_path_factory.mktemp("db") / "grids.sqlite3"), service=LensService(tiny_gptj))
    return TestClient(app)


@pytest.fixture(scope="module")
def posted(client) -> dict:
    response = client.post("/lens", json={"text": TEXT, "method": "logit", "top_k": 3})
    assert response.status_code == 200, response.text
    return response.json()


def test_post_lens_answers_the_depth_of_its_cells(client, posted) -> None:
    assert posted["prediction_depth"] == hand_depths(posted)
    assert client.get(f"/g/{posted['id']}.json").json()["prediction_depth"] == posted["prediction_depth"]
    lines = client.post(
        "/lens", json={"text": words(5, seed=12), "method": "logit"}, headers={"Accept": "application/x-ndjson"}
    ).text.splitlines()
    head, final = json.loads(lines[0]), json.loads(lines[-1])
    assert head["kind"] == "head" and head["grid"]["prediction_depth"] is None
    assert final["prediction_depth"] == hand_depths(final)


def test_the_csv_download_carries_the_depth(client, posted) -> None:
    rows = list(csv.DictReader(io.StringIO(client.get(f"/g/{posted['id']}.csv").text, newline="")))
    by_position = {int(row["position"]): row["prediction_depth"] for row in rows}
    assert by_position == {t: ("" if d is None else str(d)) for t, d in enumerate(posted["prediction_depth"])}


def depth_row(html: str) -> str:
    start = html.index('<tr class="depth-row">')
    return html[start : html.index("</tr>", start)]


def test_the_page_shows_a_depth_row_under_the_grid(client, posted) -> None:
    html = client.get(f"/g/{posted['id']}").text
    row = depth_row(html)
    assert "prediction depth: the first layer from which" in row  # the row head's tooltip
    assert f"computed over all {len(posted['layers'])} layers" in row
    shown = [
        cell.split('<span aria-hidden="true">', 1)[1].split("</span>", 1)[0]
        for cell in row.split('<td class="depth')[1:]
    ]
    assert shown == ["–" if d is None else str(d) for d in posted["prediction_depth"]]
    assert row.count("<td ") == len(posted["tokens"])
    assert 'aria-rowcount="' + str(len(posted["layers"]) + 3) + '"' in html
    assert "depth-sample" in html  # the legend explains it


def test_a_page_of_some_layers_says_so_and_marks_undefined_depths(client) -> None:
    form = {"text": TEXT, "method": "logit", "n_future": "1", "stride": "2"}  # layers 0 and 2 of 3
    html = client.post("/grid", data=form, headers={"HX-Request": "true"}).text
    row = depth_row(html)
    assert "computed over the 2 of 3 layers this grid has (0, 2)" in row


def test_the_depth_row_escapes_token_text(client) -> None:
    grid = sample_grid(n_layers=4, n_tokens=7, seed=3)  # hostile token texts
    depths = grid_prediction_depths(grid.cells, grid.layers, [token.id for token in grid.next_tokens])
    grid = grid.model_copy(update={"prediction_depth": depths})
    grid_id = "depthhostile"
    document = {**grid.model_dump(mode="json", by_alias=True), "id": grid_id, "permalink": f"/g/{grid_id}"}
    client.app.state.store.put(new_stored_grid(grid_id, "tiny-test", {"text": "x"}, json.dumps(document)))
    row = depth_row(client.get(f"/g/{grid_id}").text)
    assert "<script>" not in row and "<svg" not in row
    hostile = [token.text for token in grid.tokens if "<" in token.text]
    assert hostile and all(str(escape(text)) in row for text in hostile)
    assert row.count("<td ") == len(grid.tokens)


def test_a_grid_without_depth_has_no_depth_row(client) -> None:
    grid = sample_grid(seed=4)  # a stored grid from before the field: prediction_depth null
    view = grid_view(grid, "x", "/g/x", True)
    assert view.depth is None
    grid_id = "depthnone"
    document = {**grid.model_dump(mode="json", by_alias=True), "id": grid_id, "permalink": f"/g/{grid_id}"}
    client.app.state.store.put(new_stored_grid(grid_id, "tiny-test", {"text": "x"}, json.dumps(document)))
    assert 'class="depth-row"' not in client.get(f"/g/{grid_id}").text


def test_the_streamed_page_shows_the_depth_row_pending_then_filled(client) -> None:
    text = words(6, seed=13)
    response = client.get("/grid/stream", params={"text": text, "method": "logit", "n_future": "1", "stride": "1"})
    events = sse_events(response.text)
    assert events[0][0] == "head" and events[-1][0] == "done"
    pending = depth_row(events[0][1]["html"])
    assert pending.count('class="depth pending"') == len(words(6, seed=13).split())
    assert 'aria-busy="true"' in pending
    stored = client.get(events[-1][1]["permalink"].split("?")[0] + ".json").json()
    done = depth_row(events[-1][1]["html"])
    assert "pending" not in done
    for depth in stored["prediction_depth"]:
        assert ("layer " + str(depth) if depth is not None else "none") in done


# ---------- the offline HTML file ----------


def shown_depths(row: str) -> list[str]:
    """The depth row's visible texts, cell by cell."""
    return [
        cell.split('<span aria-hidden="true">', 1)[1].split("</span>", 1)[0]
        for cell in row.split('<td class="depth')[1:]
    ]


def marks(depths: list[int | None]) -> list[str]:
    return ["–" if depth is None else str(depth) for depth in depths]


@pytest.fixture(scope="module")
def tiny_grid(tiny_gpt2) -> Grid:
    return LogitLens(tiny_gpt2).grid(TEXT, n_future=2, top_k=3)


def test_the_offline_file_shows_the_depth_row_of_a_tiny_model_grid(tiny_grid) -> None:
    grid = tiny_grid
    expected = hand_depths(grid.model_dump(mode="json", by_alias=True))  # from the cells' first tokens, by hand
    assert len(set(expected)) > 1
    page = grid_html(grid)
    row = depth_row(page)
    assert shown_depths(row) == marks(expected)
    assert row.count("<td ") == len(grid.tokens)
    assert "prediction depth: the first layer from which" in row  # the row head's tooltip
    assert f"computed over all {len(grid.layers)} layers" in row and "this file shows" not in row
    for column, depth in enumerate(expected):
        assert (
            f"after token {column} {escape(visible_whitespace(grid.tokens[column].text))}: from layer {depth} on" in row
        )
    assert f'aria-rowcount="{len(grid.layers) + 3}"' in page
    assert 'class="grid has-depth"' in page and 'class="grid-scroll has-depth"' in page  # the page's sticky rows
    assert '<span class="depth-sample">depth</span> prediction depth: the first layer' in page  # the legend
    assert page.index('class="next-head"') < page.index('<tr class="depth-row">') < page.index("</tfoot>")


def test_the_offline_file_of_some_layers_says_so_and_marks_undefined_depths(tiny_gpt2) -> None:
    grid = LogitLens(tiny_gpt2).grid(TEXT, layers=[0, 1], n_future=1, top_k=2)  # stops before the last block
    expected = hand_depths(grid.model_dump(mode="json", by_alias=True))
    assert None in expected
    row = depth_row(grid_html(grid))
    assert shown_depths(row) == marks(expected)
    assert row.count('class="depth none"') == expected.count(None)
    assert f"computed over the 2 of {grid.model.n_layers} layers this grid has (0, 1)" in row
    column = expected.index(None)
    read = escape(visible_whitespace(grid.cells[-1][column].tokens[0].text))
    assert f"no depth, the grid&#39;s last layer (1) reads {read}" in row


def test_a_selection_shows_the_whole_grid_s_depth_of_its_columns(tiny_grid) -> None:
    grid = tiny_grid
    expected = hand_depths(grid.model_dump(mode="json", by_alias=True))
    selection = select(grid, layers="0", tokens="2:5")  # the first row only: its own reading would be 0 or none
    row = depth_row(grid_html(grid, selection))
    assert shown_depths(row) == marks(expected[2:5])
    assert f"this file shows 1 of its {len(grid.layers)} layers" in row


def test_the_offline_depth_row_escapes_token_text() -> None:
    grid = sample_grid(n_layers=4, n_tokens=9, seed=3)  # hostile token texts
    expected = hand_depths(grid.model_dump(mode="json", by_alias=True))
    grid = grid.model_copy(update={"prediction_depth": expected})
    assert set(expected) - {None} and None in expected  # both kinds of tooltip
    row = depth_row(grid_html(grid))
    assert "<script>" not in row and "<svg" not in row
    hostile = [token.text for token in grid.tokens if "<" in token.text]
    assert hostile and all(str(escape(visible_whitespace(text))) in row for text in hostile)
    assert shown_depths(row) == marks(expected)


def test_an_offline_file_of_a_grid_without_depth_has_no_depth_row() -> None:
    grid = sample_grid(seed=4)  # a stored grid from before the field: prediction_depth null
    page = grid_html(grid)
    markup = re.sub(r"<(style|script)>.*?</\1>", "", page, flags=re.DOTALL)  # the inlined page CSS names them
    assert 'class="depth-row"' not in markup and "has-depth" not in markup and "depth-sample" not in markup
    assert f'aria-rowcount="{len(grid.layers) + 2}"' in page


# ---------- the notebook client ----------


class NoBackend:
    def html(self, grid: ClientGrid) -> str:
        return "<p>grid</p>"


def test_the_client_grid_reads_the_depth_from_the_json(tiny_grid) -> None:
    payload = json.loads(tiny_grid.model_dump_json(by_alias=True))  # what POST /lens answers, less id
    grid = ClientGrid(payload, NoBackend())
    expected = hand_depths(payload)
    assert grid.prediction_depth == expected
    grid.prediction_depth.append(99)  # a copy: the document stays as it came
    assert payload["prediction_depth"] == expected
    rows = list(grid.rows())
    assert rows and all(row["prediction_depth"] == expected[row["position"]] for row in rows)
    frame = grid.to_pandas()
    assert "prediction_depth" in frame.columns


def test_the_client_grid_without_depth(tiny_grid) -> None:
    payload = json.loads(tiny_grid.model_dump_json(by_alias=True))
    undefined = {**payload, "prediction_depth": [None] * len(payload["tokens"])}
    assert ClientGrid(undefined, NoBackend()).prediction_depth == [None] * len(payload["tokens"])
    for document in (
        {**payload, "prediction_depth": None},
        {k: v for k, v in payload.items() if k != "prediction_depth"},
    ):
        grid = ClientGrid(document, NoBackend())
        assert grid.prediction_depth is None  # a lens without depth, or a document stored before the field
        assert all("prediction_depth" not in row for row in grid.rows())
    n_rows = len(payload["layers"])  # the notebook's frame makes room for the depth row
    with_depth = ClientGrid(payload, NoBackend())._repr_html_()
    assert f"height: {CHROME_PX + ROW_PX * (n_rows + 3)}px" in with_depth
    without = ClientGrid({**payload, "prediction_depth": None}, NoBackend())._repr_html_()
    assert f"height: {CHROME_PX + ROW_PX * (n_rows + 2)}px" in without
